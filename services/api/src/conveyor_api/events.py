"""Job change notifications for SSE streams: one pub/sub connection per api process."""

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.pubsub import Subscription


class JobChanges:
    """Which of a multiplexed stream's jobs changed since the stream last looked.

    Starts with every job marked, so the stream's first read sends them all.
    """

    def __init__(self, job_ids: Iterable[str]) -> None:
        self.watching = set(job_ids)
        self._marked = set(self.watching)
        self._woken = asyncio.Event()
        self._woken.set()

    def mark(self, job_id: str) -> None:
        if job_id in self.watching:
            self._marked.add(job_id)
            self._woken.set()

    def mark_all(self) -> None:
        self._marked |= self.watching
        self._woken.set()

    def forget(self, job_id: str) -> None:
        """Stop watching a job (it finished, or it is gone)."""
        self.watching.discard(job_id)
        self._marked.discard(job_id)

    def take(self) -> list[str]:
        """The marked jobs (sorted, so reads are repeatable); clears the marks."""
        self._woken.clear()  # before the caller reads: a later change wakes wait()
        marked, self._marked = self._marked, set()
        return sorted(marked)

    async def wait(self, timeout_s: float) -> bool:
        """Until a watched job changes (True) or `timeout_s` passes (False)."""
        try:
            await asyncio.wait_for(self._woken.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class JobEvents:
    """Wakes the streams watching a job whenever that job changes.

    A notice carries no state: a woken stream re-reads the job, so a notice
    lost while Redis was away costs nothing but a re-read (every stream is
    woken when the connection drops and when it comes back).

    Subscribed only while some stream watches: every job change of every
    replica is published, and an api with no stream open would otherwise
    receive and decode each one (a submit's own notice among them). A
    subscription that starts wakes every stream once it listens, so nothing
    published between a stream's first read and that moment is missed.
    """

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._multiplexed: defaultdict[str, set[JobChanges]] = defaultdict(set)
        self._subscription: Subscription | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Nothing to do until a stream watches (kept for the app's lifespan)."""

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None
        if self._closing:
            await asyncio.wait(self._closing)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of `job_id` (clear it before re-reading)."""
        changed = asyncio.Event()
        self._watchers[job_id].add(changed)
        self._listen()
        try:
            yield changed
        finally:
            self._watchers[job_id].discard(changed)
            if not self._watchers[job_id]:
                del self._watchers[job_id]
            self._stop_listening_if_idle()

    @contextlib.contextmanager
    def watch_many(self, job_ids: Iterable[str]) -> Iterator[JobChanges]:
        """One wake-up for a set of jobs: which of them changed, not one event each."""
        changes = JobChanges(job_ids)
        registered = list(changes.watching)
        for job_id in registered:
            self._multiplexed[job_id].add(changes)
        self._listen()
        try:
            yield changes
        finally:
            for job_id in registered:
                self._multiplexed[job_id].discard(changes)
                if not self._multiplexed[job_id]:
                    del self._multiplexed[job_id]
            self._stop_listening_if_idle()

    def _listen(self) -> None:
        if self._subscription is None:
            self._subscription = Subscription(
                self._redis, keys.EVENTS_CHANNEL, self._notify, on_gap=self._wake_all
            )
            self._subscription.start()

    def _stop_listening_if_idle(self) -> None:
        if self._subscription is None or self._watchers or self._multiplexed:
            return
        subscription, self._subscription = self._subscription, None
        closing = asyncio.get_running_loop().create_task(subscription.stop())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _notify(self, data: bytes) -> None:
        job_id = json.loads(data)["id"]
        for changed in self._watchers.get(job_id, ()):
            changed.set()
        for changes in self._multiplexed.get(job_id, ()):
            changes.mark(job_id)

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()
        for streams in self._multiplexed.values():
            for changes in streams:
                changes.mark_all()
