"""The memory check: an evicting Redis is warned about, exported, and makes services unready."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from conveyor_core.cluster import ClusterClient
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.redis import create_redis
from conveyor_core.redis_health import RedisHealth
from conveyor_core.settings import RedisSettings
from tests.support.cluster import ClusterNodeProcess, LocalCluster
from tests.support.redis_faults import configured


@pytest.fixture
async def own_client(own_redis: RedisProcess) -> AsyncIterator[ArqRedis]:
    client = create_redis(RedisSettings(url=own_redis.url))
    yield client
    await client.aclose()


def policy_metric(policy: str) -> float | None:
    return REGISTRY.get_sample_value("conveyor_redis_maxmemory_policy_info", {"policy": policy})


async def test_noeviction_is_ready_and_quiet(
    own_client: ArqRedis, own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    health = RedisHealth(own_client, RedisSettings(url=own_redis.url), "api")
    with configured(own_redis.url, maxmemory="64mb"):
        memory = await health.check()
    assert memory.policy == "noeviction"
    assert memory.max_bytes == 64 * 1024 * 1024
    assert 0 < memory.used_bytes < memory.max_bytes
    assert health.not_ready_reason is None
    assert policy_metric("noeviction") == 1
    assert REGISTRY.get_sample_value("conveyor_redis_memory_max_bytes") == memory.max_bytes
    assert REGISTRY.get_sample_value("conveyor_redis_memory_used_bytes") == memory.used_bytes
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_evicting_policy_warns_and_is_not_ready(
    own_client: ArqRedis, own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    health = RedisHealth(own_client, RedisSettings(url=own_redis.url), "worker")
    with configured(own_redis.url, maxmemory_policy="allkeys-lru"):
        await health.check()
        await health.check()  # said once, not at every check
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "allkeys-lru" in warnings[0].getMessage()
    assert "refuses to be ready" in warnings[0].getMessage()
    assert health.not_ready_reason is not None
    assert "allkeys-lru" in health.not_ready_reason
    assert policy_metric("allkeys-lru") == 1
    assert policy_metric("noeviction") is None  # one policy at a time
    assert health.public()["evicts"] is True


async def test_the_explicit_opt_in_stays_ready_but_still_warns(
    own_client: ArqRedis, own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RedisSettings(url=own_redis.url, allow_eviction=True)
    health = RedisHealth(own_client, settings, "api")
    with configured(own_redis.url, maxmemory_policy="volatile-lru"):
        await health.check()
    assert health.not_ready_reason is None
    assert any("volatile-lru" in r.getMessage() for r in caplog.records)
    assert policy_metric("volatile-lru") == 1


async def test_the_periodic_check_follows_a_change_of_policy(
    own_client: ArqRedis, own_redis: RedisProcess
) -> None:
    settings = RedisSettings(url=own_redis.url, memory_check_interval_s=0.1)
    health = RedisHealth(own_client, settings, "api")
    health.start()
    try:
        with configured(own_redis.url, maxmemory_policy="allkeys-random"):
            await wait_until(lambda: health.not_ready_reason is not None)
        await wait_until(lambda: health.not_ready_reason is None)
    finally:
        await health.stop()


async def test_the_periodic_check_survives_redis_going_away(
    own_client: ArqRedis, own_redis: RedisProcess
) -> None:
    settings = RedisSettings(url=own_redis.url, memory_check_interval_s=0.1)
    health = RedisHealth(own_client, settings, "api")
    own_redis.stop()
    health.start()
    try:
        await asyncio.sleep(0.3)
        assert health.memory is None
        own_redis.start()
        await wait_until(lambda: health.memory is not None)
    finally:
        await health.stop()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


@contextmanager
def configured_node(node: ClusterNodeProcess, **config: str) -> Iterator[None]:
    """CONFIG SET on one node of the shared cluster, put back afterwards."""
    with node.client() as direct:
        before = {
            name: direct.config_get(name.replace("_", "-"))[name.replace("_", "-")]
            for name in config
        }
        for name, value in config.items():
            direct.config_set(name.replace("_", "-"), value)
        try:
            yield
        finally:
            for name, value in before.items():
                direct.config_set(name.replace("_", "-"), value)


async def test_a_cluster_reads_as_its_fullest_primary(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    health = RedisHealth(cluster_redis, RedisSettings(url=redis_cluster.seed_url), "api")
    primary = redis_cluster.primaries()[1]
    with configured_node(primary, maxmemory="64mb"):
        memory = await health.check()
    assert memory.policy == "noeviction"
    assert memory.max_bytes == 64 * 1024 * 1024  # the one primary with a limit
    assert health.not_ready_reason is None


async def test_one_evicting_primary_makes_the_cluster_unready(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    health = RedisHealth(cluster_redis, RedisSettings(url=redis_cluster.seed_url), "worker")
    with configured_node(redis_cluster.primaries()[2], maxmemory_policy="allkeys-lru"):
        memory = await health.check()
    assert memory.policy == "allkeys-lru"
    assert health.not_ready_reason is not None
    # Replicas are not asked: a replica's own policy does not evict the cluster's data.
    with configured_node(redis_cluster.replicas()[0], maxmemory_policy="allkeys-lru"):
        assert (await health.check()).policy == "noeviction"
