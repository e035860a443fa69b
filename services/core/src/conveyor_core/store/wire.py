"""arq's wire format: a job's arq job key (and, once it finished, its arq
result key) as Conveyor reads and writes it, through the JSON serializer."""

from dataclasses import dataclass
from typing import Any

from arq.jobs import SerializationError, serialize_job

from conveyor_core import serializer
from conveyor_core.jobs import (
    JobError,
    JobState,
)

# The reserved job kwarg: Conveyor's metadata (trace context, request id,
# idempotency key).
META_KWARG = "__conveyor__"
# The job's metadata field that names the api key that submitted it.
SUBMITTED_BY = "submitted_by"


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
    result, stored there, not in the record; a dead job's error only where the
    record has none: the record keeps it whole, traceback included), and with
    INVALID_JOB_DATA as its error when its job data cannot be read."""
    if arq_job is None:
        if job_bytes and not record.get("error"):
            return {**record, "error": INVALID_JOB_DATA.model_dump_json()}
        return record
    if arq_job.success is True:
        return {**record, "result": serializer.job_serializer(arq_job.result).decode()}
    dead = record.get("state") == JobState.DEAD.value
    if arq_job.success is False and dead and not record.get("error"):
        error = arq_job.result
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return {**record, "error": serializer.job_serializer(error).decode()}
    return record
