"""The one way Conveyor puts a job on a queue, from the api or from inside a job."""

import hashlib
import json
from datetime import datetime
from typing import Any
from uuid import uuid4

from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from conveyor_core.catalog import JobType
from conveyor_core.jobs import now_ms
from conveyor_core.metrics import JOBS_ENQUEUED
from conveyor_core.store import JobStore, Submitted
from conveyor_core.tracing import inject, messaging_attributes, tracer


def fingerprint(payload: dict[str, Any]) -> str:
    """Same payload, same fingerprint: key order and spacing do not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def ready_at_ms(defer_by_s: float | None = None, run_at: datetime | None = None) -> int:
    if defer_by_s is not None and run_at is not None:
        raise ValueError("give defer_by_s or run_at, not both")
    if run_at is not None:
        return int(run_at.timestamp() * 1000)
    return now_ms() + int((defer_by_s or 0) * 1000)


async def enqueue(
    store: JobStore,
    job_type: JobType,
    payload: BaseModel | dict[str, Any],
    *,
    defer_by_s: float | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    priority: int | None = None,
) -> Submitted:
    """Validate `payload` against the job type's model and enqueue one job.

    With an `idempotency_key` already used for this job type, nothing is
    enqueued: the answer names the existing job and whether its payload matched.
    `priority` (0 highest to 9 lowest) overrides the job type's.
    """
    model = job_type.payload.model_validate(payload)
    data = model.model_dump(mode="json")
    job_id = uuid4().hex
    with tracer.start_as_current_span(
        f"send {job_type.queue}",
        kind=SpanKind.PRODUCER,
        attributes=messaging_attributes("send", job_type.queue, job_id, job_type.name),
    ):
        # The reserved kwarg: this span's context, so the job continues the trace.
        meta: dict[str, str] = {}
        inject(meta)
        if request_id:
            meta["request_id"] = request_id
        submitted = await store.submit(
            job_type,
            job_id,
            data,
            ready_at_ms=ready_at_ms(defer_by_s, run_at),
            meta=meta,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint(data),
            priority=priority,
        )
    if submitted.created:
        JOBS_ENQUEUED.labels(job_type.name, job_type.queue).inc()
    return submitted
