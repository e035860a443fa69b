"""What a handler raises to run again later without the try counting.

`Snooze`: it waits on something outside (a file not there yet, a partner's
batch still running), not failing. `RateLimited`: a partner said 429 with
Retry-After; besides the job, its job type's (or its key's) jobs are held for
that long, so the platform stops hammering the partner. Either way the job is
`retrying`, due after the delay, its try not counted and kept in its record's
attempts as `snoozed`; a job type's `max_snoozes` caps how often a job may
(the next snooze past it makes it dead), so nothing snoozes for ever.
"""

import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

HoldScope = Literal["type", "key"]

# A job type's default cap on snoozes per job (since its last requeue).
DEFAULT_MAX_SNOOZES = 100


def _delay_s(value: float, name: str) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


class Snooze(Exception):  # noqa: N818 (a request, not an error)
    """Raise (or return) `Snooze(delay_s)` to run again in `delay_s` seconds; the
    try does not count."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        self.delay_s = _delay_s(delay_s, "delay_s")
        self.reason = reason
        super().__init__(reason or f"snoozed for {self.delay_s:g} s")


class RateLimited(Snooze):
    """A partner's rate limit (an HTTP 429 with Retry-After): the job runs again in
    `retry_after_s`, its try not counted, and for that long no other job of its
    type (`scope="type"`) or of its key (`scope="key"`, for types with
    `Limits(key=...)`) starts. A hold needs the type to declare `limits` (an
    empty `Limits()` will do): only limited types are checked by the claim."""

    def __init__(self, retry_after_s: float, scope: HoldScope = "type", reason: str = "") -> None:
        if scope not in ("type", "key"):
            raise ValueError(f"scope must be 'type' or 'key', not {scope!r}")
        self.scope: HoldScope = scope
        super().__init__(_delay_s(retry_after_s, "retry_after_s"), reason)
        self.args = (reason or f"rate limited for {self.delay_s:g} s ({scope})",)

    @property
    def retry_after_s(self) -> float:
        return self.delay_s


def retry_after_s(
    value: str | None, default_s: float = 60.0, *, now_s: float | None = None
) -> float:
    """An HTTP Retry-After header as seconds from now: delay-seconds or an
    HTTP-date (RFC 9110); `default_s` when it is missing or unreadable, 0 for
    a date in the past."""
    if value is None or not value.strip():
        return default_s
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        at = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return default_s
    if at.tzinfo is None:  # an HTTP-date is GMT
        return default_s
    return max(at.timestamp() - (time.time() if now_s is None else now_s), 0.0)


class TooManySnoozesError(RuntimeError):
    """The job snoozed as often as its type allows (`max_snoozes`)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold on a job's type or key, as finish.lua reads it."""

    scope: HoldScope
    ms: int

    def encode(self) -> str:
        return f"{self.scope} {max(self.ms, 1)}"
