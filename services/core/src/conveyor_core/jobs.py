"""A job as clients see it, and the names of its states."""

import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from conveyor_core.checkpoint import Checkpoint
from conveyor_core.group_ids import group_of

if TYPE_CHECKING:
    from conveyor_core.store import ArqJob


class JobState(StrEnum):
    """Where a job is in its life. Each name means one thing in the api, the
    metrics and the status page."""

    DEFERRED = "deferred"  # waiting for its run_at or defer_by time
    QUEUED = "queued"  # ready, waiting for a worker
    IN_PROGRESS = "in_progress"  # a worker runs it
    RETRYING = "retrying"  # a try failed; the next one is due at next_try_at
    COMPLETE = "complete"  # finished; the result is kept for the type's retention
    DEAD = "dead"  # gave up (permanent error or no tries left): in the dead letters
    CANCELLED = "cancelled"  # cancelled by a client; it will not run again


TERMINAL_STATES = frozenset({JobState.COMPLETE, JobState.DEAD, JobState.CANCELLED})

# Dead jobs stay readable (and requeueable) this long.
DEAD_RETENTION_S = 7 * 86_400


class TryOutcome(StrEnum):
    """How a try ended, named as the state it left the job in. The one set of
    names for the end of a try: the metrics' `outcome` label, the history, the
    digest's counts, the dashboard, the alerts, a job's attempts and its logs."""

    COMPLETE = JobState.COMPLETE.value
    RETRYING = JobState.RETRYING.value  # it failed; another try is due at next_try_at
    DEAD = JobState.DEAD.value  # a permanent error or no tries left
    CANCELLED = JobState.CANCELLED.value  # a client's cancel stopped it
    # Not a state: a shutdown cut the try short, so the job is queued again
    # and the try does not count. Only the metrics and logs show it.
    INTERRUPTED = "interrupted"
    # Not a state either: the handler asked to run later (Snooze, RateLimited):
    # the job is retrying, and the try does not count.
    SNOOZED = "snoozed"


# Priorities: 0 runs first, 9 last; a job type's default unless it says otherwise.
# Jobs a bare arq client enqueues get DEFAULT_PRIORITY (see scores.py, queue_score).
HIGHEST_PRIORITY = 0
LOWEST_PRIORITY = 9
DEFAULT_PRIORITY = 5


class HoldReason(StrEnum):
    """Why a job is held: due, yet not started though a worker may be free.
    A job's `waiting_reason` (the api's name) is its hold reason."""

    PAUSED = "paused"  # its queue is paused
    LIMIT = "limit"  # its job type (or key) has as many jobs running as its limit allows
    RATE = "rate"  # its job type (or key) started as many jobs as its rate allows, for now
    HELD = "held"  # its job type (or key) is held: a handler met a partner's limit (429)


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


class CheckpointPublic(BaseModel):
    """Where a long job got to: its last checkpoint, from which its next try resumes."""

    cursor: Any = Field(description="What the handler saved (JSON, a few KiB at most).")
    saved_at: datetime = Field(description="When the try saved it.")
    done: int | None = Field(default=None, description="Items done, when the handler said.")
    total: int | None = Field(default=None, description="Items in all, when the handler said.")
    try_number: int = Field(description="The try that saved it.")

    @classmethod
    def of(cls, raw: str | None) -> "CheckpointPublic | None":
        """The record's `checkpoint` field (lua/checkpoint.lua), or None."""
        saved = Checkpoint.decode(raw)
        if saved is None:
            return None
        return cls(
            cursor=saved.cursor,
            saved_at=ms_to_datetime(saved.saved_at_ms) or EARLIEST,
            done=saved.done,
            total=saved.total,
            try_number=saved.job_try,
        )


class Attempt(BaseModel):
    """One try that ran (since the job's last requeue)."""

    number: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    outcome: str = Field(
        description="complete, retrying (it failed), dead, cancelled, or snoozed (it asked "
        "to run later, or met a partner's rate limit: the try did not count, and the "
        "next one has the same number)."
    )


def _attempt(number: int, started: str, ended: str, outcome: str) -> Attempt:
    duration = (int(ended) - int(started)) / 1000 if started and ended else None
    return Attempt(
        number=number,
        started_at=ms_to_datetime(started),
        finished_at=ms_to_datetime(ended),
        duration_s=duration,
        outcome=outcome,
    )


def attempts_of(record: dict[str, str], tries: int) -> list[Attempt]:
    """The record's `try:{n}` fields (finish.lua) up to `tries`, and its
    `snooze:{k}` fields (tries that did not count), in the order they started."""
    out = []
    for n in range(1, tries + 1):
        raw = record.get(f"try:{n}")
        if not raw:
            continue
        started, _, rest = raw.partition(" ")
        ended, _, outcome = rest.partition(" ")
        out.append(_attempt(n, started, ended, outcome))
    for k in range(1, _int(record.get("snoozes")) + 1):
        started, ended, number = ([*record.get(f"snooze:{k}", "").split(" "), "", "", ""])[:3]
        if number.isdigit():
            out.append(_attempt(int(number), started, ended, "snoozed"))
    if len(out) > 1:
        out.sort(key=lambda a: (a.started_at is None, a.started_at or EARLIEST, a.number))
    return out


class JobPublic(BaseModel):
    """A job as the api returns it."""

    id: str
    version: int = Field(description="Grows with every change; SSE events carry it as their id.")
    job_type: str
    queue: str
    state: JobState
    priority: int = Field(
        ge=HIGHEST_PRIORITY,
        le=LOWEST_PRIORITY,
        description="0 (highest) to 9 (lowest): within its queue, a ready job of higher "
        "priority starts before any of lower priority.",
    )
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
    submitted_by: str | None = Field(
        default=None, description="The api key (its name) the job was submitted with."
    )
    idempotency_key: str | None = None
    parent_id: str | None = Field(
        default=None, description="The job that enqueued this one, in a workflow."
    )
    children: list[str] = Field(
        default_factory=list, description="The jobs this one enqueued while it ran."
    )
    group_id: str | None = Field(
        default=None,
        description="The group this job is a child (`{group id}.{index}`) or a "
        "continuation of (`GET /v1/groups/{group_id}`).",
    )
    groups: list[str] = Field(
        default_factory=list, description="The groups this job started while it ran."
    )
    attempts: list[Attempt] = Field(
        default_factory=list, description="Each finished try since the last requeue."
    )
    waiting_reason: HoldReason | None = Field(
        default=None,
        description="Why a due job is held (not started though a worker may be free): its "
        "queue is paused, or its type or key is at its running limit or its rate.",
    )
    checkpoint: CheckpointPublic | None = Field(
        default=None,
        description="The last checkpoint a try saved (`ctx.checkpoint`): its next try "
        "resumes from it.",
    )

    @classmethod
    def from_parts(
        cls,
        job_id: str,
        arq_job: "ArqJob | None",
        record: dict[str, str],
        *,
        score_ms: int | None,
        queue: str,
        max_tries: int,
        at_ms: int | None = None,
        waiting_reason: HoldReason | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> "JobPublic":
        """Build from arq's job (payload, trace context), Conveyor's record (empty
        while the job waits for its first try) and the job's score in its queue."""
        # No record yet: the job waits for its first try. A record says queued
        # again after a requeue or a shutdown put the job back.
        state = record.get("state") or JobState.QUEUED
        ready_at_ms = score_ms if score_ms is not None else _int(record.get("ready_at_ms"))
        if state == JobState.QUEUED:
            due = ready_at_ms <= (at_ms if at_ms is not None else now_ms())
            public_state = JobState.QUEUED if due else JobState.DEFERRED
        else:
            public_state = JobState(state)
        # Due, yet not started: the jobs a hold can apply to.
        due_to_start = public_state is JobState.QUEUED or (
            public_state is JobState.RETRYING
            and _int(record.get("next_try_at_ms")) <= (at_ms if at_ms is not None else now_ms())
        )
        error = json.loads(record["error"]) if record.get("error") else None
        meta = arq_job.meta if arq_job else {}
        enqueued_at_ms = arq_job.enqueued_at_ms if arq_job else ready_at_ms
        return cls(
            id=job_id,
            version=_int(record.get("version")) or 1,
            job_type=arq_job.function if arq_job else record.get("job_type", "unknown"),
            queue=queue,
            state=public_state,
            priority=_int(record["priority"]) if record.get("priority") else priority,
            progress=Progress(
                percent=_int(record.get("progress")), message=record.get("progress_message", "")
            ),
            payload=arq_job.payload if arq_job else {},
            result=json.loads(record["result"]) if record.get("result") else None,
            error=JobError(**error) if error else None,
            tries=_int(record.get("tries")),
            max_tries=max_tries,
            requeues=_int(record.get("requeues")),
            cancel_requested=record.get("cancel_requested") == "1",
            enqueued_at=ms_to_datetime(enqueued_at_ms),
            scheduled_at=ms_to_datetime(ready_at_ms),
            started_at=ms_to_datetime(record.get("started_at_ms")),
            finished_at=ms_to_datetime(record.get("finished_at_ms")),
            next_try_at=ms_to_datetime(record.get("next_try_at_ms")),
            trace_id=trace_id_of(meta.get("traceparent")),
            request_id=meta.get("request_id") or None,
            submitted_by=meta.get("submitted_by") or None,
            idempotency_key=meta.get("idempotency_key") or None,
            parent_id=meta.get("parent_id") or None,
            children=[k.removeprefix("child:") for k in record if k.startswith("child:")],
            group_id=_group_id_of(job_id, meta),
            groups=[k.removeprefix("group:") for k in record if k.startswith("group:")],
            attempts=attempts_of(record, _int(record.get("tries"))) if record else [],
            waiting_reason=waiting_reason if due_to_start else None,
            checkpoint=CheckpointPublic.of(record.get("checkpoint")),
        )


def _group_id_of(job_id: str, meta: dict[str, str]) -> str | None:
    """A child's group (its id says it), or a continuation's (its metadata does)."""
    member = group_of(job_id)
    return member[0] if member else meta.get("group_id") or None


def _int(value: str | int | None) -> int:
    return int(value) if value not in (None, "") else 0


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
