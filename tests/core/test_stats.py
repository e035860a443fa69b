"""Counts since the last take: job outcomes per type from the history, and a module's own."""

import json

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.enqueue import enqueue
from conveyor_core.history import MINUTE_MS, history_key, read_history
from conveyor_core.jobs import now_ms
from conveyor_core.stats import outcomes_since, take_counts
from conveyor_core.store import JobStore
from tests.support import jobs

FLAKY = next(job_type for job_type in jobs.JOB_TYPES if job_type.name == "flaky")
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 10}


async def test_take_counts_gives_each_count_to_one_run(redis: ArqRedis) -> None:
    await redis.hincrby(keys.STATS_PENDING, "documents:processed", 2)  # type: ignore[misc]
    await redis.hincrby(keys.STATS_PENDING, "documents:failed", 1)  # type: ignore[misc]
    first = await take_counts(redis, "run-1", [])
    assert first.by_name == {"documents": {"processed": 2, "failed": 1}}
    await redis.hincrby(keys.STATS_PENDING, "documents:processed", 1)  # type: ignore[misc]
    # A retry of the same run reports the same numbers; the new count waits.
    assert (await take_counts(redis, "run-1", [])).by_name == first.by_name
    second = await take_counts(redis, "run-2", [])
    assert second.by_name == {"documents": {"processed": 1}}
    assert (await take_counts(redis, "run-3", [])).by_name == {}


async def run_one_try(store: JobStore, outcome: str) -> None:
    submitted = await enqueue(store, FLAKY, {"fail_times": 0})
    assert (await store.claim(FLAKY.queue, 1, **CLAIM)).jobs
    if outcome == "complete":
        assert await store.complete(FLAKY, submitted.job_id, "null")
    else:
        assert await store.dead(FLAKY, submitted.job_id, "{}")


async def test_job_outcomes_come_from_the_history_each_in_one_run(redis: ArqRedis) -> None:
    store = JobStore(redis)
    submitted = await enqueue(store, FLAKY, {"fail_times": 0})
    job_id = submitted.job_id
    assert (await store.claim(FLAKY.queue, 1, **CLAIM)).jobs
    assert await store.retry_later(FLAKY, job_id, now_ms(), "{}")
    assert (await store.claim(FLAKY.queue, 1, **CLAIM)).jobs
    assert await store.complete(FLAKY, job_id, "null")
    # A refused end of a try (the job is no longer in progress) counts nothing.
    assert not await store.dead(FLAKY, job_id, "{}")
    assert not await redis.exists(keys.STATS_PENDING)  # no second count per job
    counts = await take_counts(redis, "run-1", [FLAKY.queue])
    assert counts.by_name == {"flaky": {"complete": 1, "retrying": 1}}
    # Later in the same minute: only what came since; a retry of run-1 is unchanged.
    await run_one_try(store, "dead")
    assert (await take_counts(redis, "run-1", [FLAKY.queue])).by_name == counts.by_name
    assert (await take_counts(redis, "run-2", [FLAKY.queue])).by_name == {"flaky": {"dead": 1}}
    assert (await take_counts(redis, "run-3", [FLAKY.queue])).by_name == {}


async def test_a_take_counts_the_rest_of_the_minute_it_stopped_in_and_those_after(
    redis: ArqRedis,
) -> None:
    minute = now_ms() // MINUTE_MS
    # As finish.lua writes them: two minutes ago, one minute ago, and this one.
    await redis.hset(history_key("q", minute - 2), mapping={"t:complete": 3, "t:wait_ms": 9})  # type: ignore[misc]
    await redis.hset(history_key("q", minute - 1), mapping={"t:dead": 1, "t:enqueued": 7})  # type: ignore[misc]
    await redis.hset(history_key("q", minute), mapping={"t:complete": 1})  # type: ignore[misc]
    first = await take_counts(redis, "run-1", ["q"])
    assert first.by_name == {"t": {"complete": 4, "dead": 1}}
    # Two more in the minute the take stopped in, one in the next.
    await redis.hincrby(history_key("q", minute), "t:complete", 2)  # type: ignore[misc]
    await redis.hincrby(history_key("q", minute + 1), "t:retrying", 1)  # type: ignore[misc]
    mark = await redis.get(keys.STATS_TAKEN)
    assert mark is not None
    # What the next take counts when it runs in the next minute.
    counts, _ = await outcomes_since(redis, ["q"], json.loads(mark), (minute + 1) * MINUTE_MS)
    assert counts == {"t:complete": 2, "t:retrying": 1}


async def test_minutes_written_under_the_former_outcome_names_read_as_todays(
    redis: ArqRedis,
) -> None:
    """During an upgrade old workers write `completed` and `retried`, new ones
    `complete` and `retrying`, into the same minutes; a take left by an old
    version marks what it counted as `retried`."""
    minute = now_ms() // MINUTE_MS
    await redis.hset(  # type: ignore[misc]
        history_key("q", minute - 1),
        mapping={"t:completed": 2, "t:retried": 1, "t:complete": 1, "t:dead": 1},
    )
    await redis.hset(history_key("q", minute), mapping={"t:retried": 2, "t:retrying": 1})  # type: ignore[misc]
    history = await read_history(redis, "q", 2, until_ms=minute * MINUTE_MS)
    assert [m.counts for m in history] == [
        {"t": {"complete": 3, "retrying": 1, "dead": 1, "started": 5}},
        {"t": {"retrying": 3, "started": 3}},
    ]
    # The old version's take had counted 2 of this minute's retries.
    old_mark = {"minute": minute, "counts": {"q": {"t:retried": 2}}}
    counts, new_mark = await outcomes_since(redis, ["q"], old_mark, minute * MINUTE_MS)
    assert counts == {"t:retrying": 1}
    assert new_mark["counts"] == {"q": {"t:retrying": 3}}
