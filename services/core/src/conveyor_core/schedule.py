"""When a job type runs by itself: cron schedules declared next to the job type.

A schedule is arq's cron fields (month, day, weekday, hour, minute, second),
each one value, several, or None for "every". Times are UTC unless the
schedule names a time zone. The worker turns each schedule into an arq cron
entry whose runs get an id of their own (job name and scheduled time), so
however many worker replicas run, each run is enqueued, and so runs, once.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Each cron field and the values it may take.
FIELD_RANGES: dict[str, tuple[int, int]] = {
    "month": (1, 12),
    "day": (1, 31),
    "weekday": (0, 6),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 59),
}
CronField = Literal["month", "day", "weekday", "hour", "minute", "second"]
CronValue = int | tuple[int, ...] | None


class InvalidScheduleError(ValueError):
    """A schedule that can never be run as written."""


def _values(field: str, value: object) -> CronValue:
    if value is None:
        return None
    several = isinstance(value, list | tuple | set | frozenset)
    values: list[object] = sorted(value) if several else [value]  # type: ignore[call-overload]
    low, high = FIELD_RANGES[field]
    checked = [
        v for v in values if isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
    ]
    if not values or len(checked) != len(values):
        raise InvalidScheduleError(f"{field} must be in {low}..{high}, not {value!r}")
    return tuple(checked) if several else checked[0]


@dataclass(frozen=True, slots=True)
class Schedule:
    """One cron schedule of a job type, e.g. `Schedule(hour=9, minute=0)`: daily at 09:00 UTC.

    A field left None matches every value, except `second`, which is 0 unless
    given (a run a minute, not sixty). `timezone` is an IANA name
    (`"Europe/Paris"`); the run follows that zone's clock, summer time included.
    """

    month: CronValue = None
    day: CronValue = None
    weekday: CronValue = None
    hour: CronValue = None
    minute: CronValue = None
    second: CronValue = 0
    timezone: str | None = None

    def __post_init__(self) -> None:
        for field in FIELD_RANGES:
            object.__setattr__(self, field, _values(field, getattr(self, field)))
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidScheduleError(f"unknown time zone {self.timezone!r}") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    def cron_fields(self) -> dict[str, int | set[int] | None]:
        """The fields as arq's `cron()` takes them (a set for several values)."""
        fields: dict[str, int | set[int] | None] = {}
        for field in FIELD_RANGES:
            value = getattr(self, field)
            fields[field] = set(value) if isinstance(value, tuple) else value
        return fields

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "Schedule":
        """From JSON settings: `{"hour": 6, "minute": 0, "timezone": "Europe/Paris"}`."""
        unknown = set(data) - {*FIELD_RANGES, "timezone"}
        if unknown:
            raise InvalidScheduleError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def __str__(self) -> str:
        parts = [f"{f}={getattr(self, f)}" for f in FIELD_RANGES if getattr(self, f) is not None]
        return " ".join([*parts, self.timezone or "UTC"])
