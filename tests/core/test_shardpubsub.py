"""Sharded pub/sub, on a single Redis and on a real cluster, through a failover."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from arq.connections import ArqRedis

from conveyor_core.cluster import ClusterClient
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisClient, create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.shardpubsub import ShardChannels, ShardSubscription, channel_slot, spublish
from tests.support.cluster import LocalCluster
from tests.support.ports import sockets_to
from tests.support.redis_faults import frozen

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


async def test_a_subscription_leaves_a_frozen_node(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    channel = CHANNELS[2]
    heard = Heard()
    subscription = ShardSubscription(
        cluster_redis, channel, heard.on_message, heard.on_gap, ping_every_s=1.0
    )
    subscription.start()
    old = redis_cluster.primary_of(channel)
    replica = redis_cluster.replica_of(old)
    try:
        await asyncio.wait_for(subscription.subscribed.wait(), WAIT_S)
        await _publish_until_heard(cluster_redis, channel, b"before", heard)
        # Frozen, its connections stay open: only silence tells.
        old.freeze()
        await asyncio.to_thread(redis_cluster.wait_for_promotion, replica, old)
        await _publish_until_heard(cluster_redis, channel, b"after", heard)
    finally:
        old.thaw()
        await subscription.stop()
    assert heard.gaps >= 3


@dataclass
class HeardOn:
    """What a ShardChannels heard, by channel."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, channel: str, data: bytes) -> None:
        self.messages.append((channel, data))
        self.changed.set()

    def on_subscribed(self, channel: str) -> None:
        self.confirmed.append(channel)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            self.changed.clear()
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise AssertionError(f"never happened: {self}")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left_s)


# Two jobs' channels of one queue: one slot (their ids' tag).
QUEUE_CHANNELS = ["conveyor:events:{arq:queue}1", "conveyor:events:{arq:queue}2"]


async def _subscribers(client: RedisClient, channel: str) -> int:
    """How many connections subscribe `channel` (on the node of its slot)."""
    reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
    if isinstance(reply, dict):  # a cluster client's answer, by node
        reply = next(iter(reply.values()))
    return int(reply[1])


async def test_channels_come_and_go_on_one_connection(any_redis: RedisClient) -> None:
    first, second = QUEUE_CHANNELS
    assert channel_slot(any_redis, first) == channel_slot(any_redis, second)
    heard = HeardOn()
    channels = ShardChannels(any_redis, heard.on_message, heard.on_subscribed)
    channels.start()
    try:
        channels.add(first)
        channels.add(second)
        await heard.until(lambda: set(heard.confirmed) == {first, second})
        assert await spublish(any_redis, first, b"1") == 1
        assert await spublish(any_redis, second, b"2") == 1
        await heard.until(lambda: len(heard.messages) == 2)
        assert sorted(heard.messages) == [(first, b"1"), (second, b"2")]

        channels.discard(first)
        deadline = time.monotonic() + WAIT_S
        while await _subscribers(any_redis, first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await spublish(any_redis, first, b"left") == 0
        assert await spublish(any_redis, second, b"still") == 1
        await heard.until(lambda: (second, b"still") in heard.messages)

        channels.discard(second)  # nothing left to hear: the connection closes
        while await _subscribers(any_redis, second) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await spublish(any_redis, second, b"gone") == 0
        assert (first, b"left") not in heard.messages
    finally:
        await channels.stop()


async def test_channels_are_subscribed_again_after_a_failover(
    cluster_redis: ClusterClient, redis_cluster: LocalCluster
) -> None:
    heard = HeardOn()
    channels = ShardChannels(cluster_redis, heard.on_message, heard.on_subscribed)
    channels.start()
    try:
        for channel in QUEUE_CHANNELS:
            channels.add(channel)
        await heard.until(lambda: set(heard.confirmed) == set(QUEUE_CHANNELS))
        redis_cluster.kill_primary(redis_cluster.primary_of(QUEUE_CHANNELS[0]))
        # Each confirmed again where the slot is now: a listener re-reads its jobs.
        await heard.until(lambda: len(heard.confirmed) >= 4)
        assert sorted(heard.confirmed[2:]) == sorted(QUEUE_CHANNELS)
        deadline = time.monotonic() + WAIT_S
        while (QUEUE_CHANNELS[1], b"after") not in heard.messages:
            with suppress(*REDIS_FAULT_ERRORS):
                await spublish(cluster_redis, QUEUE_CHANNELS[1], b"after")
            assert time.monotonic() < deadline, heard
            await asyncio.sleep(0.1)
    finally:
        await channels.stop()


async def test_a_stop_while_redis_hangs_returns_with_its_socket_closed(
    own_redis: RedisProcess,
) -> None:
    """Stopped while its handshake waits on a frozen Redis (which accepts the
    connection and answers nothing), the subscription is cancelled; `stop()`
    returns once the cancel has ended it, its socket closed. (It used to
    return at the cancel: a caller that then closed its event loop could leave
    the socket to the garbage collector, a ResourceWarning in a later test.)"""
    port = urlsplit(own_redis.url).port
    assert port is not None
    client = create_redis(RedisSettings(url=own_redis.url, socket_timeout_s=30))
    try:
        with frozen(own_redis.url):
            subscription = ShardSubscription(
                client, CHANNELS[0], Heard().on_message, Heard().on_gap
            )
            subscription.start()
            deadline = time.monotonic() + WAIT_S
            while sockets_to(port) == 0:  # connected; its handshake waits
                assert time.monotonic() < deadline, "the subscription never connected"
                await asyncio.sleep(0.02)
            await subscription.stop()
            assert sockets_to(port) == 0
    finally:
        await client.aclose()
