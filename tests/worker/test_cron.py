"""The worker's cron entries come from the job types' schedules; settings
override or switch them off; bad schedules are refused."""

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import ArqRedis
from pydantic import ValidationError

from conveyor_core import InvalidScheduleError, Schedule
from conveyor_core.catalog import JobModuleError, load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobState
from conveyor_core.settings import CatalogSettings, RedisSettings
from conveyor_core.store import JobStore
from conveyor_seed.settings import CronSettings
from conveyor_worker.cron import next_run, run_id
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.support import jobs
from tests.worker.conftest import NO_SCHEDULES


def cron_entries(
    redis: ArqRedis, schedules: dict[str, Any] | None = None, queue: str = "arq:queue"
) -> dict[str, list[Schedule]]:
    catalog_settings = CatalogSettings(job_modules=jobs.MODULES, schedules=schedules or {})
    settings = Settings(redis=RedisSettings(), catalog=catalog_settings, queue=queue)
    kwargs = worker_settings(settings, redis, load_catalog(catalog_settings.modules))
    entries: dict[str, list[Schedule]] = {}
    for job_type, schedule in kwargs["schedules"]:
        entries.setdefault(job_type.name, []).append(schedule)
    return entries


def test_the_seeds_declare_a_daily_digest_and_an_hourly_cleanup(redis: ArqRedis) -> None:
    entries = cron_entries(redis)
    (digest,), (cleanup,) = entries["send_digest"], entries["cleanup_temp_uploads"]
    assert (digest.hour, digest.minute, digest.second) == (9, 0, 0)
    assert (cleanup.hour, cleanup.minute) == (None, 30)
    # One id per run, the same on every replica: the finished run's job key, kept
    # with its record, stops a late replica from submitting it again. It names
    # its queue (keys.job_id_for), so its keys share the queue's slot.
    run_at = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    digest_type = load_catalog(jobs.MODULES.split(","))["send_digest"]
    assert run_id(digest_type, run_at) == (
        f"{{{digest_type.queue}}}send_digest:{int(run_at.timestamp() * 1000)}"
    )


def test_settings_override_and_switch_off_schedules(redis: ArqRedis) -> None:
    entries = cron_entries(
        redis,
        {
            "send_digest": [{"second": [0, 30]}, {"hour": 18, "minute": 5}],
            "cleanup_temp_uploads": None,
        },
    )
    assert list(entries) == ["send_digest"]
    first, second = entries["send_digest"]
    assert first.second == (0, 30)
    assert (second.hour, second.minute, second.second) == (18, 5, 0)


def test_the_seeds_own_schedule_settings_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DIGEST_SCHEDULE", '{"second": [0, 30]}')
    monkeypatch.setenv("CONVEYOR_CLEANUP_SCHEDULE", "null")
    assert CronSettings().digest_schedule == {"second": [0, 30]}
    assert CronSettings().cleanup_schedule is None


def test_a_schedule_in_a_time_zone_follows_its_clock(redis: ArqRedis) -> None:
    entries = cron_entries(
        redis, {"send_digest": {"hour": 9, "minute": 0, "timezone": "Europe/Paris"}}
    )
    (digest,) = entries["send_digest"]
    # 09:00 in Paris in summer is 07:00 UTC, the next day.
    assert next_run(digest, datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) == datetime(
        2026, 7, 2, 7, 0, tzinfo=UTC
    )
    assert next_run(digest, datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) == datetime(
        2026, 1, 2, 8, 0, tzinfo=UTC
    )


def test_no_cron_on_a_queue_without_job_types(redis: ArqRedis) -> None:
    with pytest.raises(ValueError, match="no job types on queue"):
        cron_entries(redis, queue="other")


@pytest.mark.parametrize(
    "schedule",
    [
        '{"send_digest": {"hour": 24}}',
        '{"send_digest": {"second": []}}',
        '{"send_digest": {"minute": [5, 60]}}',
        '{"send_digest": {"hours": 1}}',
        '{"send_digest": {"hour": 1, "timezone": "Mars/Olympus"}}',
    ],
)
def test_bad_schedule_settings_are_refused(monkeypatch: pytest.MonkeyPatch, schedule: str) -> None:
    monkeypatch.setenv("CONVEYOR_SCHEDULES", schedule)
    with pytest.raises(ValidationError, match=r"CONVEYOR_SCHEDULES\['send_digest'\]"):
        CatalogSettings()


@pytest.mark.parametrize(
    "fields",
    [{"hour": 24}, {"weekday": 7}, {"minute": []}, {"hour": True}, {"timezone": "Nowhere"}],
)
def test_bad_schedules_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidScheduleError):
        Schedule(**fields)


async def test_scheduled_runs_enter_through_submit_with_their_limit_and_priority(
    redis: ArqRedis, redis_url: str
) -> None:
    """A scheduled type (priority 0, at most one running) on a schedule of every
    second, with runs longer than a second, behind a backlog of priority-5 work."""
    catalog_settings = CatalogSettings(
        job_modules=jobs.MODULES,
        schedules={**NO_SCHEDULES, "ticking": {"second": list(range(60))}},
    )
    settings = Settings(redis=RedisSettings(url=redis_url), catalog=catalog_settings, max_jobs=2)
    catalog = load_catalog(catalog_settings.modules)
    store = JobStore(redis, catalog)
    backlog = [
        (await enqueue(store, catalog["effect"], jobs.Effect(work_s=0.2), priority=5)).job_id
        for _ in range(30)
    ]
    worker = ConveyorWorker(
        **{**worker_settings(settings, redis, catalog), "handle_signals": False}
    )
    running = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(15):
            while await redis.llen("test:completed:ticking") < 2:  # type: ignore[misc]
                await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        await running
        await worker.close()

    run_ids = [i.decode() for i in await redis.lrange("test:completed:ticking", 0, -1)]  # type: ignore[misc]
    runs = [await store.get(run_id) for run_id in run_ids]
    first, second = runs[0], runs[1]
    assert first is not None
    assert second is not None
    ticking = load_catalog(jobs.MODULES.split(","))["ticking"]
    assert all(r.startswith(f"{{{ticking.queue}}}ticking:") for r in run_ids)
    # Its type's priority, not the default, and ahead of the backlog due before it.
    assert (first.priority, first.state) == (0, JobState.COMPLETE)
    backlog_jobs = [await store.get(job_id) for job_id in backlog]
    assert first.started_at is not None
    assert any(
        j is not None and (j.started_at is None or j.started_at > first.started_at)
        for j in backlog_jobs
    )
    # Held by its limit: never two at once, though each run outlasts its second.
    assert await redis.get("test:max_running:ticking") == b"1"
    assert first.finished_at is not None
    assert second.started_at is not None
    assert second.started_at >= first.finished_at
    assert second.started_at.timestamp() * 1000 > int(run_ids[1].rpartition(":")[2]) + 100
    # Each run is in the history: enqueued (through submit) and complete.
    counts: Counter[str] = Counter()
    for key in await redis.keys("conveyor:{arq:queue}:history:*"):
        for field, value in (await redis.hgetall(key)).items():  # type: ignore[misc]
            counts[field.decode()] += int(value)
    assert counts["ticking:enqueued"] >= 2
    assert counts["ticking:complete"] >= 2


def test_a_schedule_on_a_type_whose_payload_needs_fields_is_refused(redis: ArqRedis) -> None:
    with pytest.raises(JobModuleError, match="'flaky' has a schedule, but its payload needs"):
        ConveyorWorker(**worker_settings_with(redis, {"flaky": {"second": 0}}))


def worker_settings_with(redis: ArqRedis, schedules: dict[str, Any]) -> dict[str, Any]:
    catalog_settings = CatalogSettings(job_modules=jobs.MODULES, schedules=schedules)
    settings = Settings(redis=RedisSettings(), catalog=catalog_settings)
    return worker_settings(settings, redis, load_catalog(catalog_settings.modules))
