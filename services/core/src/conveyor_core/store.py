"""The one owner of a job's life: every change of state is one Lua script here.

A job that waits for its first try is arq's alone: its job key (what to run:
function, payload, trace context) and its entry in the queue's sorted set,
exactly as arq's own `enqueue_job` writes them, so a bare arq client can
enqueue too. From its first claim on, a small hash records the rest of its
life (state, version, tries, times, progress, the last error), and each
state but waiting has an index per queue. A finished job's job key becomes
arq's result key (`lua/lib/arq_result.lua`), which then holds its payload and
its result (or a dead job's error), so arq's client reads it as its own.
Every script is built on one transition (`lua/lib/transition.lua`): it moves
the index entries, writes the hash, does the arq key bookkeeping the new
state implies (lock, retry count, queue entry, result key, expiry) and
announces the change, so arq's own finishing steps are left with nothing to
do. See keys.py for the layout.
"""

import base64
import binascii
import contextlib
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import SerializationError, serialize_job
from redis.asyncio.client import Pipeline
from redis.exceptions import OutOfMemoryError

from conveyor_core import keys, serializer
from conveyor_core.blobs import BlobStore
from conveyor_core.catalog import Catalog, JobType, load_catalog
from conveyor_core.flow import claim_limits, flow_entry
from conveyor_core.jobs import (
    DEAD_RETENTION_S,
    DEFAULT_PRIORITY,
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    TERMINAL_STATES,
    JobError,
    JobPublic,
    JobState,
    WaitingReason,
    now_ms,
)
from conveyor_core.keys import ARQ_EXPIRY_EXTRA_MS
from conveyor_core.lua import lua_script
from conveyor_core.ratelimit import RateLimit
from conveyor_core.scores import PRIORITIES, band_range, queue_score, split_score

# The reserved job kwarg: Conveyor's metadata (trace context, request id,
# idempotency key).
META_KWARG = "__conveyor__"
# A listing reads at most this many index entries per item asked for.
SCAN_BUDGET_PER_ITEM = 5
# Housekeeping removes at most this many expired entries per index and call.
TRIM_BATCH = 10_000
# A submit over its key's quota checks at most this many of the key's
# outstanding jobs for ones that ended (lua/submit.lua).
QUOTA_PRUNE_PER_CALL = 16
# The job's metadata field that names the api key that submitted it.
SUBMITTED_BY = "submitted_by"
# A bulk action's Lua call acts on at most this many jobs.
BULK_BATCH_MAX = 500
BULK_ACTIONS = ("cancel", "requeue", "delete")


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
    """arq's job key decoded: what the job is. From arq's result key (a
    finished job, see lua/lib/arq_result.lua) also how it ended."""

    function: str
    payload: dict[str, Any]
    meta: dict[str, str]
    enqueued_at_ms: int
    # From a result key: whether the job succeeded, and its result or its
    # error object (`serializer.error_object`) as stored; None from a job key.
    success: bool | None = None
    result: Any = None

    @classmethod
    def decode(cls, raw: bytes) -> "ArqJob | None":
        """None when `raw` is not JSON job data (a pickle, for one): such a
        job is never run."""
        try:
            data = serializer.loads(raw)
        except SerializationError:
            return None
        if not isinstance(data, dict):
            return None
        function, kwargs, enqueued_at_ms = data.get("f"), data.get("k"), data.get("et")
        if (
            not isinstance(function, str)
            or not isinstance(kwargs, dict)
            or not isinstance(enqueued_at_ms, int | float)
            or isinstance(enqueued_at_ms, bool)
        ):
            return None
        payload = dict(kwargs)
        meta = payload.pop(META_KWARG, None)
        success = data.get("s")
        return cls(
            function,
            payload,
            meta if isinstance(meta, dict) else {},
            int(enqueued_at_ms),
            success if isinstance(success, bool) else None,
            data.get("r"),
        )

    def encode(self) -> bytes:
        kwargs = {**self.payload, META_KWARG: self.meta}
        return serialize_job(
            self.function,
            (),
            kwargs,
            None,
            self.enqueued_at_ms,
            serializer=serializer.job_serializer,
        )


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
    # Refused: the caller has its quota of outstanding jobs; nothing was written.
    over_quota: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """What a rate-limited read found (see `JobStore.read`)."""

    # The job and its arq job (None when arq's key is gone); None when there is none.
    found: tuple[ArqJob | None, JobPublic] | None = None
    # Refused by the caller's rate limit: when to try again; nothing was read.
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """A caller's cap on outstanding jobs (waiting, running or retrying), kept
    by the submit script in the caller's sorted set (keys.outstanding_key)."""

    key: str
    max_jobs: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker's claim started: its score in the queue, its try number,
    the try's token (fencing: every later call of the try carries it) and arq's
    job key as the claim read it (None when it was gone)."""

    job_id: str
    score_ms: int
    job_try: int
    token: str = ""
    job_bytes: bytes | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim did: the jobs it started, when the next deferred one falls
    due, and when the queue was paused (None while it runs)."""

    jobs: list[Claimed]
    next_due_ms: float | None
    paused_at_ms: int | None = None
    # Due jobs this claim passed over, by why: a running limit, a rate.
    held: dict[WaitingReason, int] = field(default_factory=dict)


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
    # Refused: the try's token is no longer the record's (a stale try).
    stale: bool = False

    def __bool__(self) -> bool:
        return self.moved


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What an operator looks for: every field given must match (None: any).

    `state`, `queue` and `job_type` choose the indexes to read; the rest is
    checked on each job read: `error_type` (the last error's type, exact),
    `text` (a case-insensitive part of the job id or the last error's
    message), a time range (`since_ms` <= the job's time < `until_ms`,
    where its time is when it finished, else started, else was enqueued) and
    the api key that submitted it (`submitted_by`).
    """

    state: JobState | None = None
    queue: str | None = None
    job_type: str | None = None
    error_type: str | None = None
    text: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    # Only the jobs this api key submitted (an own-jobs key's reads).
    submitted_by: str | None = None

    def matches(self, job: JobPublic) -> bool:
        if self.job_type is not None and job.job_type != self.job_type:
            return False
        if self.submitted_by is not None and job.submitted_by != self.submitted_by:
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


class Reported(IntEnum):
    """What a progress report did."""

    STALE = -1  # refused: the try's token is no longer the record's
    NOT_RUNNING = 0  # the job is not in progress: nothing recorded
    RECORDED = 1


def claim_nonce() -> str:
    """A random nonce per claim call; the claim makes each job's token of it."""
    return secrets.token_hex(8)


# What a job whose data is not JSON job data (a pickle, for one) shows as its
# error until a worker dead-letters it: it is never run.
INVALID_JOB_DATA = JobError(
    type="InvalidJobData",
    message="job data is not valid JSON job data: it will not run (see the upgrade notes)",
)


def _with_outcome(
    record: dict[str, str], arq_job: "ArqJob | None", job_bytes: bytes | None
) -> dict[str, str]:
    """The record with what arq's result key holds of a finished job (its
    result, or a dead job's error: each is stored there, not in the record),
    and with INVALID_JOB_DATA as its error when its job data cannot be read."""
    if arq_job is None:
        if job_bytes and not record.get("error"):
            return {**record, "error": INVALID_JOB_DATA.model_dump_json()}
        return record
    if arq_job.success is True:
        return {**record, "result": serializer.job_serializer(arq_job.result).decode()}
    if arq_job.success is False and record.get("state") == JobState.DEAD.value:
        error = arq_job.result
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return {**record, "error": serializer.job_serializer(error).decode()}
    return record


def _waiting(job: JobPublic) -> bool:
    return job.state in (JobState.QUEUED, JobState.DEFERRED)


def _parse_claim(reply: list[Any]) -> Claim:
    """A claim's reply (claim.lua, or finish.lua's after the end of a try)."""
    claimed, next_due, paused_at, (held_limit, held_rate) = reply
    rows = iter(claimed)
    jobs = [
        Claimed(job_id.decode(), int(float(score)), int(job_try), token.decode(), job or None)
        for job_id, score, job_try, token, job in zip(rows, rows, rows, rows, rows, strict=True)
    ]
    return Claim(
        jobs,
        float(next_due) if next_due else None,
        int(paused_at) if paused_at else None,
        {WaitingReason.LIMIT: held_limit, WaitingReason.RATE: held_rate},
    )


class JobStore:
    """Submit, claim, finish, cancel, requeue and read jobs; nothing else writes them."""

    def __init__(
        self,
        redis: ArqRedis,
        catalog: Catalog | None = None,
        *,
        admit: Callable[[], Awaitable[None]] | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.redis = redis
        self.catalog = catalog or load_catalog()
        # Where offloaded payloads and results go (claimcheck.py); None: every
        # job keeps its payload and result inline.
        self.blobs = blobs
        # Awaited before each submit; raises to refuse it (the api's: not while
        # Redis may evict, redis_health.RedisHealth.refuse_if_unsafe).
        self._admit = admit
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
        self._renew = script(lua_script("renew"))
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

    async def admit(self) -> None:
        """Raise unless a job may be acknowledged now (the `admit` given, if any).
        Every submit asks; a route that writes other data first asks before that."""
        if self._admit is not None:
            await self._admit()

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
        id_may_repeat: bool = False,
        quota: Quota | None = None,
        stored_payload: dict[str, Any] | None = None,
    ) -> Submitted:
        """Enqueue the job as arq would, unless its Idempotency-Key names one
        already, or the caller's `rate_limit` or `quota` refuses it (in the
        same step). An Idempotency-Key is the submitting api key's own
        (`meta["submitted_by"]`).

        An id the caller chose (`id_may_repeat`: a scheduled run's, one per
        tick) is refused while its job lives, also once it finished (when its
        job key became arq's result key); a fresh random id needs no check.

        Its score is its due time in its priority's band (the job type's
        priority unless `priority` is given). The store's `admit` may refuse it first.
        `stored_payload` is what the job keeps in place of `payload` (an
        offloaded one's reference, see claimcheck.py); flow limits read `payload`."""
        await self.admit()
        at_ms = now_ms()
        priority = job_type.priority if priority is None else priority
        if priority not in PRIORITIES:
            raise ValueError(
                f"priority must be {HIGHEST_PRIORITY} (highest) to {LOWEST_PRIORITY} (lowest), "
                f"not {priority!r}"
            )
        if idempotency_key:
            meta = {**meta, "idempotency_key": idempotency_key}
        kept = payload if stored_payload is None else stored_payload
        job = ArqJob(job_type.name, kept, meta, at_ms)
        idem_key = (
            keys.idempotency_key(job_type.name, idempotency_key, meta.get(SUBMITTED_BY))
            if idempotency_key
            else ""
        )
        status, *existing = await self._submit(
            keys=[
                job_key_prefix + job_id,
                result_key_prefix + job_id if id_may_repeat else "",
                job_type.queue,
                idem_key,
                keys.queue_key(job_type.queue, keys.FLOW_SUFFIX),
                rate_limit.key if rate_limit else "",
                keys.job_key(meta["parent_id"]) if meta.get("parent_id") else "",
                quota.key if quota else "",
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
                quota.max_jobs if quota else 0,
                QUOTA_PRUNE_PER_CALL,
            ],
        )
        if status == b"over_quota":
            return Submitted(job_id, False, over_quota=True)
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
                keys.queue_key(queue, keys.WAITING_SUFFIX),
            ],
            args=[
                now_ms(),
                lock_ttl_ms,
                wanted,
                scan_limit,
                cancelled_retention_ms,
                self._claim_limits.get(queue, ""),
                claim_nonce(),
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
        token: str = "",
        **fields: Any,
    ) -> Ended:
        """One end of a try. With the try's `token` (the worker always gives it), a
        stale try's end is refused whole: `Ended.stale`, nothing moved or claimed."""
        fetch = next_jobs.fetch() if next_jobs is not None else None
        args: list[Any] = [job_id, state.value, now_ms(), math.ceil(score), job_type.name, token]
        fields_ = _flatten(fields)
        reply: list[Any] | None = None
        if fetch is not None:
            limits = self._claim_limits.get(job_type.queue, "")
            fetch_args: list[Any] = [fetch.wanted, fetch.lock_ttl_ms, fetch.scan_limit]
            fetch_args += [fetch.cancelled_retention_ms, limits, claim_nonce()]
            with contextlib.suppress(OutOfMemoryError):
                reply = await self._finish_and_fetch(
                    keys=[job_type.queue], args=[*args, *fetch_args, *fields_]
                )
        if reply is None:
            reply = await self._finish(
                keys=[job_type.queue], args=[*args, 0, 0, 0, 0, "", "", *fields_]
            )
        moved, state_now, *claim = reply
        stale = not moved and state_now == b"stale"
        ended = Ended(bool(moved), _parse_claim(claim) if claim else None, stale)
        if next_jobs is not None and ended.claim is not None:
            next_jobs.take(ended.claim)
        return ended

    async def complete(
        self,
        job_type: JobType,
        job_id: str,
        result_json: str,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
    ) -> Ended:
        at_ms = now_ms()
        retention_ms = job_type.keep_result_s * 1000
        return await self._end_try(
            job_type,
            job_id,
            JobState.COMPLETE,
            retention_ms,
            next_jobs,
            token,
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
        *,
        token: str = "",
    ) -> Ended:
        return await self._end_try(
            job_type,
            job_id,
            JobState.RETRYING,
            due_ms,
            next_jobs,
            token,
            next_try_at_ms=due_ms,
            error=error_json,
        )

    async def dead(
        self,
        job_type: JobType,
        job_id: str,
        error_json: str,
        next_jobs: NextJobs | None = None,
        *,
        token: str = "",
    ) -> Ended:
        return await self._end_try(
            job_type,
            job_id,
            JobState.DEAD,
            DEAD_RETENTION_S * 1000,
            next_jobs,
            token,
            finished_at_ms=now_ms(),
            next_try_at_ms="",
            error=error_json,
        )

    async def cancelled(self, job_type: JobType, job_id: str, *, token: str = "") -> Ended:
        """A running job's cancel took effect."""
        return await self._end_try(
            job_type,
            job_id,
            JobState.CANCELLED,
            job_type.keep_result_s * 1000,
            token=token,
            finished_at_ms=now_ms(),
        )

    async def put_back(self, job_type: JobType, job_id: str, *, token: str = "") -> Ended:
        """A shutdown cut the try short: due again now, and the try does not count."""
        at_ms = now_ms()
        return await self._end_try(
            job_type, job_id, JobState.QUEUED, at_ms, token=token, ready_at_ms=at_ms
        )

    async def settle_unstarted(
        self,
        queue: str,
        job_id: str,
        error_json: str,
        cancelled_retention_ms: int,
        *,
        token: str = "",
    ) -> str:
        """A claimed job that cannot run (its data gone or not valid, its type
        unknown here): cancelled if a cancel was pending, else dead; '' if not in
        progress, 'stale' if the try's token is no longer the record's."""
        state = await self._settle(
            keys=[queue],
            args=[
                job_id,
                now_ms(),
                DEAD_RETENTION_S * 1000,
                cancelled_retention_ms,
                error_json,
                token,
            ],
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

    async def report_progress(
        self, job_id: str, percent: int, message: str, *, token: str = ""
    ) -> Reported:
        """Record a running job's progress; with the try's `token`, a stale try's
        report is refused."""
        done = await self._progress(
            keys=[keys.job_key(job_id)],
            args=[percent, message, keys.events_channel(job_id), token],
        )
        return Reported(int(done))

    async def renew_locks(self, tries: Sequence[tuple[str, str]], lock_ttl_ms: int) -> list[str]:
        """Renew the locks of running tries, (job id, token) each, in one call;
        returns the ids of the stale ones (their token is no longer the record's),
        whose locks were left alone."""
        if not tries:
            return []
        stale = await self._renew(
            keys=[], args=[lock_ttl_ms, *(part for pair in tries for part in pair)]
        )
        return [job_id.decode() for job_id in stale]

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
        if submitted_by := arq_job.meta.get(SUBMITTED_BY):  # still the same key's job
            meta = {**meta, SUBMITTED_BY: submitted_by}
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
                result_key_prefix + job_id,
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
        queue is paused, and per job its hash, arq's job key, arq's result key
        (a finished job's payload and result) and its score in its queue (in
        every queue of the catalog when not known). `_parse_reads` makes the
        jobs of the replies."""
        queues = self.catalog.queues()
        for name in queues:
            pipe.exists(keys.paused_key(name))
        for job_id, queue in rows:
            pipe.hgetall(keys.job_key(job_id))
            pipe.get(job_key_prefix + job_id)
            pipe.get(result_key_prefix + job_id)
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
            raw, job_bytes, result_bytes = next(replies), next(replies), next(replies)
            candidates = [queue] if queue else queues
            scores = {q: s for q in candidates if (s := next(replies)) is not None}
            record = _decode(raw)
            where = record.get("queue") or next(iter(scores), "")
            out.append(
                self._found(
                    job_id, record, job_bytes or result_bytes, scores, where in paused, at_ms
                )
            )
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
        """A job from its record, arq's job key (or, finished, its result key)
        and (waiting, with no record yet) its score in the queue it waits in;
        None when there is neither."""
        if not record and not scores:
            # Never ours (a bare arq worker finished it), or gone.
            return None
        arq_job = ArqJob.decode(job_bytes) if job_bytes else None
        record = _with_outcome(record, arq_job, job_bytes)
        where = record.get("queue") or next(iter(scores), "")
        priority, score_ms = (
            (DEFAULT_PRIORITY, None) if record else split_score(float(scores[where]))
        )
        reason = WaitingReason.PAUSED if paused else None
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
                asked.append((i, keys.queue_key(job.queue, keys.WAITING_SUFFIX), fields))
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
                update = {"waiting_reason": WaitingReason(reason)}
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
        waiting_reason: WaitingReason | None = None,
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
        targets: list[str | bytes] = list(job_ids)
        if action == "requeue":
            targets = [x for pair in await self._job_data_of_results(job_ids) for x in pair]
        done, skipped = await self._bulk(
            keys=[queue], args=[action, now_ms(), cancelled_retention_ms, *targets]
        )
        if action == "delete" and idempotency_keys:
            await self.redis.delete(*idempotency_keys)
        return BulkBatch(int(done), int(skipped))

    async def _job_data_of_results(self, job_ids: Sequence[str]) -> Sequence[tuple[str, bytes]]:
        """Per job: the job data its arq result key holds (a finished job's
        payload and trace context, see lib/arq_result.lua), as arq's job key
        holds it, or b'' when it has no readable result key."""
        async with self.redis.pipeline(transaction=False) as pipe:  # the keys span slots
            for job_id in job_ids:
                pipe.get(result_key_prefix + job_id)
            results = await pipe.execute()
        out: list[tuple[str, bytes]] = []
        for job_id, raw in zip(job_ids, results, strict=True):
            job = ArqJob.decode(raw) if raw else None
            again = ArqJob(job.function, job.payload, job.meta, job.enqueued_at_ms) if job else None
            out.append((job_id, again.encode() if again else b""))
        return out

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
