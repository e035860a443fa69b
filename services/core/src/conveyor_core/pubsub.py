"""A pub/sub subscription that survives Redis outages and stops on request.

Used by the api (job change notices for SSE) and the worker (wake-ups). It
stops by a flag rather than by task cancellation: redis-py's pub/sub read can
swallow a cancellation, which would hang a shutdown.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from arq.connections import ArqRedis

from conveyor_core.redis import REDIS_DOWN_ERRORS

logger = logging.getLogger(__name__)

# How long one read waits for a message; also the longest a stop takes.
READ_WAIT_S = 0.25
RECONNECT_DELAY_S = 1.0


class Subscription:
    """Calls `on_message(data)` for each message on `channel`, and `on_gap()`
    whenever messages may have been missed (connection lost or restored)."""

    def __init__(
        self,
        redis: ArqRedis,
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

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"subscription {self.channel}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT_S * 3)
        if not done:
            self._task.cancel()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.on_gap()
                while not self._stopping.is_set():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=READ_WAIT_S
                    )
                    if message is not None:
                        self.on_message(message["data"])
            except REDIS_DOWN_ERRORS as exc:
                logger.warning("pub/sub %s: redis unreachable, reconnecting: %s", self.channel, exc)
                self.on_gap()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(*REDIS_DOWN_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
