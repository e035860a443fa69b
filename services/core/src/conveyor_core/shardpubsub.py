"""Sharded pub/sub (Redis 7: SSUBSCRIBE, SPUBLISH), on one node or a cluster.

On a cluster a plain PUBLISH goes to every node; SPUBLISH goes only to the
nodes of the channel's slot, so a shard's events cost the other shards
nothing. redis-py 5's asyncio cluster client has no pub/sub at all, so a
`ShardSubscription` holds one connection of its own, made with the client's
options, to the primary that serves its channel's slot, and sends SSUBSCRIBE
on it. A single Redis 7 takes SSUBSCRIBE and SPUBLISH too: one code path.

The node drops a subscriber when the slot leaves it (failover, resharding:
a `sunsubscribe` push), or dies; SSUBSCRIBE to a node that does not serve
the slot answers MOVED. Each of these is a gap: the subscription reports it,
reads the slot map again and subscribes where the slot is now. As with
`pubsub.Subscription`, it stops by a flag, never by cancelling a read.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection

from conveyor_core.cluster import ClusterClient
from conveyor_core.redis import REDIS_FAULT_ERRORS, RedisClient, describe_redis_error

logger = logging.getLogger(__name__)

# How long one read waits for a message; also the longest a stop takes.
READ_WAIT_S = 0.25
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


class ShardSubscription:
    """Calls `on_message(data)` for each message on the sharded `channel`, and
    `on_gap()` whenever messages may have been missed (connection lost or
    restored, the slot moved)."""

    def __init__(
        self,
        redis: RedisClient,
        channel: str,
        on_message: Callable[[bytes], None],
        on_gap: Callable[[], None],
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.on_message = on_message
        self.on_gap = on_gap
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Set once each time a subscription is confirmed (tests and readiness wait on it).
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"shard subscription {self.channel}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT_S * 3)
        if not done:
            self._task.cancel()

    async def _run(self) -> None:
        delay_s = RECONNECT_FIRST_DELAY_S
        refresh = False
        while not self._stopping.is_set():
            connection: AbstractConnection | None = None
            try:
                connection = await self._connect(refresh)
                await self._subscribe(connection)
                delay_s = RECONNECT_FIRST_DELAY_S
                self.on_gap()  # whatever was sent while we were not subscribed is missed
                await self._read(connection)
            except _RESUBSCRIBE_ERRORS as exc:
                self.subscribed.clear()
                logger.warning(
                    "sharded pub/sub %s: resubscribing: %s", self.channel, describe_redis_error(exc)
                )
                self.on_gap()
                refresh = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_DELAY_S)
            finally:
                if connection is not None:
                    with contextlib.suppress(*REDIS_FAULT_ERRORS):
                        await connection.disconnect()

    async def _connect(self, refresh: bool) -> AbstractConnection:
        """A new connection to the node that serves the channel (per the slot map)."""
        connection: AbstractConnection
        if isinstance(self.redis, ClusterClient):
            await self.redis.initialize()  # the slot map, if not read yet
            if refresh:  # the channel's node was lost: read where its slot is now
                await self.redis.nodes_manager.initialize()
            node = self.redis.get_node_from_key(self.channel)
            if node is None:
                raise SubscriptionMovedError(f"no node serves the slot of {self.channel!r}")
            connection = node.connection_class(**node.connection_kwargs)
        else:
            connection = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()  # type: ignore[no-untyped-call]
        return connection

    async def _subscribe(self, connection: AbstractConnection) -> None:
        await connection.send_command("SSUBSCRIBE", self.channel)
        reply = await self._next(connection, timeout_s=None)
        if not (isinstance(reply, list) and _kind(reply) == "ssubscribe"):
            raise SubscriptionMovedError(f"unexpected reply to SSUBSCRIBE: {reply!r:.100}")
        self.subscribed.set()

    async def _read(self, connection: AbstractConnection) -> None:
        while not self._stopping.is_set():
            reply = await self._next(connection, timeout_s=READ_WAIT_S)
            if reply is None:
                continue
            kind = _kind(reply)
            if kind == "smessage":
                self.on_message(reply[2])
            elif kind == "sunsubscribe":  # the slot left this node
                raise SubscriptionMovedError("the node unsubscribed us: its slot moved")

    @staticmethod
    async def _next(connection: AbstractConnection, timeout_s: float | None) -> Any:
        """The next push or reply; None when none came within `timeout_s`.

        A MOVED (a node that does not serve the slot) raises as a fault.
        """
        return await connection.read_response(timeout=timeout_s)


def _kind(reply: list[Any]) -> str:
    kind = reply[0]
    return kind.decode() if isinstance(kind, bytes) else str(kind)
