"""The worker on a queue over three shards (catalog `Queue(shards=3)`), in
process, on one node and on a real Redis Cluster: it claims from every
shard, takes turns between them, and wakes on any shard's channel."""

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from prometheus_client import REGISTRY

from conveyor_core import keys
from conveyor_core.catalog import Catalog, Queue
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import HoldReason, JobState, now_ms
from conveyor_core.store import Claim, JobStore
from conveyor_worker.flow import ClaimMetrics
from conveyor_worker.worker import ConveyorWorker, resolve_handler
from tests.conftest import PATIENT_S
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")

QUEUE = "sharded"
SHARDS = keys.shard_names(QUEUE, 3)
(FLAKY,) = [replace(t, queue=QUEUE) for t in jobs.JOB_TYPES if t.name == "flaky"]
CATALOG = Catalog([FLAKY], queues=[Queue(QUEUE, shards=3)])


@pytest.fixture
def store(node_or_cluster_redis: ArqRedis) -> JobStore:
    return JobStore(node_or_cluster_redis, CATALOG)


def make_worker(store: JobStore, **options: Any) -> ConveyorWorker:
    return ConveyorWorker(
        redis_pool=store.redis,
        store=store,
        queue_name=QUEUE,
        handlers={FLAKY.name: resolve_handler(FLAKY.handler)},
        instrument=False,
        handle_signals=False,
        **options,
    )


async def states(store: JobStore, job_ids: list[str]) -> Counter[JobState | None]:
    return Counter(job.state if job else None for job in await store.get_many(job_ids))


async def test_a_worker_runs_the_jobs_of_every_shard_and_claims_them_in_turn(
    store: JobStore,
) -> None:
    submitted = [(await enqueue(store, FLAKY, {"fail_times": 0})).job_id for _ in range(60)]
    assert {keys.queue_of(job_id) for job_id in submitted} == set(SHARDS)
    worker = make_worker(store, burst=True, max_jobs=4)
    claimed_from: list[str] = []
    claim = store.claim

    async def noted(shard: str, *args: Any, **kwargs: Any) -> Claim:
        claimed_from.append(shard)
        return await claim(shard, *args, **kwargs)

    store.claim = noted  # type: ignore[method-assign,assignment]
    async with asyncio.timeout(30):
        await worker.main()
    await worker.close()
    assert await states(store, submitted) == Counter({JobState.COMPLETE: 60})
    # Every shard was claimed from, and no shard always came first.
    assert set(claimed_from) == set(SHARDS)
    assert worker.running == {}


async def test_a_wake_up_on_any_shard_starts_its_job_before_the_safety_net_poll(
    store: JobStore,
) -> None:
    worker = make_worker(store, idle_poll_s=60)
    running = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(PATIENT_S):
            while len(worker.wakeups) < len(SHARDS):
                await asyncio.sleep(0.01)
            for wakeup in worker.wakeups:
                await wakeup.subscribed.wait()
            await asyncio.sleep(0.1)  # past the first turn's claim of every shard
        for shard in SHARDS:
            while True:  # a job on this shard (the spread is random)
                job_id = (await enqueue(store, FLAKY, {"fail_times": 0})).job_id
                if keys.queue_of(job_id) == shard:
                    break
            # Well within the 60 s poll: only its shard's wake-up can start it.
            async with asyncio.timeout(PATIENT_S):
                while (
                    job := await store.get(job_id)
                ) is None or job.state is not JobState.COMPLETE:
                    await asyncio.sleep(0.02)
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, PATIENT_S * 2)
        await worker.close()


async def test_a_dead_workers_job_on_a_quiet_shard_is_found_while_another_shard_is_busy(
    store: JobStore,
) -> None:
    """Wake-ups on shard 0 keep the worker from ever timing out; it still
    visits every shard once per idle_poll_s, so a job whose lock lapsed on
    shard 2 (its worker gone) runs again within the lock's TTL and a poll."""
    abandoned = await enqueue(store, FLAKY, {"fail_times": 0}, job_id=keys.job_id_for(SHARDS[2]))
    (claimed,) = (
        await store.claim(
            SHARDS[2], 1, lock_ttl_ms=300, cancelled_retention_ms=60_000, scan_limit=100
        )
    ).jobs
    assert claimed.job_id == abandoned.job_id
    worker = make_worker(store, idle_poll_s=0.5)
    running = asyncio.create_task(worker.main())

    async def busy_shard_zero() -> None:
        while True:
            await enqueue(store, FLAKY, {"fail_times": 0}, job_id=keys.job_id_for(SHARDS[0]))
            await asyncio.sleep(0.1)

    busy = asyncio.create_task(busy_shard_zero())
    try:
        async with asyncio.timeout(PATIENT_S * 2):  # a fault bound: 0.3 s lock, 0.5 s poll
            while (job := await store.get(abandoned.job_id)) is None or (
                job.state is not JobState.COMPLETE
            ):
                await asyncio.sleep(0.05)
        assert job.tries == 2
    finally:
        busy.cancel()
        worker.request_stop()
        await asyncio.wait_for(running, PATIENT_S * 2)
        await worker.close()


def test_the_flow_gauges_add_up_every_shards_last_claim() -> None:
    metrics = ClaimMetrics("gauges-of-shards")

    def held(reason: HoldReason) -> float | None:
        labels = {"queue": "gauges-of-shards", "reason": reason.value}
        return REGISTRY.get_sample_value("conveyor_jobs_held", labels)

    def paused() -> float | None:
        return REGISTRY.get_sample_value("conveyor_queue_paused", {"queue": "gauges-of-shards"})

    metrics.record(Claim([], None, None, {HoldReason.LIMIT: 2}, "q"))
    metrics.record(Claim([], None, None, {HoldReason.LIMIT: 3, HoldReason.RATE: 1}, "q~1"))
    assert (held(HoldReason.LIMIT), held(HoldReason.RATE), paused()) == (5, 1, 0)
    metrics.record(Claim([], None, None, {HoldReason.LIMIT: 1}, "q"))  # shard 0's news
    assert (held(HoldReason.LIMIT), held(HoldReason.RATE)) == (4, 1)
    metrics.record(Claim([], None, now_ms() - 5_000, {}, "q~1"))  # one shard paused so far
    assert paused() == 1


async def test_arqs_client_abort_cancels_a_job_waiting_on_any_shard(
    store: JobStore,
) -> None:
    """arq's abort set names jobs of every shard: each waiting one is cancelled where it waits."""
    # Ids pick their shard at random: 60 leave a shard out once in 10^10 runs (12 did in 2 %).
    deferred = [
        (await enqueue(store, FLAKY, {"fail_times": 0}, defer_by_s=60)).job_id for _ in range(60)
    ]
    assert {keys.queue_of(job_id) for job_id in deferred} == set(SHARDS)
    await store.redis.zadd(abort_jobs_ss, dict.fromkeys(deferred, now_ms()))
    worker = make_worker(store, idle_poll_s=0.1)
    running = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(PATIENT_S):
            while await states(store, deferred) != Counter({JobState.CANCELLED: len(deferred)}):
                await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        await running
        await worker.close()
    assert await store.redis.zcard(abort_jobs_ss) == 0
