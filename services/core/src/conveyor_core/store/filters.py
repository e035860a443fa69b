"""What an operator looks for (JobFilter), the parts of a listing it reads
(segments), and the cursor that says where a page stopped."""

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor_core.jobs import (
    JobPublic,
    JobState,
)

# A listing reads at most this many index entries per item asked for.
SCAN_BUDGET_PER_ITEM = 5


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

    def screens_by_error(self) -> bool:
        """Whether a job's last error alone can rule it out (`error_type`, or
        `text` not in its id): a listing then reads that one field of each
        entry first, and whole jobs (payloads included) only for the rest."""
        return self.error_type is not None or bool(self.text)

    def may_match(self, job_id: str, error_json: bytes | None) -> bool:
        """False when the job's id and last error (its record's field) rule it out."""
        error: dict[str, Any] = {}
        if error_json:
            try:
                error = json.loads(error_json)
            except ValueError:
                return True  # let the whole job decide
        if self.error_type is not None and error.get("type") != self.error_type:
            return False
        if self.text:
            needle = self.text.lower()
            message = str(error.get("message", "")).lower()
            return needle in job_id.lower() or needle in message
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
