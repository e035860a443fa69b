"""A write that waits for replicas (WAIT), on a real cluster and on a single Redis."""

import pytest
import redis as redis_sync
from arq.connections import ArqRedis

from conveyor_core.cluster import ClusterClient
from conveyor_core.replicas import call_and_wait
from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.xdist_group("cluster")

WRITE = "return redis.call('incr', KEYS[1])"
KEY = "conveyor:{b}:counter"
TIMEOUT_MS = 200


async def test_a_write_returns_once_its_replica_holds_it(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    script = cluster_redis.register_script(WRITE)
    for node in redis_cluster.primaries():  # NOSCRIPT first: it loads itself and runs once
        with node.client() as direct:
            direct.script_flush()
    done = await call_and_wait(
        cluster_redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=TIMEOUT_MS
    )
    assert (done.reply, done.wanted, done.acknowledged, done.short) == (1, 1, 1, False)
    # The replica of the key's primary has it already: no wait for replication here.
    replica = redis_cluster.replica_of(redis_cluster.primary_of(KEY))
    with redis_sync.Redis(port=replica.port, single_connection_client=True) as direct:
        direct.execute_command("READONLY")
        assert direct.get(KEY) == b"1"


async def test_with_its_replica_down_a_write_says_it_is_short(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    script = cluster_redis.register_script(WRITE)
    redis_cluster.replica_of(redis_cluster.primary_of(KEY)).stop()
    done = await call_and_wait(
        cluster_redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=TIMEOUT_MS
    )
    # The primary took it (the write is not undone), but no replica holds it.
    assert (done.reply, done.acknowledged, done.short) == (1, 0, True)
    assert await cluster_redis.get(KEY) == b"1"


async def test_without_replicas_wanted_nothing_waits(cluster_redis: ClusterClient) -> None:
    script = cluster_redis.register_script(WRITE)
    done = await call_and_wait(cluster_redis, script, keys=[KEY], args=[], replicas=0, timeout_ms=1)
    assert (done.reply, done.wanted, done.short) == (1, 0, False)


async def test_a_single_redis_has_no_replica_to_wait_for(redis: ArqRedis) -> None:
    script = redis.register_script(WRITE)
    await redis.script_flush()
    done = await call_and_wait(redis, script, keys=[KEY], args=[], replicas=1, timeout_ms=50)
    assert (done.reply, done.acknowledged, done.short) == (1, 0, True)
    done = await call_and_wait(redis, script, keys=[KEY], args=[], replicas=0, timeout_ms=50)
    assert (done.reply, done.short) == (2, False)
