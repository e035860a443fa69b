"""Job change notifications for SSE streams: one pub/sub connection per api process."""

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.redis import REDIS_DOWN_ERRORS

logger = logging.getLogger(__name__)

PUBSUB_WAIT_S = 5.0
RECONNECT_DELAY_S = 1.0


class JobEvents:
    """Wakes the streams watching a job whenever that job changes.

    A notice carries no state: a woken stream re-reads the job, so a notice
    lost while Redis was away costs nothing but a re-read (every stream is
    woken when the connection drops and when it comes back).
    """

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of `job_id` (clear it before re-reading)."""
        changed = asyncio.Event()
        self._watchers[job_id].add(changed)
        try:
            yield changed
        finally:
            self._watchers[job_id].discard(changed)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(keys.EVENTS_CHANNEL)
                self._wake_all()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=PUBSUB_WAIT_S
                    )
                    if message is not None:
                        job_id = json.loads(message["data"])["id"]
                        for changed in self._watchers.get(job_id, ()):
                            changed.set()
            except REDIS_DOWN_ERRORS as exc:
                logger.warning("job events: redis unreachable, reconnecting: %s", exc)
                self._wake_all()  # each stream re-reads, finds Redis down and ends
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(*REDIS_DOWN_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
