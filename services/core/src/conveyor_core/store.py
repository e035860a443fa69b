"""Conveyor's job records in Redis, beside arq's own keys (see keys.py).

Every change is one Lua script, so a job's hash, its index entries, arq's
queue and the change event move together or not at all.
"""

import base64
import binascii
import json
import math
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job

from conveyor_core import keys
from conveyor_core.catalog import JobType
from conveyor_core.jobs import (
    TERMINAL_STATES,
    WAITING,
    JobPublic,
    JobState,
    now_ms,
    stored_state,
)

# The reserved job kwarg: Conveyor's metadata (trace context, request id).
META_KWARG = "__conveyor__"
# arq drops a job nobody started within this long after it was due.
ARQ_EXPIRY_EXTRA_MS = 86_400_000
# Dead jobs stay readable (and requeueable) this long.
DEAD_RETENTION_S = 7 * 86_400
# A listing reads at most this many index entries per item asked for.
SCAN_BUDGET_PER_ITEM = 5


def lua_script(name: str) -> str:
    """A script from `lua/`, with the shared functions of `lua/lib/` before it."""
    lua = files("conveyor_core").joinpath("lua")
    lib = lua.joinpath("lib")
    shared = [lib.joinpath(f).read_text() for f in sorted(p.name for p in lib.iterdir())]
    return "\n".join([*shared, lua.joinpath(f"{name}.lua").read_text()])


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _flatten(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [name, "" if value is None else str(value)]
    return out


class InvalidCursorError(ValueError):
    pass


def encode_cursor(score: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, job_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        score, job_id = json.loads(base64.urlsafe_b64decode(padded))
        float(score)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidCursorError(cursor) from None
    return str(score), str(job_id)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What submit did: created the job, or found one under the same idempotency key."""

    job_id: str
    created: bool
    # For an existing job: did its payload fingerprint match this request's?
    same_payload: bool = True
    # The record as created, so no caller reads it back; None when no job was
    # created (one was found under the idempotency key, or the id was taken).
    job: JobPublic | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[JobPublic]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    ready: int
    deferred: int
    in_progress: int
    dead: int
    oldest_ready_age_s: float


class JobStore:
    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self._submit = redis.register_script(lua_script("submit"))
        self._transition = redis.register_script(lua_script("transition"))
        self._progress = redis.register_script(lua_script("progress"))
        self._cancel = redis.register_script(lua_script("cancel"))
        self._requeue = redis.register_script(lua_script("requeue"))
        self._page = redis.register_script(lua_script("page"))
        self._queue_stats = redis.register_script(lua_script("queue_stats"))

    # -- writes -------------------------------------------------------------

    async def submit(
        self,
        job_type: JobType,
        job_id: str,
        payload: dict[str, Any],
        *,
        ready_at_ms: int,
        meta: dict[str, str],
        idempotency_key: str | None = None,
        fingerprint: str = "",
        adopt: bool = False,
        enqueued_at_ms: int | None = None,
    ) -> Submitted:
        """Create the job (and, unless adopting one arq holds, enqueue it in arq)."""
        at_ms = now_ms()
        enqueued_at_ms = enqueued_at_ms or at_ms
        job_bytes = b"" if adopt else self._arq_job(job_type, payload, meta, enqueued_at_ms)
        idem_key = keys.idempotency_key(job_type.name, idempotency_key) if idempotency_key else ""
        fields = {
            "id": job_id,
            "job_type": job_type.name,
            "queue": job_type.queue,
            "state": WAITING,
            "version": 1,
            "payload": json.dumps(payload, separators=(",", ":")),
            "tries": 0,
            "max_tries": job_type.retry.max_tries,
            "enqueued_at_ms": enqueued_at_ms,
            "ready_at_ms": ready_at_ms,
            "trace_id": meta.get("trace_id"),
            "request_id": meta.get("request_id"),
            "idempotency_key": idempotency_key,
        }
        status, existing = await self._submit(
            keys=[
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                job_type.queue,
                keys.job_key(job_id),
                idem_key,
            ],
            args=[
                job_id,
                job_bytes,
                ready_at_ms,
                max(ready_at_ms - at_ms, 0) + ARQ_EXPIRY_EXTRA_MS,  # a past run_at: due now
                f"{job_id} {fingerprint}",
                math.ceil(job_type.keep_result_s),
                keys.INDEX_PREFIX,
                job_type.queue,
                at_ms,
                keys.EVENTS_CHANNEL,
                keys.wake_channel(job_type.queue),
                *_flatten(fields),
            ],
        )
        if status == b"exists":
            existing_id, _, existing_fingerprint = existing.decode().partition(" ")
            return Submitted(existing_id, False, existing_fingerprint == fingerprint)
        if status == b"duplicate":
            return Submitted(job_id, False)
        record = {name: "" if value is None else str(value) for name, value in fields.items()}
        return Submitted(job_id, True, job=JobPublic.from_hash(record, at_ms))

    def _arq_job(
        self, job_type: JobType, payload: dict[str, Any], meta: dict[str, str], at_ms: int
    ) -> bytes:
        kwargs = {**payload, META_KWARG: meta}
        return serialize_job(job_type.name, (), kwargs, None, at_ms)

    async def transition(
        self,
        job_id: str,
        state: str,
        *,
        score_ms: int,
        ttl_s: float = 0,
        allowed: tuple[str, ...] = (),
        **fields: Any,
    ) -> tuple[bool, str]:
        """Move a job to `state` if it is in one of `allowed` (any when empty)."""
        moved, old = await self._transition(
            keys=[keys.job_key(job_id), keys.STATS_PENDING],
            args=[
                state,
                score_ms,
                math.ceil(ttl_s),
                f",{','.join(allowed)}," if allowed else "",
                keys.INDEX_PREFIX,
                keys.EVENTS_CHANNEL,
                *_flatten(fields),
            ],
        )
        return bool(moved), old.decode() if isinstance(old, bytes) else str(old)

    async def report_progress(self, job_id: str, percent: int, message: str) -> bool:
        done = await self._progress(
            keys=[keys.job_key(job_id)], args=[percent, message, keys.EVENTS_CHANNEL]
        )
        return bool(done)

    async def cancel(self, job_id: str, queue: str, ttl_s: float) -> str:
        result = await self._cancel(
            keys=[
                keys.job_key(job_id),
                job_key_prefix + job_id,
                in_progress_key_prefix + job_id,
                abort_jobs_ss,
                retry_key_prefix + job_id,
                queue,
            ],
            args=[
                now_ms(),
                keys.INDEX_PREFIX,
                keys.EVENTS_CHANNEL,
                keys.wake_channel(queue),
                math.ceil(ttl_s),
            ],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def requeue(
        self, job: JobPublic, job_type: JobType, meta: dict[str, str]
    ) -> tuple[str, JobPublic | None]:
        """'requeued' and the record as requeued, or 'missing' or the state it was in."""
        at_ms = now_ms()
        outcome, *record = await self._requeue(
            keys=[
                keys.job_key(job.id),
                job_key_prefix + job.id,
                result_key_prefix + job.id,
                retry_key_prefix + job.id,
                job_type.queue,
            ],
            args=[
                at_ms,
                self._arq_job(job_type, job.payload, meta, at_ms),
                ARQ_EXPIRY_EXTRA_MS,
                keys.INDEX_PREFIX,
                keys.EVENTS_CHANNEL,
                keys.wake_channel(job_type.queue),
            ],
        )
        if not record:
            return outcome.decode(), None
        flat = record[0]
        fields = _decode(dict(zip(flat[::2], flat[1::2], strict=True)))
        return outcome.decode(), JobPublic.from_hash(fields)

    # -- reads --------------------------------------------------------------

    async def get(self, job_id: str) -> JobPublic | None:
        raw = await self.redis.hgetall(keys.job_key(job_id))  # type: ignore[misc]
        return JobPublic.from_hash(_decode(raw)) if raw else None

    async def get_many(self, job_ids: list[str]) -> list[JobPublic | None]:
        """Several jobs in one round trip (a pipeline, not a transaction), in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job_key(job_id))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
        at_ms = now_ms()
        return [JobPublic.from_hash(_decode(raw), at_ms) if raw else None for raw in raws]

    async def cancel_requested(self, job_id: str) -> bool:
        flag = await self.redis.hget(keys.job_key(job_id), "cancel_requested")  # type: ignore[misc]
        return bool(flag == b"1")

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first (oldest first for queued, deferred and in-progress jobs).

        Reads at most `limit * SCAN_BUDGET_PER_ITEM` index entries, so a rare
        `job_type` can give a short page; `next_cursor` then goes on from there.
        """
        at_ms = now_ms()
        index = keys.index_key(queue or keys.ALL, stored_state(state) if state else keys.ALL)
        lo, hi = "-inf", "+inf"
        if state is JobState.QUEUED:
            hi = str(at_ms)
        elif state is JobState.DEFERRED:
            lo = f"({at_ms}"
        ascending = state in (JobState.QUEUED, JobState.DEFERRED, JobState.IN_PROGRESS)
        after_score, after_id = decode_cursor(cursor) if cursor else ("", "")

        items: list[JobPublic] = []
        budget = limit * SCAN_BUDGET_PER_ITEM
        while len(items) < limit and budget > 0:
            batch = min(budget, max(limit - len(items), 10))
            rows = await self._page(
                keys=[index],
                args=["asc" if ascending else "desc", lo, hi, after_score, after_id, batch],
            )
            ids = [rows[i].decode() for i in range(0, len(rows), 2)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(keys.job_key(job_id))
                hashes = await pipe.execute()
            read = 0
            for job_id, score, raw in zip(ids, rows[1::2], hashes, strict=True):
                read += 1
                after_id, after_score = job_id, score.decode()
                if raw:  # else expired: housekeeping trims the index
                    job = JobPublic.from_hash(_decode(raw), at_ms)
                    if job_type is None or job.job_type == job_type:
                        items.append(job)
                if len(items) == limit:
                    break
            budget -= read
            if len(ids) < batch and read == len(ids):
                return Page(items, None)  # the index is exhausted
        return Page(items, encode_cursor(after_score, after_id))

    async def trim_expired(self, queue: str, batch: int = 500) -> int:
        """Drop index entries whose job record has expired, oldest first.

        Checks at most `batch` entries per index, so each run's cost is bounded.
        """
        removed = 0
        for q in (queue, keys.ALL):
            for index in (keys.ALL, *(s.value for s in TERMINAL_STATES)):
                index_key = keys.index_key(q, index)
                ids = await self.redis.zrange(index_key, 0, batch - 1)
                if not ids:
                    continue
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.exists(keys.job_key(job_id.decode()))
                    exists = await pipe.execute()
                gone = [job_id for job_id, alive in zip(ids, exists, strict=True) if not alive]
                if gone:
                    removed += await self.redis.zrem(index_key, *gone)
        return removed

    async def queue_stats(self, queue: str) -> QueueStats:
        at_ms = now_ms()
        ready, deferred, running, dead, oldest = await self._queue_stats(
            keys=[
                queue,
                keys.index_key(queue, JobState.IN_PROGRESS.value),
                keys.index_key(queue, JobState.DEAD.value),
            ],
            args=[at_ms],
        )
        oldest_age_s = (at_ms - int(float(oldest))) / 1000 if oldest else 0.0
        return QueueStats(queue, ready, deferred, running, dead, max(oldest_age_s, 0.0))
