"""Checkpoints through `Processor.process()` against a real Redis: a try cut
short by an error, its timeout, a shutdown or its budget leaves the job where
its last checkpoint says, and the next try resumes there."""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_worker.policy import Stop
from conveyor_worker.process import Processor, Try
from conveyor_worker.worker import resolve_handler
from tests.support import jobs

CATALOG = load_catalog(jobs.MODULES.split(","))
QUEUE = CATALOG["iterating"].queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[JobStore]:
    """A store on a client made as the worker makes its own: with a socket
    timeout on each read, redis-py 5 lets a cancellation that lands during a
    command go unnoticed now and then, and these tests cancel tries."""
    client = create_redis(RedisSettings(url=redis_url), timeout_each_read=False)
    yield JobStore(client, CATALOG)
    await client.aclose()


@pytest.fixture
def processor(store: JobStore) -> Processor:
    handlers = {t.name: resolve_handler(t.handler) for t in CATALOG.for_queue(QUEUE)}
    return Processor(QUEUE, store, CATALOG, handlers, instrument=False)


async def claim_due(store: JobStore, timeout_s: float = 5.0) -> Try:
    """The next job to fall due, claimed."""
    deadline = time.monotonic() + timeout_s
    while not (found := (await store.claim(QUEUE, 1, **CLAIM)).jobs):
        assert time.monotonic() < deadline, "no job fell due"
        await asyncio.sleep(0.02)
    (claimed,) = found
    return Try(claimed, Fence(QUEUE, claimed.job_id, claimed.token))


async def record(store: JobStore, job_id: str) -> JobPublic:
    job = await store.get(job_id)
    assert job is not None
    return job


async def items_done(redis: ArqRedis, job_id: str) -> list[int]:
    """The items the job's tries finished, in order (recorded by the job)."""
    return [int(n) for n in await redis.lrange(f"test:items:{job_id}", 0, -1)]  # type: ignore[misc]


async def test_a_retry_after_an_error_resumes_from_the_last_checkpoint(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    payload = jobs.Items(items=50, every=10, fail_at=25)
    job_id = (await enqueue(store, CATALOG["iterating"], payload)).job_id

    assert await processor.process(await claim_due(store)) is JobState.RETRYING
    assert await items_done(redis, job_id) == list(range(25))
    failed = await record(store, job_id)
    assert failed.checkpoint is not None
    assert (failed.checkpoint.cursor, failed.progress.percent) == (20, 40)

    assert await processor.process(await claim_due(store)) is JobState.COMPLETE

    job = await record(store, job_id)
    assert (job.tries, job.result) == (2, 30)  # the second try did items 20 to 49
    counts = Counter(await items_done(redis, job_id))
    assert sorted(counts) == list(range(50))
    # Done twice: only what the failed try did past its last checkpoint.
    assert sorted(n for n, c in counts.items() if c > 1) == list(range(20, 25))


async def test_a_try_that_times_out_is_retried_from_its_checkpoint(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    # A second's timeout per try; the whole loop needs about three.
    payload = jobs.Items(items=300, every=20, step_s=0.01)
    job_id = (await enqueue(store, CATALOG["iterating_brief"], payload)).job_id

    states: list[JobState | None] = []
    while not states or states[-1] is JobState.RETRYING:
        assert len(states) < 10, states
        states.append(await processor.process(await claim_due(store)))

    assert states[-1] is JobState.COMPLETE
    job = await record(store, job_id)
    assert job.tries >= 3
    assert [a.outcome for a in job.attempts][:-1] == ["retrying"] * (job.tries - 1)
    counts = Counter(await items_done(redis, job_id))
    assert sorted(counts) == list(range(300))
    # Each cut-short try redid at most the items since its last checkpoint.
    assert sum(counts.values()) - 300 < 20 * (job.tries - 1)


async def test_a_shutdown_hands_the_job_back_after_the_current_item_not_counted(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    payload = jobs.Items(items=200, every=50, step_s=0.005)
    job_id = (await enqueue(store, CATALOG["iterating"], payload)).job_id
    stopping = False
    processor.stopping = lambda: stopping
    running = asyncio.create_task(processor.process(await claim_due(store)))
    while len(await items_done(redis, job_id)) < 70:
        await asyncio.sleep(0.005)
    stopping = True  # the worker got a stop signal: the handler has its chance

    assert await running is JobState.QUEUED
    back = await record(store, job_id)
    assert (back.state, back.tries) == (JobState.QUEUED, 0)
    assert back.checkpoint is not None
    done_before = await items_done(redis, job_id)
    assert back.checkpoint.cursor == len(done_before)  # not rounded down to every 50

    stopping = False
    assert await processor.process(await claim_due(store)) is JobState.COMPLETE
    assert (await record(store, job_id)).tries == 1
    assert await items_done(redis, job_id) == list(range(200))  # each item once


async def test_a_try_cut_short_with_no_chance_resumes_from_its_last_checkpoint(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    payload = jobs.Items(items=200, every=50, step_s=0.005)
    job_id = (await enqueue(store, CATALOG["iterating"], payload)).job_id
    try_ = await claim_due(store)
    running = asyncio.create_task(processor.process(try_))
    while len(await items_done(redis, job_id)) < 70:
        await asyncio.sleep(0.005)
    try_.stop = Stop.SHUTDOWN  # as the worker cuts a try short past its shutdown wait
    running.cancel()

    assert await running is JobState.QUEUED
    back = await record(store, job_id)
    assert back.checkpoint is not None
    assert back.checkpoint.cursor == 50
    cut_at = len(await items_done(redis, job_id))

    assert await processor.process(await claim_due(store)) is JobState.COMPLETE
    counts = Counter(await items_done(redis, job_id))
    assert sorted(counts) == list(range(200))
    assert sorted(n for n, c in counts.items() if c > 1) == list(range(50, cut_at))


async def test_a_budget_hands_the_job_back_in_turns_without_counting_tries(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    payload = jobs.Items(items=100, every=1000, step_s=0.005, budget_s=0.1)
    job_id = (await enqueue(store, CATALOG["iterating"], payload)).job_id

    states: list[JobState | None] = []
    while not states or states[-1] is JobState.QUEUED:
        assert len(states) < 20, states
        states.append(await processor.process(await claim_due(store)))

    assert states[-1] is JobState.COMPLETE
    assert len(states) >= 3
    assert (await record(store, job_id)).tries == 1
    assert await items_done(redis, job_id) == list(range(100))
