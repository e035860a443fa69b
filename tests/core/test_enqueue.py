"""The schedule's range (ready_at_ms) and reading back times stored before it existed."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from conveyor_core.enqueue import MAX_DEFER_S, ScheduleError, ready_at_ms
from conveyor_core.jobs import EARLIEST, LATEST, ms_to_datetime

NOW_MS = 1_800_000_000_000
NOW = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC)


def test_defer_by_s_counts_from_now() -> None:
    assert ready_at_ms(defer_by_s=1.5, at_ms=NOW_MS) == NOW_MS + 1500
    assert ready_at_ms(at_ms=NOW_MS) == NOW_MS


@pytest.mark.parametrize("defer_by_s", [-1, MAX_DEFER_S + 1, float("nan"), float("inf")])
def test_defer_by_s_outside_the_range_names_the_field(defer_by_s: float) -> None:
    with pytest.raises(ScheduleError) as caught:
        ready_at_ms(defer_by_s=defer_by_s, at_ms=NOW_MS)
    assert caught.value.field == "defer_by_s"


@pytest.mark.parametrize(
    "run_at",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        NOW + timedelta(seconds=MAX_DEFER_S + 1),
        datetime(2030, 1, 1),  # no offset
    ],
)
def test_run_at_outside_the_range_names_the_field(run_at: datetime) -> None:
    with pytest.raises(ScheduleError) as caught:
        ready_at_ms(run_at=run_at, at_ms=NOW_MS)
    assert caught.value.field == "run_at"


def test_run_at_in_range_is_kept_and_the_past_means_now() -> None:
    later = NOW + timedelta(days=30)
    assert ready_at_ms(run_at=later, at_ms=NOW_MS) == int(later.timestamp() * 1000)
    assert ready_at_ms(run_at=datetime(288, 9, 4, tzinfo=UTC), at_ms=NOW_MS) == NOW_MS


def test_both_at_once_is_an_error_on_run_at() -> None:
    with pytest.raises(ScheduleError) as caught:
        ready_at_ms(defer_by_s=1, run_at=NOW, at_ms=NOW_MS)
    assert caught.value.field == "run_at"


def test_a_stored_time_outside_datetimes_range_reads_as_its_end() -> None:
    year_10000_ms = 253_402_300_799_000 + 14 * 3_600_000
    assert ms_to_datetime(year_10000_ms) == LATEST
    assert ms_to_datetime(-62_135_596_800_000 - 14 * 3_600_000) == EARLIEST
    assert ms_to_datetime("1000") == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
