"""arq's client on a real Redis Cluster (3 primaries, 3 replicas): which of its
calls keep to one slot, as the migration page's table says.

Conveyor's services do not run on a cluster yet; its store does. arq's client,
a client of one node that follows no redirect, is pointed at the primary that
serves arq's default queue, and its jobs end through Conveyor's store on the
cluster, as a worker ends them."""

from typing import cast

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from arq.jobs import JobStatus
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ResponseError

from conveyor_core import keys
from conveyor_core.catalog import DEFAULT_QUEUE
from conveyor_core.cluster import ClusterClient
from conveyor_core.store import JobStore
from conveyor_seed import CREATE_TASK
from tests.support.arq_client import conveyor_arq_pool

pytestmark = pytest.mark.xdist_group("cluster")

CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


def primary_of(cluster: ClusterClient, key: str) -> ClusterNode:
    node = cluster.get_node_from_key(key)
    assert node is not None
    return node


async def test_arqs_client_keeps_to_its_jobs_slot_when_the_id_names_its_queue(
    cluster_redis: ClusterClient,
) -> None:
    assert CREATE_TASK.queue == DEFAULT_QUEUE
    await cluster_redis.initialize()
    node = primary_of(cluster_redis, DEFAULT_QUEUE)
    # The premise of the abort row: the abort set lives on another primary.
    assert primary_of(cluster_redis, abort_jobs_ss).name != node.name
    store = JobStore(cast(ArqRedis, cluster_redis))  # the store takes either (cluster.py)
    redis = await conveyor_arq_pool(f"redis://{node.host}:{node.port}/0")
    try:
        # arq's own ids spread the job's keys over slots: refused.
        with pytest.raises(ResponseError, match=r"MOVED|CROSSSLOT"):
            await redis.enqueue_job("create_task", sleep_s=0)

        job_id = keys.job_id_for(DEFAULT_QUEUE)
        job = await redis.enqueue_job("create_task", sleep_s=0, _job_id=job_id)
        assert job is not None
        assert await job.status() is JobStatus.queued
        assert [j.job_id for j in (await store.claim(DEFAULT_QUEUE, 1, **CLAIM)).jobs] == [job_id]
        assert await job.status() is JobStatus.in_progress
        assert await store.complete(CREATE_TASK, job_id, '{"answer": 42}')
        assert await job.status() is JobStatus.complete
        assert await job.result(timeout=5) == {"answer": 42}
        info = await job.result_info()
        assert info is not None
        assert (info.success, info.function, info.kwargs, info.job_try) == (
            True,
            "create_task",
            {"sleep_s": 0},
            1,
        )

        waiting = await redis.enqueue_job(
            "create_task", sleep_s=0, _job_id=keys.job_id_for(DEFAULT_QUEUE)
        )
        assert waiting is not None
        with pytest.raises(ResponseError, match="MOVED"):
            await waiting.abort(timeout=1)
    finally:
        await redis.aclose()
