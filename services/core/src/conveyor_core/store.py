"""The one owner of a job's life: every change of state is one Lua script here.

A job that waits for its first try is arq's alone: its job key (what to run:
function, payload, trace context) and its entry in the queue's sorted set,
exactly as arq's own `enqueue_job` writes them, so a bare arq client can
enqueue too. From its first claim on, a small hash records the rest of its
life (state, version, tries, times, progress, result or error), and each
state but waiting has an index per queue. Every script is built on one
transition (`lua/lib/transition.lua`): it moves the index entries, writes the
hash, does the arq key bookkeeping the new state implies (lock, retry count,
queue entry, expiry) and announces the change, so arq's own finishing steps
are left with nothing to do. See keys.py for the layout.
"""

import base64
import binascii
import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any, Protocol

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_job
from redis.asyncio.client import Pipeline
from redis.exceptions import OutOfMemoryError

from conveyor_core import keys
from conveyor_core.catalog import Catalog, JobType, load_catalog
from conveyor_core.flow import claim_limits, flow_entry
from conveyor_core.jobs import (
    DEFAULT_PRIORITY,
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    TERMINAL_STATES,
    HoldReason,
    JobPublic,
    JobState,
    now_ms,
)

# The reserved job kwarg: Conveyor's metadata (trace context, request id,
# idempotency key).
META_KWARG = "__conveyor__"
# arq drops a job nobody started within this long after it was due.
ARQ_EXPIRY_EXTRA_MS = 86_400_000
# arq's own expiry of its retry counter (worker.run_job).
ARQ_RETRY_TTL_S = 88_400
# Dead jobs stay readable (and requeueable) this long.
DEAD_RETENTION_S = 7 * 86_400
# A listing reads at most this many index entries per item asked for.
SCAN_BUDGET_PER_ITEM = 5
# Housekeeping removes at most this many expired entries per index and call.
TRIM_BATCH = 10_000
# Per-minute history (history.py) is kept this long.
HISTORY_TTL_S = 72 * 3600
# A bulk action's Lua call acts on at most this many jobs.
BULK_BATCH_MAX = 500
BULK_ACTIONS = ("cancel", "requeue", "delete")
# A priority is a band of scores in arq's queue: score = band * PRIORITY_BAND_MS
# + due ms, band = priority - DEFAULT_PRIORITY. A band is wider than any due
# time (10^13 ms is the year 2286), so bands never overlap; every score stays
# an exact integer in a double. A bare arq client's score is the due time, band
# 0: its jobs get DEFAULT_PRIORITY.
PRIORITY_BAND_MS = 10**13
PRIORITIES = range(HIGHEST_PRIORITY, LOWEST_PRIORITY + 1)


def queue_score(priority: int, due_ms: int) -> int:
    """A job's score in arq's queue: its priority's band, then its due time."""
    return (priority - DEFAULT_PRIORITY) * PRIORITY_BAND_MS + due_ms


def split_score(score: float) -> tuple[int, int]:
    """(priority, due ms) of a score in arq's queue."""
    band = math.floor(score / PRIORITY_BAND_MS)
    due_ms = int(score) - band * PRIORITY_BAND_MS
    return min(max(band + DEFAULT_PRIORITY, HIGHEST_PRIORITY), LOWEST_PRIORITY), due_ms


def band_range(priority: int) -> tuple[int, int]:
    """The scores of one priority: [lowest, highest) ."""
    lo = queue_score(priority, 0)
    return lo, lo + PRIORITY_BAND_MS


def _lua_constants() -> str:
    """keys.py's names for the scripts, so both sides build keys one way."""
    constants = {
        "prefix": keys.PREFIX,
        "job": keys.JOB_PREFIX,
        "events": keys.EVENTS_PREFIX,
        "wake": keys.WAKE_PREFIX,
        "arq_job": job_key_prefix,
        "arq_lock": in_progress_key_prefix,
        "arq_retry": retry_key_prefix,
        "arq_result": result_key_prefix,
        "arq_retry_ttl_s": ARQ_RETRY_TTL_S,
        "arq_expiry_extra_ms": ARQ_EXPIRY_EXTRA_MS,
        "history_ttl_s": HISTORY_TTL_S,
        "band_ms": PRIORITY_BAND_MS,
        "default_priority": DEFAULT_PRIORITY,
        "highest_priority": HIGHEST_PRIORITY,
        "lowest_priority": LOWEST_PRIORITY,
    }
    fields = ", ".join(f"{name} = {json.dumps(value)}" for name, value in constants.items())
    return f"local K = {{{fields}}}"


# The shared functions of `lua/lib/`, in the order each needs the ones before.
LUA_LIB = ("keys", "transition", "gcra", "claim")
# What a lib file declares at its top level: its functions and tables.
LUA_DECLARED = re.compile(r"^local (?:function )?(\w+)", re.MULTILINE)
LUA_COMMENT = re.compile(r"--[^\n]*")


@cache
def lua_script(name: str, shebang: str | None = None) -> str:
    """A script from `lua/`, after the key names and the shared functions of
    `lua/lib/` it uses (directly or through another lib's): Redis runs a
    script's whole text on every call, and the rest cost a rate-limit check
    more than its own work.

    A script's first line may declare its flags (`#!lua flags=...`, Redis 7):
    one that adds data has none, so a Redis at maxmemory refuses it before it
    runs, never halfway; one that ends jobs (and so frees memory) is
    `allow-oom`; a read is `no-writes`. `shebang` replaces that line.
    """
    lua = files("conveyor_core").joinpath("lua")
    own = lua.joinpath(f"{name}.lua").read_text()
    first, _, rest = own.partition("\n") if own.startswith("#!") else ("", "", own)
    shebang = first if shebang is None else shebang
    used: list[str] = []
    uses = LUA_COMMENT.sub("", rest)
    for lib_name in reversed(LUA_LIB):  # a lib needs only the ones before it
        lib = lua.joinpath("lib", f"{lib_name}.lua").read_text()
        if any(re.search(rf"\b{n}\b", uses) for n in LUA_DECLARED.findall(lib)):
            used.insert(0, lib)
            uses += LUA_COMMENT.sub("", lib)
    return "\n".join(filter(None, [shebang, _lua_constants(), *used, rest]))


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _flatten(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [name, "" if value is None else str(value)]
    return out


class InvalidCursorError(ValueError):
    pass


def encode_cursor(segment: int, score: str, job_id: str) -> str:
    raw = json.dumps([segment, score, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        segment, score, job_id = json.loads(base64.urlsafe_b64decode(padded))
        float(score)
        if not isinstance(segment, int) or segment < 0:
            raise ValueError(segment)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidCursorError(cursor) from None
    return segment, str(score), str(job_id)


@dataclass(frozen=True, slots=True)
class ArqJob:
    """arq's job key, decoded: what the job is."""

    function: str
    payload: dict[str, Any]
    meta: dict[str, str]
    enqueued_at_ms: int

    @classmethod
    def decode(cls, raw: bytes) -> "ArqJob | None":
        try:
            function, _, kwargs, _, enqueued_at_ms = deserialize_job_raw(raw)
        except SerializationError:
            return None
        payload = dict(kwargs)
        meta = payload.pop(META_KWARG, None)
        return cls(function, payload, meta if isinstance(meta, dict) else {}, enqueued_at_ms)

    def encode(self) -> bytes:
        kwargs = {**self.payload, META_KWARG: self.meta}
        return serialize_job(self.function, (), kwargs, None, self.enqueued_at_ms)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What submit did: created the job, or found one under the same idempotency key."""

    job_id: str
    created: bool
    # For an existing job: did its payload fingerprint match this request's?
    same_payload: bool = True
    # The record as created; None when an existing job was found.
    job: JobPublic | None = None
    # Refused by the caller's rate limit: when to try again; nothing was written.
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """What a rate-limited read found (see `JobStore.read`)."""

    # The job and its arq job (None when arq's key is gone); None when there is none.
    found: tuple[ArqJob | None, JobPublic] | None = None
    # Refused by the caller's rate limit: when to try again; nothing was read.
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A caller's request rate, spent by the submit and read scripts themselves
    (see lib/gcra.lua)."""

    key: str
    interval_us: int
    burst: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker's claim started: its score in the queue and its try number."""

    job_id: str
    score_ms: int
    job_try: int


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim did: the jobs it started, when the next deferred one falls
    due, and when the queue was paused (None while it runs)."""

    jobs: list[Claimed]
    next_due_ms: float | None
    paused_at_ms: int | None = None
    # Due jobs this claim passed over, by why: a running limit, a rate.
    held: dict[HoldReason, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fetch:
    """What a worker's slot asks of the end of a try (finish and fetch): claim
    up to `wanted` jobs in the same call, as `JobStore.claim` would."""

    wanted: int
    lock_ttl_ms: int
    cancelled_retention_ms: int
    scan_limit: int


class NextJobs(Protocol):
    """A worker's side of finish and fetch: what to claim with the end of a try
    (None: nothing, e.g. while it stops), and the jobs that claim started."""

    def fetch(self) -> Fetch | None: ...

    def take(self, claim: Claim) -> None: ...


@dataclass(frozen=True, slots=True)
class Ended:
    """What the end of a try did: moved the job (true) or found it moved by
    someone else, and what the claim in the same call started, if one was asked."""

    moved: bool
    claim: Claim | None = None

    def __bool__(self) -> bool:
        return self.moved


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What an operator looks for: every field given must match (None: any).

    `state`, `queue` and `job_type` choose the indexes to read; the rest is
    checked on each job read: `error_type` (the last error's type, exact),
    `text` (a case-insensitive part of the job id or the last error's
    message) and a time range (`since_ms` <= the job's time < `until_ms`,
    where its time is when it finished, else started, else was enqueued).
    """

    state: JobState | None = None
    queue: str | None = None
    job_type: str | None = None
    error_type: str | None = None
    text: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, job: JobPublic) -> bool:
        if self.job_type is not None and job.job_type != self.job_type:
            return False
        if self.error_type is not None and (job.error is None or job.error.type != self.error_type):
            return False
        if self.text:
            needle = self.text.lower()
            message = job.error.message.lower() if job.error else ""
            if needle not in job.id.lower() and needle not in message:
                return False
        if self.since_ms is not None or self.until_ms is not None:
            at = job.finished_at or job.started_at or job.enqueued_at
            at_ms = int(at.timestamp() * 1000)
            if self.since_ms is not None and at_ms < self.since_ms:
                return False
            if self.until_ms is not None and at_ms >= self.until_ms:
                return False
        return True

    def as_dict(self) -> dict[str, Any]:
        """The fields given, as JSON-ready values (for bulk records and the audit log)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value if isinstance(value, JobState) else value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JobFilter":
        state = raw.get("state")
        return cls(**{**raw, "state": JobState(state) if state else None})


@dataclass(frozen=True, slots=True)
class BulkBatch:
    """What one batch of a bulk action did."""

    done: int
    skipped: int


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
    retrying: int
    dead: int
    oldest_ready_age_s: float
    # When the queue was paused; None while it runs.
    paused_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class _Segment:
    """One part of a listing: the same sorted set in each queue, read in one order."""

    queues: list[str]
    key: Callable[[str], str]
    descending: bool
    lo: str = "-inf"
    hi: str = "+inf"
    accepts: Callable[[JobPublic], bool] = lambda job: True


def _waiting(job: JobPublic) -> bool:
    return job.state in (JobState.QUEUED, JobState.DEFERRED)


def _parse_claim(reply: list[Any]) -> Claim:
    """A claim's reply (claim.lua, or finish.lua's after the end of a try)."""
    claimed, next_due, paused_at, (held_limit, held_rate) = reply
    rows = iter(claimed)
    jobs = [
        Claimed(job_id.decode(), int(float(score)), int(job_try))
        for job_id, score, job_try in zip(rows, rows, rows, strict=True)
    ]
    return Claim(
        jobs,
        float(next_due) if next_due else None,
        int(paused_at) if paused_at else None,
        {HoldReason.LIMIT: held_limit, HoldReason.RATE: held_rate},
    )


class JobStore:
    """Submit, claim, finish, cancel, requeue and read jobs; nothing else writes them."""

    def __init__(self, redis: ArqRedis, catalog: Catalog | None = None) -> None:
        self.redis = redis
        self.catalog = catalog or load_catalog()
        script = redis.register_script
        self._submit = script(lua_script("submit"))
        self._claim = script(lua_script("claim"))
        self._finish = script(lua_script("finish"))
        # The same end of a try that also claims (finish and fetch) adds data:
        # without allow-oom, so a full Redis refuses it whole (then the try ends
        # with no claim, as a full Redis refuses claims).
        self._finish_and_fetch = script(lua_script("finish", shebang="#!lua"))
        self._settle = script(lua_script("settle"))
        self._progress = script(lua_script("progress"))
        self._cancel = script(lua_script("cancel"))
        self._requeue = script(lua_script("requeue"))
        self._trim = script(lua_script("trim"))
        self._page = script(lua_script("page"))
        self._read_one = script(lua_script("read"))
        self._queue_stats = script(lua_script("queue_stats"))
        self._pause = script(lua_script("pause"))
        self._bulk = script(lua_script("bulk"))
        # Per queue: its limited job types as the claim reads them ('' for none).
        self._claim_limits = {
            queue: claim_limits(
                (t.name, t.limits) for t in self.catalog.for_queue(queue) if t.limits
            )
            for queue in self.catalog.queues()
        }

    # -- the lifecycle ------------------------------------------------------

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
        rate_limit: RateLimit | None = None,
        priority: int | None = None,
    ) -> Submitted:
        """Enqueue the job as arq would, unless its Idempotency-Key names one
        already, or the caller's `rate_limit` refuses it (in the same step).

        Its score is its due time in its priority's band (the job type's
        priority unless `priority` is given)."""
        at_ms = now_ms()
        priority = job_type.priority if priority is None else priority
        if priority not in PRIORITIES:
            raise ValueError(
                f"priority must be {HIGHEST_PRIORITY} (highest) to {LOWEST_PRIORITY} (lowest), "
                f"not {priority!r}"
            )
        if idempotency_key:
            meta = {**meta, "idempotency_key": idempotency_key}
        job = ArqJob(job_type.name, payload, meta, at_ms)
        idem_key = keys.idempotency_key(job_type.name, idempotency_key) if idempotency_key else ""
        status, *existing = await self._submit(
            keys=[
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                job_type.queue,
                idem_key,
                keys.queue_key(job_type.queue, keys.FLOW_SUFFIX),
                rate_limit.key if rate_limit else "",
                keys.job_key(meta["parent_id"]) if meta.get("parent_id") else "",
            ],
            args=[
                job_id,
                job.encode(),
                queue_score(priority, ready_at_ms),
                max(ready_at_ms - at_ms, 0) + ARQ_EXPIRY_EXTRA_MS,  # a past run_at: due now
                f"{job_id} {fingerprint}",
                math.ceil(job_type.keep_result_s),
                keys.wake_channel(job_type.queue),
                flow_entry(job_type.name, job_type.limits, payload),
                rate_limit.interval_us if rate_limit else 0,
                rate_limit.burst if rate_limit else 0,
                job_type.name,
                at_ms,
            ],
        )
        if status == b"limited":
            return Submitted(job_id, False, retry_after_s=int(existing[0]) / 1_000_000)
        if status == b"exists":
            existing_id, _, existing_fingerprint = existing[0].decode().partition(" ")
            return Submitted(existing_id, False, existing_fingerprint == fingerprint)
        if status == b"duplicate":
            return Submitted(job_id, False)
        record = JobPublic.from_parts(
            job_id,
            job,
            {},
            score_ms=ready_at_ms,
            queue=job_type.queue,
            max_tries=job_type.retry.max_tries,
            at_ms=at_ms,
            priority=priority,
        )
        return Submitted(job_id, True, job=record)

    async def claim(
        self,
        queue: str,
        wanted: int,
        *,
        lock_ttl_ms: int,
        cancelled_retention_ms: int,
        scan_limit: int,
    ) -> Claim:
        """Lock and start up to `wanted` due jobs; also say when the next one falls due."""
        reply = await self._claim(
            keys=[
                queue,
                keys.paused_key(queue),
                keys.queue_key(queue, keys.FLOW_SUFFIX),
                keys.queue_key(queue, keys.HELD_SUFFIX),
            ],
            args=[
                now_ms(),
                lock_ttl_ms,
                wanted,
                scan_limit,
                cancelled_retention_ms,
                self._claim_limits.get(queue, ""),
            ],
        )
        return _parse_claim(reply)

    async def _end_try(
        self,
        job_type: JobType,
        job_id: str,
        state: JobState,
        score: float,
        next_jobs: NextJobs | None = None,
        **fields: Any,
    ) -> Ended:
        fetch = next_jobs.fetch() if next_jobs is not None else None
        args: list[Any] = [job_id, state.value, now_ms(), math.ceil(score), job_type.name]
        fields_ = _flatten(fields)
        reply: list[Any] | None = None
        if fetch is not None:
            limits = self._claim_limits.get(job_type.queue, "")
            fetch_args: list[Any] = [fetch.wanted, fetch.lock_ttl_ms, fetch.scan_limit]
            fetch_args += [fetch.cancelled_retention_ms, limits]
            with contextlib.suppress(OutOfMemoryError):
                reply = await self._finish_and_fetch(
                    keys=[job_type.queue], args=[*args, *fetch_args, *fields_]
                )
        if reply is None:
            reply = await self._finish(
                keys=[job_type.queue], args=[*args, 0, 0, 0, 0, "", *fields_]
            )
        moved, _, *claim = reply
        ended = Ended(bool(moved), _parse_claim(claim) if claim else None)
        if next_jobs is not None and ended.claim is not None:
            next_jobs.take(ended.claim)
        return ended

    async def complete(
        self,
        job_type: JobType,
        job_id: str,
        result_json: str,
        next_jobs: NextJobs | None = None,
    ) -> Ended:
        at_ms = now_ms()
        retention_ms = job_type.keep_result_s * 1000
        return await self._end_try(
            job_type,
            job_id,
            JobState.COMPLETE,
            retention_ms,
            next_jobs,
            finished_at_ms=at_ms,
            result=result_json,
            error="",
            progress=100,
        )

    async def retry_later(
        self,
        job_type: JobType,
        job_id: str,
        due_ms: int,
        error_json: str,
        next_jobs: NextJobs | None = None,
    ) -> Ended:
        return await self._end_try(
            job_type,
            job_id,
            JobState.RETRYING,
            due_ms,
            next_jobs,
            next_try_at_ms=due_ms,
            error=error_json,
        )

    async def dead(
        self,
        job_type: JobType,
        job_id: str,
        error_json: str,
        next_jobs: NextJobs | None = None,
    ) -> Ended:
        return await self._end_try(
            job_type,
            job_id,
            JobState.DEAD,
            DEAD_RETENTION_S * 1000,
            next_jobs,
            finished_at_ms=now_ms(),
            next_try_at_ms="",
            error=error_json,
        )

    async def cancelled(self, job_type: JobType, job_id: str) -> Ended:
        """A running job's cancel took effect."""
        return await self._end_try(
            job_type,
            job_id,
            JobState.CANCELLED,
            job_type.keep_result_s * 1000,
            finished_at_ms=now_ms(),
        )

    async def put_back(self, job_type: JobType, job_id: str) -> Ended:
        """A shutdown cut the try short: due again now, and the try does not count."""
        at_ms = now_ms()
        return await self._end_try(job_type, job_id, JobState.QUEUED, at_ms, ready_at_ms=at_ms)

    async def settle_unstarted(
        self, queue: str, job_id: str, error_json: str, cancelled_retention_ms: int
    ) -> str:
        """A claimed job arq ended without running it: cancelled or dead; '' if not in progress."""
        state = await self._settle(
            keys=[queue],
            args=[job_id, now_ms(), DEAD_RETENTION_S * 1000, cancelled_retention_ms, error_json],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def pause(self, queue: str) -> int:
        """Stop workers starting jobs from `queue`; returns when it was paused (ms)."""
        paused_at = await self._pause(
            keys=[keys.paused_key(queue)], args=["pause", now_ms(), keys.wake_channel(queue)]
        )
        return int(paused_at)

    async def resume(self, queue: str) -> None:
        """Let workers start jobs from `queue` again, at once."""
        await self._pause(
            keys=[keys.paused_key(queue)], args=["resume", now_ms(), keys.wake_channel(queue)]
        )

    async def report_progress(self, job_id: str, percent: int, message: str) -> bool:
        done = await self._progress(
            keys=[keys.job_key(job_id)], args=[percent, message, keys.events_channel(job_id)]
        )
        return bool(done)

    async def cancel(self, job_id: str) -> tuple[str, JobPublic | None]:
        """'missing', the final state it was in, 'cancelling' or 'cancelled_now', and the record."""
        found = await self._read(job_id)
        if found is None:
            return "missing", None
        arq_job, job = found
        job_type = self.catalog.get(job.job_type)
        retention_s = job_type.keep_result_s if job_type else DEAD_RETENTION_S
        outcome, flat = await self._cancel(
            keys=[job.queue], args=[job_id, now_ms(), math.ceil(retention_s * 1000)]
        )
        if not flat:
            return "missing", None
        return outcome.decode(), self._public(job_id, arq_job, _pairs(flat), job.queue, None)

    async def requeue(self, job_id: str, meta: dict[str, str]) -> tuple[str, JobPublic | None]:
        """'requeued' and the record as requeued, or 'missing' or the state it was in."""
        found = await self._read(job_id)
        if found is None:
            return "missing", None
        arq_job, job = found
        if job.state is not JobState.DEAD:
            return job.state.value, job
        if arq_job is None or arq_job.function not in self.catalog:
            return "unknown_type", job
        at_ms = now_ms()
        again = ArqJob(arq_job.function, arq_job.payload, meta, at_ms)
        outcome, flat = await self._requeue(
            keys=[job.queue, job_key_prefix + job_id, result_key_prefix + job_id],
            args=[job_id, at_ms, again.encode()],
        )
        if not flat:
            return "missing", None
        return outcome.decode(), self._public(job_id, again, _pairs(flat), job.queue, None)

    # -- reads --------------------------------------------------------------

    async def get(self, job_id: str) -> JobPublic | None:
        found = await self._read(job_id)
        return found[1] if found else None

    async def get_many(self, job_ids: list[str]) -> list[JobPublic | None]:
        """Several jobs in one round trip (a pipeline, not a transaction), in order."""
        found = await self._read_many([(job_id, None) for job_id in job_ids])
        return [f[1] if f else None for f in found]

    async def read(self, job_id: str, rate_limit: RateLimit | None = None) -> Read:
        """One job, after spending one request of the caller's `rate_limit` (when
        given) in the same script: one round trip (a second only for a due job
        of a limited type, see `held_reasons`)."""
        reply = await self._read_one(
            keys=[
                rate_limit.key if rate_limit else "",
                keys.job_key(job_id),
                job_key_prefix + job_id,
            ],
            args=[
                rate_limit.interval_us if rate_limit else 0,
                rate_limit.burst if rate_limit else 0,
                job_id,
                *self.catalog.queues(),
            ],
        )
        if not reply[0]:
            return Read(retry_after_s=int(reply[1]) / 1_000_000)
        _, flat, job_bytes, where, score, paused = reply
        scores = {where.decode(): score} if score is not None else {}
        found = self._found(job_id, _pairs(flat), job_bytes, scores, paused == 1, now_ms())
        (found,) = await self.held_reasons([found])
        return Read(found=found)

    async def _read(self, job_id: str) -> tuple[ArqJob | None, JobPublic] | None:
        return (await self.read(job_id)).found

    async def _read_many(
        self, rows: Iterable[tuple[str, str | None]], at_ms: int | None = None
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Jobs by (id, queue) in one round trip (see `_add_reads`), and a second
        only for due jobs of limited types (see `held_reasons`)."""
        rows = list(rows)
        async with self.redis.pipeline(transaction=False) as pipe:
            self._add_reads(pipe, rows)
            replies = iter(await pipe.execute())
        return await self.held_reasons(self._parse_reads(rows, replies, at_ms))

    def _add_reads(self, pipe: Pipeline, rows: list[tuple[str, str | None]]) -> None:
        """Queue on `pipe` what reading jobs by (id, queue) takes: whether each
        queue is paused, and per job its hash, arq's job key and its score in its
        queue (in every queue of the catalog when not known). `_parse_reads` makes
        the jobs of the replies."""
        queues = self.catalog.queues()
        for name in queues:
            pipe.exists(keys.paused_key(name))
        for job_id, queue in rows:
            pipe.hgetall(keys.job_key(job_id))
            pipe.get(job_key_prefix + job_id)
            for q in [queue] if queue else queues:
                pipe.zscore(q, job_id)

    def _parse_reads(
        self,
        rows: list[tuple[str, str | None]],
        replies: Iterator[Any],
        at_ms: int | None = None,
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Take the jobs' replies (as `_add_reads` queued them) from `replies`."""
        queues = self.catalog.queues()
        paused = {name for name in queues if next(replies)}
        at_ms = at_ms or now_ms()
        out: list[tuple[ArqJob | None, JobPublic] | None] = []
        for job_id, queue in rows:
            raw, job_bytes = next(replies), next(replies)
            candidates = [queue] if queue else queues
            scores = {q: s for q in candidates if (s := next(replies)) is not None}
            record = _decode(raw)
            where = record.get("queue") or next(iter(scores), "")
            out.append(self._found(job_id, record, job_bytes, scores, where in paused, at_ms))
        return out

    def _found(
        self,
        job_id: str,
        record: dict[str, str],
        job_bytes: bytes | None,
        scores: dict[str, Any],
        paused: bool,
        at_ms: int,
    ) -> tuple[ArqJob | None, JobPublic] | None:
        """A job from its record, arq's job key and (waiting, with no record yet)
        its score in the queue it waits in; None when there is neither."""
        if not record and not scores:
            # Never ours (a bare arq worker finished it), or gone.
            return None
        arq_job = ArqJob.decode(job_bytes) if job_bytes else None
        where = record.get("queue") or next(iter(scores), "")
        priority, score_ms = (
            (DEFAULT_PRIORITY, None) if record else split_score(float(scores[where]))
        )
        reason = HoldReason.PAUSED if paused else None
        job = self._public(job_id, arq_job, record, where, score_ms, at_ms, reason, priority)
        return arq_job, job

    async def held_reasons(
        self, found: list[tuple[ArqJob | None, JobPublic] | None]
    ) -> list[tuple[ArqJob | None, JobPublic] | None]:
        """Due jobs of limited types (queued, or retrying and due): why the claim
        last passed over their type or key (limit, rate), from the queue's
        waiting hash; one round trip."""
        asked = []
        for i, item in enumerate(found):
            if item is None:
                continue
            arq_job, job = item
            due = job.state is JobState.QUEUED or (
                job.state is JobState.RETRYING
                and job.next_try_at is not None
                and job.next_try_at.timestamp() * 1000 <= now_ms()
            )
            if arq_job is None or not due:
                continue
            job_type = self.catalog.get(job.job_type)
            if job_type and job_type.limits and job.waiting_reason is None:
                _, _, key = flow_entry(job_type.name, job_type.limits, arq_job.payload).partition(
                    "\n"
                )
                fields = [job_type.name, *([f"{job_type.name}\n{key}"] if key else [])]
                asked.append((i, keys.queue_key(job.queue, keys.HELD_SUFFIX), fields))
        if not asked:
            return found
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, waiting, fields in asked:
                pipe.hmget(waiting, fields)
            replies = await pipe.execute()
        out = list(found)
        for (i, _, _), reasons in zip(asked, replies, strict=True):
            reason = next((r.decode() for r in reasons if r), None)
            item = out[i]
            if reason and item is not None:
                update = {"waiting_reason": HoldReason(reason)}
                out[i] = (item[0], item[1].model_copy(update=update))
        return out

    def _public(
        self,
        job_id: str,
        arq_job: ArqJob | None,
        record: dict[str, str],
        queue: str,
        score_ms: int | None,
        at_ms: int | None = None,
        waiting_reason: HoldReason | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> JobPublic:
        job_type = self.catalog.get(arq_job.function) if arq_job else None
        return JobPublic.from_parts(
            job_id,
            arq_job,
            record,
            score_ms=score_ms,
            queue=queue,
            max_tries=job_type.retry.max_tries if job_type else 1,
            at_ms=at_ms,
            waiting_reason=waiting_reason,
            priority=priority,
        )

    async def cancel_requested(self, job_id: str) -> bool:
        flag = await self.redis.hget(keys.job_key(job_id), "cancel_requested")  # type: ignore[misc]
        return bool(flag == b"1")

    def _segments(self, state: JobState | None, queues: list[str], at_ms: int) -> list[_Segment]:
        def index(name: str) -> Callable[[str], str]:
            return lambda queue: keys.index_key(queue, name)

        def arq_queue(queue: str) -> str:
            return queue

        final = [_Segment(queues, index(s.value), descending=True) for s in TERMINAL_STATES]
        bands = [band_range(p) for p in PRIORITIES]
        match state:
            case JobState.QUEUED:  # what is due, by priority, each in due order
                return [
                    _Segment(queues, arq_queue, False, str(lo), str(lo + at_ms), _waiting)
                    for lo, _ in bands
                ]
            case JobState.DEFERRED:
                return [
                    _Segment(queues, arq_queue, False, f"({lo + at_ms}", f"({hi}", _waiting)
                    for lo, hi in bands
                ]
            case JobState.IN_PROGRESS | JobState.RETRYING:
                return [_Segment(queues, index(state.value), descending=False)]
            case JobState.COMPLETE | JobState.DEAD | JobState.CANCELLED:
                return [_Segment(queues, index(state.value), descending=True)]
            case None:
                # What runs, then what waits (next due first), then what finished
                # (latest to expire first).
                return [
                    _Segment(queues, index(JobState.IN_PROGRESS.value), descending=False),
                    _Segment(
                        queues,
                        arq_queue,
                        False,
                        accepts=lambda j: j.state is not JobState.IN_PROGRESS,
                    ),
                    *final,
                ]

    async def _rows(
        self, segment: _Segment, after: tuple[str, str], count: int
    ) -> list[tuple[str, str, str]]:
        """Up to `count` (id, score, queue) of a segment strictly after `after`, merged."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in segment.queues:
                await self._page(
                    keys=[segment.key(queue)],
                    args=[
                        "desc" if segment.descending else "asc",
                        segment.lo,
                        segment.hi,
                        *after,
                        count,
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        rows = [
            (reply[i].decode(), reply[i + 1].decode(), queue)
            for queue, reply in zip(segment.queues, replies, strict=True)
            for i in range(0, len(reply), 2)
        ]
        rows.sort(key=lambda r: (float(r[1]), r[0]), reverse=segment.descending)
        return rows[:count]

    async def list(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        where: JobFilter | None = None,
    ) -> Page:
        """Jobs in `state` (or all: running, then waiting, then finished).

        Waiting, running and retrying jobs come next-to-run first; finished ones
        latest first (by when their record expires: for one retention, the
        order they finished in). Reads at most `limit * SCAN_BUDGET_PER_ITEM`
        entries, so a rare `job_type` can give a short page; `next_cursor`
        then goes on from there. `where` filters further (its state, queue and
        type stand in for the arguments), with the same bound.
        """
        if where is not None:
            state, queue, job_type = where.state, where.queue, where.job_type
        at_ms = now_ms()
        queues = [queue] if queue else self.catalog.queues()
        segments = self._segments(state, queues, at_ms)
        segment_no, score, after_id = decode_cursor(cursor) if cursor else (0, "", "")
        items: list[JobPublic] = []
        budget = limit * SCAN_BUDGET_PER_ITEM
        while segment_no < len(segments) and budget > 0:
            segment = segments[segment_no]
            batch = min(budget, max(limit - len(items), 10))
            rows = await self._rows(segment, (score, after_id), batch)
            found = await self._read_many(((r[0], r[2]) for r in rows), at_ms)
            jobs = [f[1] if f else None for f in found]
            for (row_id, row_score, _), job in zip(rows, jobs, strict=True):
                budget -= 1
                score, after_id = row_score, row_id
                wanted = job is not None and (
                    where.matches(job) if where else job_type in (None, job.job_type)
                )
                if job is not None and wanted and segment.accepts(job):
                    items.append(job)
                if len(items) == limit:
                    return Page(items, encode_cursor(segment_no, score, after_id))
            if len(rows) < batch:  # this segment is exhausted: on to the next
                segment_no, score, after_id = segment_no + 1, "", ""
        if segment_no >= len(segments):
            return Page(items, None)
        return Page(items, encode_cursor(segment_no, score, after_id))

    async def bulk_batch(
        self,
        action: str,
        queue: str,
        job_ids: Sequence[str],
        cancelled_retention_ms: int,
        idempotency_keys: Sequence[str] = (),
    ) -> BulkBatch:
        """Cancel, requeue or delete up to BULK_BATCH_MAX jobs of `queue` in one
        Lua call (lua/bulk.lua); jobs the action does not apply to are skipped.
        A delete also drops the given Idempotency-Keys (`keys.idempotency_key`)
        of the deleted jobs, so a resubmission makes a new job."""
        if action not in BULK_ACTIONS:
            raise ValueError(f"bulk action must be one of {BULK_ACTIONS}, not {action!r}")
        if len(job_ids) > BULK_BATCH_MAX:
            raise ValueError(
                f"a bulk batch takes at most {BULK_BATCH_MAX} jobs, not {len(job_ids)}"
            )
        if not job_ids:
            return BulkBatch(0, 0)
        done, skipped = await self._bulk(
            keys=[queue], args=[action, now_ms(), cancelled_retention_ms, *job_ids]
        )
        if action == "delete" and idempotency_keys:
            await self.redis.delete(*idempotency_keys)
        return BulkBatch(int(done), int(skipped))

    # -- housekeeping and statistics ---------------------------------------

    async def trim_expired(self, queue: str, batch: int = TRIM_BATCH) -> int:
        """Drop the entries of expired records from the queue's final-state indexes.

        Those indexes are scored by expiry time, so the expired entries are the
        front of each: removing them costs the same whatever else the index
        holds. At most `batch` per index and call.
        """
        at_ms = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for state in TERMINAL_STATES:
                await self._trim(
                    keys=[keys.index_key(queue, state.value)], args=[at_ms, batch], client=pipe
                )
            removed: list[int] = await pipe.execute()
        return sum(removed)

    async def queue_stats(self, queue: str) -> QueueStats:
        at_ms = now_ms()
        ready, deferred, running, retrying, dead, oldest, paused_at = await self._queue_stats(
            keys=[
                queue,
                keys.index_key(queue, JobState.IN_PROGRESS.value),
                keys.index_key(queue, JobState.RETRYING.value),
                keys.index_key(queue, JobState.DEAD.value),
                keys.paused_key(queue),
            ],
            args=[at_ms],
        )
        oldest_age_s = (at_ms - int(float(oldest))) / 1000 if oldest else 0.0
        return QueueStats(
            queue,
            ready,
            deferred,
            running,
            retrying,
            dead,
            max(oldest_age_s, 0.0),
            int(paused_at) if paused_at else None,
        )
