"""The worker's cron entries come from settings; bad schedules are refused."""

import pytest
from arq.connections import ArqRedis
from pydantic import ValidationError

from conveyor_core.catalog import load_catalog
from conveyor_core.settings import CronSettings, RedisSettings
from conveyor_worker.settings import Settings
from conveyor_worker.worker import worker_settings


def cron_entries(
    redis: ArqRedis, cron: CronSettings, queue: str = "arq:queue"
) -> dict[str, object]:
    settings = Settings(redis=RedisSettings(), cron=cron, queue=queue)
    kwargs = worker_settings(settings, redis, load_catalog())
    return {entry.name: entry for entry in kwargs["cron_jobs"]}


def test_default_schedules_are_daily_digest_and_hourly_cleanup(redis: ArqRedis) -> None:
    entries = cron_entries(redis, CronSettings())
    digest, cleanup = entries["send_digest"], entries["cleanup_temp_uploads"]
    assert (digest.hour, digest.minute, digest.second) == (9, 0, 0)  # type: ignore[attr-defined]
    assert (cleanup.hour, cleanup.minute) == (None, 30)  # type: ignore[attr-defined]
    # Unique ids per run; the finished run's job key, kept with its record, stops
    # a late replica from enqueuing it again (no arq result beside the record).
    assert digest.unique  # type: ignore[attr-defined]
    assert digest.keep_result_s == 0  # type: ignore[attr-defined]
    assert digest.max_tries == 6  # type: ignore[attr-defined]  # the wrapper decides at 5


def test_schedules_from_the_environment(redis: ArqRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DIGEST_SCHEDULE", '{"second": [0, 30]}')
    monkeypatch.setenv("CONVEYOR_CLEANUP_SCHEDULE", "null")
    entries = cron_entries(redis, CronSettings())
    assert list(entries) == ["send_digest"]
    assert entries["send_digest"].second == [0, 30]  # type: ignore[attr-defined]


def test_no_cron_on_a_queue_without_the_cron_job_types(redis: ArqRedis) -> None:
    with pytest.raises(ValueError, match="no job types on queue"):
        cron_entries(redis, CronSettings(), queue="other")


@pytest.mark.parametrize(
    "schedule", ['{"hour": 24}', '{"second": []}', '{"minute": [5, 60]}', '{"hours": 1}']
)
def test_bad_schedules_are_refused(monkeypatch: pytest.MonkeyPatch, schedule: str) -> None:
    monkeypatch.setenv("CONVEYOR_DIGEST_SCHEDULE", schedule)
    with pytest.raises(ValidationError, match=r"digest_schedule|CONVEYOR_DIGEST_SCHEDULE"):
        CronSettings()
