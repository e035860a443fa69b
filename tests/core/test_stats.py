"""Counts since the last take: job outcomes per type, bumped with the change they count."""

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import now_ms
from conveyor_core.stats import take_counts
from conveyor_core.store import JobStore
from tests.support import jobs

FLAKY = next(job_type for job_type in jobs.JOB_TYPES if job_type.name == "flaky")


async def test_take_counts_gives_each_count_to_one_run(redis: ArqRedis) -> None:
    await redis.hincrby(keys.STATS_PENDING, "flaky:complete", 2)  # type: ignore[misc]
    await redis.hincrby(keys.STATS_PENDING, "flaky:retried", 1)  # type: ignore[misc]
    first = await take_counts(redis, "run-1")
    assert first.by_name == {"flaky": {"complete": 2, "retried": 1}}
    await redis.hincrby(keys.STATS_PENDING, "flaky:dead", 1)  # type: ignore[misc]
    # A retry of the same run reports the same numbers; the new count waits.
    assert (await take_counts(redis, "run-1")).by_name == first.by_name
    second = await take_counts(redis, "run-2")
    assert second.by_name == {"flaky": {"dead": 1}}
    assert (await take_counts(redis, "run-3")).by_name == {}


async def test_job_outcomes_are_counted_with_the_end_of_the_try(redis: ArqRedis) -> None:
    store = JobStore(redis)
    submitted = await enqueue(store, FLAKY, {"fail_times": 0})
    job_id = submitted.job_id
    claim = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 10}
    assert (await store.claim(FLAKY.queue, 1, **claim)).jobs
    assert await store.retry_later(FLAKY, job_id, now_ms(), "{}")
    assert (await store.claim(FLAKY.queue, 1, **claim)).jobs
    assert await store.complete(FLAKY, job_id, "null")
    # A refused end of a try (the job is no longer in progress) counts nothing.
    assert not await store.dead(FLAKY, job_id, "{}")
    counts = await take_counts(redis, "run-1")
    assert counts.by_name == {"flaky": {"complete": 1, "retried": 1}}
