"""The quota of outstanding jobs kept per api key (lua/quota.lua, in a slot
of its own): a place taken before the submit and given back when it creates
nothing, pruned lazily of ended jobs, a bounded number per call, against a
real Redis."""

import asyncio

import pytest
from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.keys import outstanding_key
from conveyor_core.store import QUOTA_PRUNE_PER_CALL, JobStore, Quota, Submitted
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    """Each test on one node, then on a cluster."""
    return node_or_cluster_redis


QUOTA = QUOTA_PRUNE_PER_CALL + 4


async def submit(store: JobStore, quota: Quota, idempotency_key: str | None = None) -> Submitted:
    return await enqueue(
        store,
        CREATE_TASK,
        CreateTask(sleep_s=0),
        submitted_by="q",
        quota=quota,
        idempotency_key=idempotency_key,
    )


async def members(redis: ArqRedis) -> set[str]:
    return {m.decode() for m in await redis.zrange(outstanding_key("q"), 0, -1)}


async def test_a_full_quota_checks_a_bounded_number_of_jobs_and_takes_turns(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    quota = Quota(outstanding_key("q"), QUOTA)
    oldest = [(await submit(store, quota)).job_id for _ in range(QUOTA_PRUNE_PER_CALL)]
    await asyncio.sleep(0.002)  # scored (by ms) after the oldest, whatever their ids
    newest = [(await submit(store, quota)).job_id for _ in range(QUOTA - len(oldest))]
    ids = oldest + newest
    # The newest jobs end; the oldest, which a full submit checks first, do not.
    for job_id in newest:
        assert (await store.cancel(job_id))[0] == "cancelled_now"
    await asyncio.sleep(0.002)  # the checks below are timed after every submit above
    # This submit checks only the oldest QUOTA_PRUNE_PER_CALL, all still waiting:
    # refused, nothing written, and they go to the back...
    refused = await submit(store, quota)
    assert refused.over_quota
    assert not refused.created
    assert await redis.zscore(CREATE_TASK.queue, refused.job_id) is None
    assert await members(redis) == set(ids)
    await asyncio.sleep(0.002)
    # ... so the next checks the ones that ended first, drops them and is let in.
    admitted = await submit(store, quota)
    assert admitted.created
    assert await members(redis) == {*oldest, admitted.job_id}


async def test_a_job_whose_records_are_gone_no_longer_counts(redis: ArqRedis) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    quota = Quota(outstanding_key("q"), 1)
    first = await submit(store, quota, idempotency_key="k")
    assert (await submit(store, quota)).over_quota
    # Its Idempotency-Key still finds it (not counted again), under the key's own scope.
    again = await submit(store, quota, idempotency_key="k")
    assert (again.created, again.job_id) == (False, first.job_id)
    assert await redis.exists(keys.idempotency_key(CREATE_TASK.queue, CREATE_TASK.name, "k", "q"))
    await redis.delete(f"arq:job:{first.job_id}")  # expired, as arq's key does
    assert (await submit(store, quota)).created
