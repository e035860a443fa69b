"""Checkpoints against a real Redis: a cursor is bounded, fenced by the try's
token, kept in the record through every end of a try that runs again, and read
once by the next try; `iterate` skips what a checkpoint says is done."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.checkpoint import (
    MAX_CURSOR_BYTES,
    Checkpoint,
    CheckpointError,
    Interrupted,
    new_checkpoint,
)
from conveyor_core.context import JobContext
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobPublic, JobState, now_ms
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.metrics import STALE_CALLS
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import Claimed, JobStore, Reported
from tests.support import jobs
from tests.support.locks import lapse_lock

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    """Each test on one node, then on a cluster."""
    return node_or_cluster_redis


CATALOG = load_catalog(jobs.MODULES.split(","))
ITERATING = CATALOG["iterating"]
QUEUE = ITERATING.queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}
ERROR = '{"type": "E", "message": "m"}'


@pytest.fixture
def store(redis: ArqRedis) -> JobStore:
    return JobStore(redis, CATALOG)


async def submitted(store: JobStore, items: int = 10) -> str:
    return (await enqueue(store, ITERATING, jobs.Items(items=items))).job_id


async def claimed(store: JobStore) -> Claimed:
    (job,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    return job


def context(store: JobStore, job: Claimed, *, stopping: bool = False) -> JobContext:
    return JobContext(
        job_id=job.job_id,
        job_try=job.job_try,
        job_type=ITERATING,
        store=store,
        catalog=CATALOG,
        fence=Fence(QUEUE, job.job_id, job.token),
        stop_requested=lambda: stopping,
    )


async def record(store: JobStore, job_id: str) -> JobPublic:
    job = await store.get(job_id)
    assert job is not None
    return job


def test_a_cursor_must_be_json_and_small() -> None:
    with pytest.raises(CheckpointError, match="must be JSON"):
        new_checkpoint({1, 2}, done=None, total=None, job_try=1)
    with pytest.raises(CheckpointError, match="must be JSON"):
        new_checkpoint(float("nan"), done=None, total=None, job_try=1)
    big = "x" * MAX_CURSOR_BYTES
    with pytest.raises(CheckpointError, match=r"4098 bytes as JSON, over the 4096 kept"):
        new_checkpoint(big, done=None, total=None, job_try=1)
    with pytest.raises(ValueError, match="done must be >= 0"):
        new_checkpoint(1, done=-1, total=None, job_try=1)
    with pytest.raises(ValueError, match="total must be an int"):
        new_checkpoint(1, done=1, total=True, job_try=1)
    fits = new_checkpoint("x" * (MAX_CURSOR_BYTES - 2), done=3, total=4, job_try=2)
    assert Checkpoint.decode(fits.encode()) == fits
    assert fits.percent == 75


def test_an_unreadable_checkpoint_reads_as_none() -> None:
    for raw in (None, b"", b"not json", b'{"cursor": 1}', b"[1]"):
        assert Checkpoint.decode(raw) is None


async def test_a_checkpoint_is_saved_only_while_in_progress_with_its_progress(
    store: JobStore, redis: ArqRedis
) -> None:
    job_id = await submitted(store)
    early = new_checkpoint(1, done=1, total=4, job_try=1)
    assert await store.save_checkpoint(job_id, early) is Reported.NOT_RUNNING
    assert not await redis.exists(keys.job_key(job_id))  # nothing written for a waiting job
    job = await claimed(store)
    ctx = context(store, job)
    assert await ctx.last_checkpoint() is None

    before_ms = now_ms()
    assert await ctx.checkpoint({"page": "p-2"}, done=50, total=200)

    saved = await record(store, job_id)
    assert saved.checkpoint is not None
    assert (saved.checkpoint.cursor, saved.checkpoint.done, saved.checkpoint.total) == (
        {"page": "p-2"},
        50,
        200,
    )
    assert saved.checkpoint.try_number == 1
    assert saved.checkpoint.saved_at.timestamp() * 1000 >= before_ms - 1
    assert (saved.progress.percent, saved.version) == (25, 3)  # derived from done/total
    # Without counts, progress is left as it was.
    assert await ctx.checkpoint({"page": "p-3"})
    again = await record(store, job_id)
    assert (again.progress.percent, again.checkpoint and again.checkpoint.cursor) == (
        25,
        {"page": "p-3"},
    )
    # The try knows its own checkpoint without reading it back.
    assert (await ctx.last_checkpoint()) == Checkpoint.decode(
        await redis.hget(keys.job_key(job_id), "checkpoint")  # type: ignore[misc]
    )


async def test_a_cursor_over_the_bound_is_refused_before_redis(store: JobStore) -> None:
    job_id = await submitted(store)
    ctx = context(store, await claimed(store))
    with pytest.raises(CheckpointError, match="save a position"):
        await ctx.checkpoint(list(range(2000)))
    assert (await record(store, job_id)).checkpoint is None


async def test_a_stale_trys_checkpoint_is_refused_and_counted(
    store: JobStore, redis: ArqRedis
) -> None:
    job_id = await submitted(store)
    stale = await claimed(store)
    await lapse_lock(redis, QUEUE, job_id)  # claimed again
    live = await claimed(store)
    assert await context(store, live).checkpoint(7, done=7)
    before = await redis.hgetall(keys.job_key(job_id))  # type: ignore[misc]
    refused = STALE_CALLS.labels(QUEUE, "checkpoint")
    count = refused._value.get()

    stale_ctx = context(store, stale)
    assert not await stale_ctx.checkpoint(3, done=3)

    assert refused._value.get() == count + 1
    assert await redis.hgetall(keys.job_key(job_id)) == before  # type: ignore[misc]
    cursor = (await record(store, job_id)).checkpoint
    assert cursor is not None
    assert cursor.cursor == 7
    # A stale try's loop stops at its first refused checkpoint.
    with pytest.raises(Interrupted):
        async for _ in stale_ctx.iterate(range(20), every=1):
            pass


@pytest.mark.parametrize("end", ["retry", "put_back", "snooze", "timeout_dead"])
async def test_the_checkpoint_survives_every_end_of_a_try_and_the_next_try_reads_it(
    store: JobStore, redis: ArqRedis, end: str
) -> None:
    job_id = await submitted(store)
    first = await claimed(store)
    assert await context(store, first).checkpoint(40, done=40, total=100)
    token = first.token
    if end == "retry":
        assert await store.retry_later(ITERATING, job_id, now_ms(), ERROR, token=token)
    elif end == "put_back":
        assert await store.put_back(ITERATING, job_id, token=token)
    elif end == "snooze":
        assert await store.snooze(ITERATING, job_id, now_ms(), token=token)
    else:  # dead, then requeued by an operator: it resumes too
        assert await store.dead(ITERATING, job_id, ERROR, token=token)
        assert (await store.requeue(job_id, {}))[0] == "requeued"
    waiting = await record(store, job_id)
    assert waiting.checkpoint is not None
    assert waiting.checkpoint.cursor == 40

    second = await claimed(store)
    ctx = context(store, second)
    last = await ctx.last_checkpoint()
    assert last is not None
    assert (last.cursor, last.done, last.total, last.job_try) == (40, 40, 100, 1)


async def test_a_completed_job_keeps_its_last_checkpoint_for_its_retention(
    store: JobStore,
) -> None:
    job_id = await submitted(store)
    job = await claimed(store)
    assert await context(store, job).checkpoint(10, done=10, total=10)
    assert await store.complete(ITERATING, job_id, "10", token=job.token)
    done = await record(store, job_id)
    assert done.state is JobState.COMPLETE
    assert done.checkpoint is not None
    assert done.checkpoint.cursor == 10


async def test_requeue_may_start_over(store: JobStore) -> None:
    job_id = await submitted(store)
    job = await claimed(store)
    assert await context(store, job).checkpoint(5, done=5)
    assert await store.dead(ITERATING, job_id, ERROR, token=job.token)

    outcome, requeued = await store.requeue(job_id, {}, start_over=True)

    assert outcome == "requeued"
    assert requeued is not None
    assert requeued.checkpoint is None
    assert await context(store, await claimed(store)).last_checkpoint() is None


async def test_iterate_saves_every_n_items_and_the_next_try_skips_what_is_done(
    store: JobStore, redis: ArqRedis
) -> None:
    job_id = await submitted(store)
    first = context(store, await claimed(store))
    seen: list[int] = []

    async def fail_at_25() -> None:
        async for n in first.iterate(range(50), every=10):
            if n == 25:
                raise RuntimeError("item 25")
            seen.append(n)

    with pytest.raises(RuntimeError, match="item 25"):
        await fail_at_25()
    assert seen == list(range(25))
    saved = (await record(store, job_id)).checkpoint
    assert saved is not None
    assert (saved.cursor, saved.done, saved.total) == (20, 20, 50)
    assert (await record(store, job_id)).progress.percent == 40

    await lapse_lock(redis, QUEUE, job_id)  # as if its worker died
    second = context(store, await claimed(store))
    rest = [n async for n in second.iterate(range(50), every=10)]

    assert rest == list(range(20, 50))
    done = (await record(store, job_id)).checkpoint
    assert done is not None
    assert (done.cursor, done.done, done.try_number) == (50, 50, 2)
    assert (await record(store, job_id)).progress.percent == 100


async def _rows(count: int) -> AsyncIterator[dict[str, Any]]:
    for n in range(count):
        yield {"id": n * 10}


async def test_iterate_by_key_resumes_after_the_last_key_done(store: JobStore) -> None:
    job_id = await submitted(store)
    first = context(store, await claimed(store))
    async for row in first.iterate(_rows(10), every=3, key=lambda row: row["id"]):
        if row["id"] == 70:
            break
    saved = (await record(store, job_id)).checkpoint
    assert saved is not None
    assert (saved.cursor, saved.done, saved.total) == (50, 6, None)

    await store.put_back(ITERATING, job_id)
    second = context(store, await claimed(store))
    rest = [row["id"] async for row in second.iterate(_rows(10), every=3, key=lambda r: r["id"])]
    assert rest == [60, 70, 80, 90]
    done = (await record(store, job_id)).checkpoint
    assert done is not None
    assert (done.cursor, done.done) == (90, 10)


async def test_iterate_hands_the_job_back_at_a_shutdown_after_the_current_item(
    store: JobStore,
) -> None:
    job_id = await submitted(store)
    stopping = False
    ctx = context(store, await claimed(store))
    ctx.stop_requested = lambda: stopping
    seen = []

    async def work() -> None:
        nonlocal stopping
        async for n in ctx.iterate(range(1000), every=100):
            seen.append(n)
            stopping = n == 123  # a stop signal while it works on item 123

    with pytest.raises(Interrupted):
        await work()
    assert seen == list(range(124))
    saved = (await record(store, job_id)).checkpoint
    assert saved is not None
    assert (saved.cursor, saved.done) == (124, 124)


async def test_iterate_hands_the_job_back_once_its_budget_is_spent(store: JobStore) -> None:
    job_id = await submitted(store)
    ctx = context(store, await claimed(store))
    with pytest.raises(Interrupted):
        async for _ in ctx.iterate(range(1000), every=100, budget_s=0):
            pass
    saved = (await record(store, job_id)).checkpoint
    assert saved is not None
    assert saved.cursor == 1


async def test_iterate_refuses_a_bad_every_or_a_cursor_it_cannot_resume_from(
    store: JobStore,
) -> None:
    await submitted(store)
    ctx = context(store, await claimed(store))
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        async for _ in ctx.iterate([1], every=0):
            pass
    assert await ctx.checkpoint("page-7")  # saved by hand
    with pytest.raises(CheckpointError, match=r"'page-7'.* is not a count of items done"):
        async for _ in ctx.iterate([1, 2]):
            pass


async def test_a_try_reads_the_checkpoint_once_and_only_when_asked(
    own_redis: RedisProcess,
) -> None:
    """Counted on a Redis of its own: the shared one serves other tests too."""
    client = create_redis(RedisSettings(url=own_redis.url))
    try:
        store = JobStore(client, CATALOG)
        await submitted(store)
        ctx = context(store, await claimed(store))
        before = await _hgets(client)
        assert not ctx.stopping  # asks nothing of Redis
        assert await _hgets(client) == before

        assert await ctx.last_checkpoint() is None
        assert await ctx.last_checkpoint() is None
        assert await _hgets(client) == before + 1
    finally:
        await client.aclose()


async def _hgets(redis: ArqRedis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))
