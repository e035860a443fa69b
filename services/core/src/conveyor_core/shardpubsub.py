"""Sharded pub/sub (Redis 7: SSUBSCRIBE, SPUBLISH), on one node or a cluster.

On a cluster a plain PUBLISH goes to every node; SPUBLISH goes only to the
nodes of the channel's slot, so a shard's events cost the other shards
nothing. redis-py 5's asyncio cluster client has no pub/sub at all, so a
`ShardSubscription` holds one connection of its own, made with the client's
options, to the primary that serves its channel's slot, and sends SSUBSCRIBE
on it. A single Redis 7 takes SSUBSCRIBE and SPUBLISH too: one code path.

The node drops a subscriber when the slot leaves it (failover, resharding:
a `sunsubscribe` push), or dies; SSUBSCRIBE to a node that does not serve
the slot answers MOVED; a node that stops answering (frozen, cut off) is
found by a PING after some silence. Each of these is a gap: the subscription reports it,
reads the slot map again and subscribes where the slot is now. As with
`pubsub.Subscription`, it stops by a flag, never by cancelling a read.
"""

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor_core.cluster import ClusterClient
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisClient, describe_redis_error
from conveyor_core.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# How long one read waits for a message; also the longest a stop takes.
READ_WAIT_S = 0.25
# How long SSUBSCRIBE may take to be confirmed.
SUBSCRIBE_WAIT_S = 2.0
# A subscription that hears nothing this long sends a PING; one that then
# hears nothing as long again is lost (its node frozen, or cut off without a reset).
PING_EVERY_S = 5.0
# After a lost subscription, the first retry comes this soon, then less often.
RECONNECT_FIRST_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 1.0


class SubscriptionMovedError(Exception):
    """The node no longer serves the channel's slot (MOVED, or it dropped us)."""


# Each of these loses the subscription, and each clears by itself.
_RESUBSCRIBE_ERRORS: tuple[type[Exception], ...] = (*REDIS_FAULT_ERRORS, SubscriptionMovedError)


async def spublish(client: RedisClient, channel: str, data: bytes | str) -> int:
    """Publish `data` on the sharded `channel`; how many subscribers got it."""
    received: int = await client.execute_command("SPUBLISH", channel, data)
    return received


class _ShardListener(ABC):
    """What `ShardSubscription` and `ShardChannels` share: the task, its stop
    by flag, and the loop that connects to the node of the slot, serves the
    connection until it is lost, reports the loss and retries with a growing
    delay on the slot map read again."""

    def __init__(self, redis: RedisClient, *, ping_every_s: float, task_name: str) -> None:
        self.redis = redis
        self.ping_every_s = ping_every_s
        self._task_name = task_name
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_delay_s = RECONNECT_FIRST_DELAY_S

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT_S * 3)
        if not done:  # held in a connect or a handshake by a Redis that hangs
            await cancel_and_wait(self._task, timeout_s=READ_WAIT_S * 3)

    @abstractmethod
    async def _channel_to_follow(self) -> str | None:
        """The channel whose node to connect to; None to look again (stopping, say)."""

    @abstractmethod
    async def _serve(self, connection: AbstractConnection) -> None:
        """Subscribe and read on `connection` until stopping (or nothing is left to hear)."""

    @abstractmethod
    def _lost(self) -> None:
        """The subscription is lost (a fault, a moved slot, a silent node)."""

    def _reset_retry_delay(self) -> None:
        """The connection served (a subscription confirmed, or all heard): the
        next loss is retried soon again."""
        self._retry_delay_s = RECONNECT_FIRST_DELAY_S

    async def _run(self) -> None:
        refresh = False
        while not self._stopping.is_set():
            channel = await self._channel_to_follow()
            if channel is None:
                continue
            connection: AbstractConnection | None = None
            try:
                connection = await connect_to_channel_node(self.redis, channel, refresh=refresh)
                refresh = False
                await self._serve(connection)
                self._reset_retry_delay()
            except _RESUBSCRIBE_ERRORS as exc:
                logger.warning("%s: resubscribing: %s", self._task_name, describe_redis_error(exc))
                self._lost()
                refresh = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._retry_delay_s):
                        await self._stopping.wait()
                self._retry_delay_s = min(self._retry_delay_s * 2, RECONNECT_MAX_DELAY_S)
            finally:
                if connection is not None:
                    with contextlib.suppress(*REDIS_FAULT_ERRORS):
                        await connection.disconnect()


class _SilenceWatch:
    """Reads one connection; a PING after `ping_every_s` of silence, and the
    node counts as lost when the PING goes unanswered as long again."""

    def __init__(self, ping_every_s: float) -> None:
        self.ping_every_s = ping_every_s
        self.heard_s = time.monotonic()
        self.pinged = False

    async def read(self, connection: AbstractConnection) -> Any:
        """The next push or reply; None when none came within READ_WAIT_S.

        A MOVED (a node that does not serve the slot) raises as a fault.
        """
        reply = await connection.read_response(timeout=READ_WAIT_S)
        if reply is not None:
            self.heard_s, self.pinged = time.monotonic(), False
            return reply
        silent_s = time.monotonic() - self.heard_s
        if silent_s > 2 * self.ping_every_s:
            raise RedisTimeoutError(f"no answer to PING in {silent_s:.1f} s")
        if silent_s > self.ping_every_s and not self.pinged:
            await connection.send_command("PING")
            self.pinged = True
        return None


class ShardSubscription(_ShardListener):
    """Calls `on_message(data)` for each message on the sharded `channel`, and
    `on_gap()` whenever messages may have been missed (connection lost or
    restored, the slot moved)."""

    def __init__(
        self,
        redis: RedisClient,
        channel: str,
        on_message: Callable[[bytes], None],
        on_gap: Callable[[], None],
        *,
        ping_every_s: float = PING_EVERY_S,
    ) -> None:
        super().__init__(
            redis, ping_every_s=ping_every_s, task_name=f"shard subscription {channel}"
        )
        self.channel = channel
        self.on_message = on_message
        self.on_gap = on_gap
        # Set once each time a subscription is confirmed (tests and readiness wait on it).
        self.subscribed = asyncio.Event()

    async def _channel_to_follow(self) -> str:
        return self.channel

    def _lost(self) -> None:
        self.subscribed.clear()
        self.on_gap()

    async def _serve(self, connection: AbstractConnection) -> None:
        await self._subscribe(connection)
        self._reset_retry_delay()
        self.on_gap()  # whatever was sent while we were not subscribed is missed
        await self._read(connection)

    async def _subscribe(self, connection: AbstractConnection) -> None:
        await connection.send_command("SSUBSCRIBE", self.channel)
        reply = await connection.read_response(timeout=SUBSCRIBE_WAIT_S)
        if reply is None:
            raise RedisTimeoutError(f"SSUBSCRIBE {self.channel} not confirmed in time")
        if not (isinstance(reply, list) and _kind(reply) == "ssubscribe"):
            raise SubscriptionMovedError(f"unexpected reply to SSUBSCRIBE: {reply!r:.100}")
        self.subscribed.set()

    async def _read(self, connection: AbstractConnection) -> None:
        silence = _SilenceWatch(self.ping_every_s)
        while not self._stopping.is_set():
            reply = await silence.read(connection)
            if reply is None:
                continue
            kind = _kind(reply)
            if kind == "smessage":
                self.on_message(reply[2])
            elif kind == "sunsubscribe":  # the slot left this node
                raise SubscriptionMovedError("the node unsubscribed us: its slot moved")


async def connect_to_channel_node(
    redis: RedisClient, channel: str, *, refresh: bool
) -> AbstractConnection:
    """A new connection to the node that serves `channel` (per the slot map,
    read again first when `refresh`: the channel's node was lost)."""
    connection: AbstractConnection
    if isinstance(redis, ClusterClient):
        await redis.initialize()  # the slot map, if not read yet
        if refresh:
            await redis.reread_slot_map()
        node = redis.get_node_from_key(channel)
        if node is None:
            raise SubscriptionMovedError(f"no node serves the slot of {channel!r}")
        connection = node.connection_class(**node.connection_kwargs)
    else:
        connection = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    await connection.connect()  # type: ignore[no-untyped-call]
    return connection


def channel_slot(redis: RedisClient, channel: str) -> int | None:
    """The slot of `channel` on a cluster; None on one node (every channel goes
    on one connection there)."""
    if isinstance(redis, ClusterClient):
        slot: int = redis.keyslot(channel)
        return slot
    return None


class ShardChannels(_ShardListener):
    """A changing set of sharded channels of one slot, on one connection.

    `add` and `discard` take effect within a read's wait (READ_WAIT_S). Calls
    `on_message(channel, data)` for each message, and `on_subscribed(channel)`
    each time a subscription is confirmed (again after a reconnection), so a
    listener re-reads whatever it may have missed; `on_lost()` when the
    connection is lost (each failed attempt while it stays lost). On a cluster every channel
    must be in one slot (`channel_slot`); on one node any channel goes. With
    nothing to hear it holds no connection. A lost connection, a moved slot
    or a silent node is a gap, as for `ShardSubscription`: it reconnects where
    the slot is now and subscribes every channel again.
    """

    def __init__(
        self,
        redis: RedisClient,
        on_message: Callable[[str, bytes], None],
        on_subscribed: Callable[[str], None],
        *,
        on_lost: Callable[[], None] = lambda: None,
        ping_every_s: float = PING_EVERY_S,
    ) -> None:
        super().__init__(redis, ping_every_s=ping_every_s, task_name="shard channels")
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost
        self.wanted: set[str] = set()
        self._changed = asyncio.Event()

    def add(self, channel: str) -> None:
        self.wanted.add(channel)
        self._changed.set()

    def discard(self, channel: str) -> None:
        self.wanted.discard(channel)
        self._changed.set()

    async def stop(self) -> None:
        self._changed.set()  # out of an idle wait
        await super().stop()

    async def _channel_to_follow(self) -> str | None:
        if not self.wanted:
            self._changed.clear()
            await self._changed.wait()  # nothing to hear: no connection at all
            return None
        # On a cluster every channel is in one slot: any of them names its node.
        return next(iter(self.wanted))

    def _lost(self) -> None:
        self.on_lost()  # a listener may look now (and meet the fault itself)

    async def _serve(self, connection: AbstractConnection) -> None:
        """Follow `wanted` on this connection and read, until it is empty (or a fault)."""
        subscribed: set[str] = set()
        # Channels we left whose SUNSUBSCRIBE is not confirmed yet; any other
        # `sunsubscribe` is the node dropping us (the slot moved).
        leaving: set[str] = set()
        silence = _SilenceWatch(self.ping_every_s)
        while not self._stopping.is_set():
            self._changed.clear()
            if added := self.wanted - subscribed:
                await connection.send_command("SSUBSCRIBE", *sorted(added))
                subscribed |= added
            if removed := subscribed - self.wanted:
                await connection.send_command("SUNSUBSCRIBE", *sorted(removed))
                subscribed -= removed
                leaving |= removed
            if not subscribed and not leaving:
                return
            reply = await silence.read(connection)
            if not isinstance(reply, list) or len(reply) < 2:
                continue  # nothing within the wait, or a PONG
            kind, channel = _kind(reply), _text(reply[1])
            if kind == "smessage":
                self.on_message(channel, reply[2])
            elif kind == "ssubscribe":
                self.on_subscribed(channel)
            elif kind == "sunsubscribe":
                if channel not in leaving:
                    raise SubscriptionMovedError(
                        f"the node unsubscribed {channel!r}: its slot moved"
                    )
                leaving.discard(channel)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _kind(reply: list[Any]) -> str:
    kind = reply[0]
    return kind.decode() if isinstance(kind, bytes) else str(kind)
