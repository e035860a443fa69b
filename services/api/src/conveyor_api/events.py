"""Job change notifications for SSE streams: one pub/sub connection per api process."""

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.pubsub import Subscription


class JobEvents:
    """Wakes the streams watching a job whenever that job changes.

    A notice carries no state: a woken stream re-reads the job, so a notice
    lost while Redis was away costs nothing but a re-read (every stream is
    woken when the connection drops and when it comes back).
    """

    def __init__(self, redis: ArqRedis) -> None:
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscription = Subscription(
            redis, keys.EVENTS_CHANNEL, self._notify, on_gap=self._wake_all
        )

    def start(self) -> None:
        self._subscription.start()

    async def stop(self) -> None:
        await self._subscription.stop()

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

    def _notify(self, data: bytes) -> None:
        for changed in self._watchers.get(json.loads(data)["id"], ()):
            changed.set()

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()
