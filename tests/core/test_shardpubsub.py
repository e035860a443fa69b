"""Sharded pub/sub, on a single Redis and on a real cluster, through a failover."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import pytest
from arq.connections import ArqRedis

from conveyor_core.cluster import ClusterClient
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisClient
from conveyor_core.shardpubsub import ShardSubscription, spublish
from tests.support.cluster import LocalCluster

pytestmark = pytest.mark.xdist_group("cluster")

# Channels whose slots lie on each of the cluster's three primaries.
CHANNELS = ["conveyor:events:{a}", "conveyor:events:{b}", "conveyor:events:{c}"]
WAIT_S = 10.0


@dataclass
class Heard:
    messages: list[bytes] = field(default_factory=list)
    gaps: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, data: bytes) -> None:
        self.messages.append(data)
        self.arrived.set()

    def on_gap(self) -> None:
        self.gaps += 1


@asynccontextmanager
async def subscribed(
    client: RedisClient, channel: str
) -> AsyncIterator[tuple[ShardSubscription, Heard]]:
    heard = Heard()
    subscription = ShardSubscription(client, channel, heard.on_message, heard.on_gap)
    subscription.start()
    try:
        await asyncio.wait_for(subscription.subscribed.wait(), WAIT_S)
        yield subscription, heard
    finally:
        await subscription.stop()


async def _publish_until_heard(
    client: RedisClient, channel: str, data: bytes, heard: Heard
) -> None:
    """SPUBLISH until the subscriber has it (a resubscribe may still be under way)."""
    deadline = time.monotonic() + 20.0
    while data not in heard.messages:
        with suppress(*REDIS_FAULT_ERRORS):
            await spublish(client, channel, data)
        if time.monotonic() > deadline:
            raise AssertionError(f"{data!r} never arrived on {channel}")
        await asyncio.sleep(0.1)


async def test_a_single_redis_takes_sharded_pub_sub(redis: ArqRedis) -> None:
    async with subscribed(redis, CHANNELS[0]) as (_, heard):
        assert heard.gaps == 1  # the first subscription: whatever came before is missed
        assert await spublish(redis, CHANNELS[0], b"one") == 1
        await asyncio.wait_for(heard.arrived.wait(), WAIT_S)
        assert await spublish(redis, CHANNELS[1], b"elsewhere") == 0
    assert heard.messages == [b"one"]


async def test_each_channel_is_heard_on_its_own_shard(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    assert len({redis_cluster.primary_of(channel).port for channel in CHANNELS}) == 3
    for node in redis_cluster.primaries():
        with node.client() as direct:
            direct.config_resetstat()
    async with (
        subscribed(cluster_redis, CHANNELS[0]) as (_, first),
        subscribed(cluster_redis, CHANNELS[2]) as (_, third),
    ):
        assert [await spublish(cluster_redis, c, c.encode()) for c in CHANNELS] == [1, 0, 1]
        await asyncio.wait_for(first.arrived.wait(), WAIT_S)
        await asyncio.wait_for(third.arrived.wait(), WAIT_S)
    assert first.messages == [CHANNELS[0].encode()]
    assert third.messages == [CHANNELS[2].encode()]
    # Each SPUBLISH went to its channel's primary: one each, none sent twice.
    for node in redis_cluster.primaries():
        with node.client() as direct:
            stats = direct.info("commandstats")
        assert stats["cmdstat_spublish"]["calls"] == 1


async def test_a_subscription_follows_its_slot_through_a_failover(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    channel = CHANNELS[1]
    async with subscribed(cluster_redis, channel) as (subscription, heard):
        await _publish_until_heard(cluster_redis, channel, b"before", heard)
        old = redis_cluster.primary_of(channel)
        new = redis_cluster.kill_primary(old)
        await _publish_until_heard(cluster_redis, channel, b"after", heard)
        assert subscription.subscribed.is_set()
        assert cluster_redis.get_node_from_key(channel).port == new.port  # type: ignore[union-attr]
    # The lost connection was a gap, and so was the new subscription.
    assert heard.gaps >= 3
    assert heard.messages[0] == b"before"
    assert heard.messages[-1] == b"after"


async def test_a_stop_ends_the_subscription_by_itself(cluster_redis: ClusterClient) -> None:
    async with subscribed(cluster_redis, CHANNELS[0]) as (subscription, _):
        pass
    # Ended by its flag within the stop's wait, not cancelled after it.
    assert subscription._task is not None
    assert subscription._task.done()
    assert not subscription._task.cancelled()
    assert await spublish(cluster_redis, CHANNELS[0], b"nobody") == 0
