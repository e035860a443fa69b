"""The one way Conveyor puts a job on a queue, from the api or from inside a job."""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from conveyor_core import claimcheck, keys, stored_bytes
from conveyor_core.blobs import BlobRef
from conveyor_core.catalog import JobType
from conveyor_core.debounce import Debounce, DebounceError
from conveyor_core.jobs import DEAD_RETENTION_S, now_ms
from conveyor_core.metrics import JOBS_ENQUEUED
from conveyor_core.ratelimit import RateLimit
from conveyor_core.store import SUBMITTED_BY, JobStore, Quota, Submitted
from conveyor_core.stored_bytes import ByteQuota
from conveyor_core.tracing import inject, messaging_attributes, tracer


def fingerprint(payload: dict[str, Any]) -> str:
    """Same payload, same fingerprint: key order and spacing do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# How far ahead a job may be scheduled unless a service says otherwise: a year
# (a leap one). A job deferred further is a mistake, and every stored time
# must be one Python's datetime can read back.
MAX_DEFER_S = 366 * 86_400


class ScheduleError(ValueError):
    """A defer_by_s or run_at outside the range a job may be scheduled in."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def ready_at_ms(
    defer_by_s: float | None = None,
    run_at: datetime | None = None,
    *,
    max_defer_s: float = MAX_DEFER_S,
    at_ms: int | None = None,
) -> int:
    """When the job is due, in ms since the epoch: from now to `max_defer_s` ahead.

    A run_at in the past means now (the job is due at once). Anything later than
    `max_defer_s` from now, or not a time in UTC at all (`0001-01-01T00:00+14:00`
    is in year 0), raises ScheduleError naming the field, before anything is written.
    """
    if defer_by_s is not None and run_at is not None:
        raise ScheduleError("run_at", "give defer_by_s or run_at, not both")
    now = now_ms() if at_ms is None else at_ms
    latest = now + int(max_defer_s * 1000)
    if run_at is not None:
        if run_at.tzinfo is None:
            raise ScheduleError("run_at", "give a time with its UTC offset")
        try:
            due = int(run_at.astimezone(UTC).timestamp() * 1000)
        except (OverflowError, ValueError):
            raise ScheduleError("run_at", f"{run_at.isoformat()} is not a time in UTC") from None
        if due > latest:
            raise ScheduleError(
                "run_at", f"at most {max_defer_s:g} s from now; {run_at.isoformat()} is later"
            )
        return max(due, now)
    defer_by_s = defer_by_s or 0
    if not 0 <= defer_by_s <= max_defer_s:  # also false for NaN
        raise ScheduleError("defer_by_s", f"must be from 0 to {max_defer_s:g} s")
    return now + int(defer_by_s * 1000)


def job_meta(
    request_id: str | None, parent_id: str | None, submitted_by: str | None
) -> dict[str, str]:
    """A job's reserved kwarg: the current span's context (so the job continues
    the trace), the request that caused it, its parent and its api key."""
    meta: dict[str, str] = {}
    inject(meta)
    if request_id:
        meta["request_id"] = request_id
    if parent_id:
        meta["parent_id"] = parent_id
    if submitted_by:
        meta[SUBMITTED_BY] = submitted_by
    return meta


async def enqueue(
    store: JobStore,
    job_type: JobType,
    payload: BaseModel | dict[str, Any],
    *,
    defer_by_s: float | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    max_defer_s: float = MAX_DEFER_S,
    rate_limit: RateLimit | None = None,
    priority: int | None = None,
    parent_id: str | None = None,
    job_id: str | None = None,
    submitted_by: str | None = None,
    quota: Quota | None = None,
    debounce: Debounce | None = None,
    byte_quota: ByteQuota | None = None,
) -> Submitted:
    """Validate `payload` against the job type's model and enqueue one job.

    The schedule is checked first (ScheduleError): nothing is written for a bad one.

    With an `idempotency_key` already used for this job type, nothing is
    enqueued: the answer names the existing job and whether its payload matched.
    A `rate_limit` is spent in the same step; over it, nothing is enqueued and
    the answer says when to retry. `priority` (0 highest to 9 lowest)
    overrides the job type's. `parent_id` names the job that enqueues this one.
    A `job_id` given (a scheduled run's, one per tick) is taken once: a second
    submit under it enqueues nothing (`Submitted.created` is False).
    `submitted_by` names the api key the job is submitted for (it scopes the
    Idempotency-Key; own-jobs keys read only theirs); over its `quota` of
    outstanding jobs, nothing is enqueued (`Submitted.over_quota`). Within a
    `debounce` key's window, an earlier job may be kept (`Submitted.debounced`,
    and `replaced` when it took this payload; debounce.py).

    A payload over its job type's `offload_above_bytes` goes to the store's
    blob store first (claimcheck.py), counted against `byte_quota` (over it,
    stored_bytes.ByteQuotaError and nothing is written).
    """
    due_ms = ready_at_ms(defer_by_s, run_at, max_defer_s=max_defer_s)
    model = job_type.payload.model_validate(payload)
    data = model.model_dump(mode="json")
    id_may_repeat = job_id is not None
    # The id names its queue shard (keys.job_id_for): its keys share the shard's slot.
    job_id = job_id or keys.job_id_for(
        store.catalog.shard_for(
            job_type,
            data,
            idempotency_key=idempotency_key,
            debounce_key=debounce.key if debounce else None,
            submitted_by=submitted_by,
        )
    )
    stored_payload, blob = None, None
    # A repeatable id (a scheduled run's) may name a live job: never overwrite its blob.
    if debounce is not None and debounce.mode == "replace" and job_type.offload_above_bytes:
        # The kept job would take a payload stored under another job's id.
        raise DebounceError(
            "debounce_mode", f"replace is not offered for {job_type.name}, whose payloads offload"
        )
    if not id_may_repeat and job_type.offload_above_bytes is not None:
        stored_payload, blob = await _offloaded(store, job_type, job_id, data, byte_quota)
    with tracer.start_as_current_span(
        f"send {job_type.queue}",
        kind=SpanKind.PRODUCER,
        attributes=messaging_attributes("send", job_type.queue, job_id, job_type.name),
    ):
        meta = job_meta(request_id, parent_id, submitted_by)
        submitted = await store.submit(
            job_type,
            job_id,
            data,
            ready_at_ms=due_ms,
            meta=meta,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint(data),
            rate_limit=rate_limit,
            priority=priority,
            id_may_repeat=id_may_repeat,
            quota=quota,
            debounce=debounce,
            stored_payload=stored_payload,
        )
    if submitted.created:
        JOBS_ENQUEUED.labels(job_type.name, job_type.queue).inc()
        if blob is not None and byte_quota is not None:
            # Counted as long as its record may live: kept, or dead (and requeueable).
            until_s = due_ms / 1000 + max(job_type.keep_result_s, DEAD_RETENTION_S)
            await stored_bytes.count(store.redis, byte_quota.api_key, blob.size, until_s)
    elif blob is not None and store.blobs is not None:
        await store.blobs.delete(blob.key)  # nothing refers to it
    return submitted


async def _offloaded(
    store: JobStore,
    job_type: JobType,
    job_id: str,
    data: dict[str, Any],
    byte_quota: ByteQuota | None,
) -> tuple[dict[str, Any] | None, BlobRef | None]:
    """The payload the job keeps and its blob, when it is offloaded; else (None, None)."""
    if store.blobs is None:
        return None, None
    if byte_quota is not None:
        size_bytes = len(orjson.dumps(data))
        if claimcheck.offloads(job_type, size_bytes):
            await stored_bytes.check(store.redis, byte_quota, size_bytes)
    kept, blob = await claimcheck.offload_payload(store.blobs, job_type, job_id, data)
    return (kept, blob) if blob is not None else (None, None)
