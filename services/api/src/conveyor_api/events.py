"""Job change notices for SSE streams: one pub/sub connection per api process."""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator

from arq.connections import ArqRedis
from redis.asyncio.client import PubSub

from conveyor_core import keys
from conveyor_core.pubsub import READ_WAIT_S, RECONNECT_DELAY_S
from conveyor_core.redis import REDIS_DOWN_ERRORS

logger = logging.getLogger(__name__)


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

    Each job has its own channel, and this process subscribes to the channels
    of the jobs its streams watch, on one pub/sub connection: a replica that
    serves no stream hears nothing and spends nothing. A notice carries no
    state: a woken stream re-reads the job, so a notice lost while Redis was
    away, or sent before a subscription took effect, costs nothing but a
    re-read (every stream is woken when its subscription is confirmed, and
    when the connection drops and comes back).
    """

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._multiplexed: defaultdict[str, set[JobChanges]] = defaultdict(set)
        self._watched_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job events")

    async def stop(self) -> None:
        self._stopping.set()
        self._watched_changed.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT_S * 3)
        if not done:
            self._task.cancel()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of `job_id` (clear it before re-reading)."""
        changed = asyncio.Event()
        self._watchers[job_id].add(changed)
        self._watched_changed.set()
        try:
            yield changed
        finally:
            self._watchers[job_id].discard(changed)
            if not self._watchers[job_id]:
                del self._watchers[job_id]
                self._watched_changed.set()

    @contextlib.contextmanager
    def watch_many(self, job_ids: Iterable[str]) -> Iterator[JobChanges]:
        """One wake-up for a set of jobs: which of them changed, not one event each."""
        changes = JobChanges(job_ids)
        registered = list(changes.watching)
        for job_id in registered:
            self._multiplexed[job_id].add(changes)
        self._watched_changed.set()
        try:
            yield changes
        finally:
            for job_id in registered:
                self._multiplexed[job_id].discard(changes)
                if not self._multiplexed[job_id]:
                    del self._multiplexed[job_id]
            self._watched_changed.set()

    def _watched(self) -> set[str]:
        return {keys.events_channel(job_id) for job_id in (*self._watchers, *self._multiplexed)}

    async def _run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                await self._listen(pubsub)
            except REDIS_DOWN_ERRORS as exc:
                logger.warning("job events: redis unreachable, reconnecting: %s", exc)
                self._wake_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(*REDIS_DOWN_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self, pubsub: PubSub) -> None:
        subscribed: set[str] = set()
        while not self._stopping.is_set():
            self._watched_changed.clear()
            watched = self._watched()
            if added := watched - subscribed:
                await pubsub.subscribe(*added)
            if removed := subscribed - watched:
                await pubsub.unsubscribe(*removed)
            subscribed = watched
            if not subscribed:
                await self._watched_changed.wait()  # nothing to hear: no reads at all
                continue
            message = await pubsub.get_message(timeout=READ_WAIT_S)
            if message is not None and message["type"] in ("message", "subscribe"):
                channel = message["channel"].decode()
                self._notify(channel.removeprefix(keys.EVENTS_PREFIX))

    def _notify(self, job_id: str) -> None:
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
