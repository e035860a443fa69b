"""A job as clients see it, and the names of its states."""

import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobState(StrEnum):
    """Where a job is in its life."""

    DEFERRED = "deferred"  # waiting for its run_at or defer_by time
    QUEUED = "queued"  # ready, waiting for a worker
    IN_PROGRESS = "in_progress"  # a worker runs it
    COMPLETE = "complete"  # finished; the result is kept for the type's retention
    FAILED = "failed"  # a try failed; the next one is scheduled at next_try_at
    DEAD = "dead"  # gave up (permanent error or no tries left): in the dead letters
    CANCELLED = "cancelled"  # cancelled by a client; it will not run again


TERMINAL_STATES = frozenset({JobState.COMPLETE, JobState.DEAD, JobState.CANCELLED})

# Stored states: queued and deferred share one index, `waiting`, ordered by the
# time the job is due; which of the two a job is follows from that time.
WAITING = "waiting"


def stored_state(state: JobState) -> str:
    return WAITING if state in (JobState.QUEUED, JobState.DEFERRED) else state.value


def now_ms() -> int:
    return int(time.time() * 1000)


# The range of times a datetime can hold, in UTC.
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def ms_to_datetime(ms: str | int | None) -> datetime | None:
    """A stored time; one outside datetime's range (stored before the api checked
    schedules) reads as the nearest end of the range, so listings keep working."""
    if ms in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return LATEST if int(ms) > 0 else EARLIEST


class Progress(BaseModel):
    percent: int = Field(ge=0, le=100)
    message: str = ""


class JobError(BaseModel):
    """The last try's error."""

    type: str
    message: str
    traceback: str = ""


class JobPublic(BaseModel):
    """A job as the api returns it."""

    id: str
    version: int = Field(description="Grows with every change; SSE events carry it as their id.")
    job_type: str
    queue: str
    state: JobState
    progress: Progress
    payload: dict[str, Any]
    result: Any = None
    error: JobError | None = None
    tries: int = Field(description="Tries started so far (since the last requeue).")
    max_tries: int
    requeues: int = Field(description="Times a client requeued this job from the dead letters.")
    cancel_requested: bool
    enqueued_at: datetime
    scheduled_at: datetime = Field(description="When the job is (or was) due to run.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_try_at: datetime | None = None
    trace_id: str | None = None
    request_id: str | None = None
    idempotency_key: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str], at_ms: int | None = None) -> "JobPublic":
        """Build from the job's Redis hash (decoded)."""
        state = raw["state"]
        ready_at_ms = int(raw["ready_at_ms"])
        if state == WAITING:
            due = ready_at_ms <= (at_ms if at_ms is not None else now_ms())
            public_state = JobState.QUEUED if due else JobState.DEFERRED
        else:
            public_state = JobState(state)
        error = json.loads(raw["error"]) if raw.get("error") else None
        return cls(
            id=raw["id"],
            version=int(raw.get("version") or 1),
            job_type=raw["job_type"],
            queue=raw["queue"],
            state=public_state,
            progress=Progress(
                percent=int(raw.get("progress") or 0), message=raw.get("progress_message", "")
            ),
            payload=json.loads(raw["payload"]),
            result=json.loads(raw["result"]) if raw.get("result") else None,
            error=JobError(**error) if error else None,
            tries=int(raw.get("tries") or 0),
            max_tries=int(raw["max_tries"]),
            requeues=int(raw.get("requeues") or 0),
            cancel_requested=raw.get("cancel_requested") == "1",
            enqueued_at=ms_to_datetime(raw["enqueued_at_ms"]),
            scheduled_at=ms_to_datetime(ready_at_ms),
            started_at=ms_to_datetime(raw.get("started_at_ms")),
            finished_at=ms_to_datetime(raw.get("finished_at_ms")),
            next_try_at=ms_to_datetime(raw.get("next_try_at_ms")),
            trace_id=raw.get("trace_id") or None,
            request_id=raw.get("request_id") or None,
            idempotency_key=raw.get("idempotency_key") or None,
        )
