"""Job change notices for SSE streams (one pub/sub connection per api process),
and the bounds on those streams: how many per key and per process, how long."""

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from arq.connections import ArqRedis
from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from redis.asyncio.client import PubSub
from starlette.types import Receive, Scope, Send

from conveyor_core import keys
from conveyor_core.metrics import LIVE_STREAMS, LIVE_STREAMS_REFUSED
from conveyor_core.pubsub import READ_WAIT_S, RECONNECT_DELAY_S
from conveyor_core.redis import REDIS_DOWN_ERRORS

logger = logging.getLogger(__name__)


class StreamLimits:
    """How many live streams each api key, and this process, hold open.

    Counted per process: a key's streams on another replica are that
    replica's. A stream takes its slot before it answers and gives it back
    when its response ends, however it ends.
    """

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._by_key: Counter[str] = Counter()

    def open(self, key_name: str) -> str | None:
        """Take a slot for `key_name`; or why not (the slot is not taken)."""
        if self._by_key[key_name] >= self.per_key:
            LIVE_STREAMS_REFUSED.labels("key").inc()
            return f"Api key {key_name!r} holds {self.per_key} live streams, its most"
        if self._by_key.total() >= self.total:
            LIVE_STREAMS_REFUSED.labels("process").inc()
            return f"This api process serves {self.total} live streams, its most"
        self._by_key[key_name] += 1
        LIVE_STREAMS.inc()
        return None

    def close(self, key_name: str) -> None:
        self._by_key[key_name] -= 1
        LIVE_STREAMS.dec()
        if self._by_key[key_name] <= 0:
            del self._by_key[key_name]


# What a refused stream tells its client to wait before it tries again.
STREAM_RETRY_AFTER_S = 5
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class LiveStream(StreamingResponse):
    """A Server-Sent Events answer that gives its stream slot back when it ends,
    however it ends (finished, cut short by its lifetime, or its client gone)."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def live_stream(request: Request, body: AsyncIterator[bytes]) -> LiveStream:
    """`body` as a live stream of the caller's key, if it and this process have
    a slot left (else a 429 problem). Call it last, once the request is sound."""
    limits: StreamLimits = request.app.state.stream_limits
    key_name: str = request.state.api_key
    refused = limits.open(key_name)
    if refused is not None:
        raise HTTPException(
            429,
            f"{refused}; close one, or try again later.",
            headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
        )
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            limits.close(key_name)

    return LiveStream(body, release)


def stream_deadline(request: Request) -> float:
    """When (time.monotonic) a stream opened now ends: its client then reconnects."""
    lifetime_s: float = request.app.state.settings.sse_max_lifetime_s
    return time.monotonic() + lifetime_s


class JobChanges:
    """Which of a multiplexed stream's jobs changed since the stream last looked.

    Starts with every job marked, so the stream's first read sends them all.
    A job it forgets is no longer heard (`release`, see `JobEvents.watch_many`).
    """

    def __init__(
        self, job_ids: Iterable[str], release: Callable[[str, "JobChanges"], None]
    ) -> None:
        self.watching = set(job_ids)
        self._marked = set(self.watching)
        self._woken = asyncio.Event()
        self._woken.set()
        self._release = release

    def mark(self, job_id: str) -> None:
        if job_id in self.watching:
            self._marked.add(job_id)
            self._woken.set()

    def mark_all(self) -> None:
        self._marked |= self.watching
        self._woken.set()

    def forget(self, job_id: str) -> None:
        """Stop watching a job (it finished, or it is gone), and stop hearing it."""
        if job_id in self.watching:
            self.watching.discard(job_id)
            self._marked.discard(job_id)
            self._release(job_id, self)

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
    serves no stream hears nothing and spends nothing. The subscriptions
    follow the watched jobs one by one (a job's first watcher subscribes its
    channel, its last one leaving unsubscribes it), never the whole set again
    but after a reconnection. A notice carries no state: a woken stream
    re-reads the job, so a notice lost while Redis was away, or sent before a
    subscription took effect, costs nothing but a re-read (every stream is
    woken when its subscription is confirmed, and when the connection drops
    and comes back).
    """

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._multiplexed: defaultdict[str, set[JobChanges]] = defaultdict(set)
        # Jobs whose first watcher came or last one left since the listener looked.
        self._touched: set[str] = set()
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
        self._touch(job_id)
        try:
            yield changed
        finally:
            self._watchers[job_id].discard(changed)
            if not self._watchers[job_id]:
                del self._watchers[job_id]
                self._touch(job_id)

    @contextlib.contextmanager
    def watch_many(self, job_ids: Iterable[str]) -> Iterator[JobChanges]:
        """One wake-up for a set of jobs: which of them changed, not one event each.
        A job the stream forgets is unwatched at once, the rest when it ends."""
        changes = JobChanges(job_ids, self._unwatch)
        for job_id in changes.watching:
            self._multiplexed[job_id].add(changes)
            self._touch(job_id)
        try:
            yield changes
        finally:
            for job_id in list(changes.watching):
                self._unwatch(job_id, changes)

    def _unwatch(self, job_id: str, changes: JobChanges) -> None:
        streams = self._multiplexed.get(job_id)
        if streams is None:
            return
        streams.discard(changes)
        if not streams:
            del self._multiplexed[job_id]
            self._touch(job_id)

    def _touch(self, job_id: str) -> None:
        self._touched.add(job_id)
        self._watched_changed.set()

    def _is_watched(self, job_id: str) -> bool:
        return job_id in self._watchers or job_id in self._multiplexed

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
        subscribed: set[str] = set()  # job ids
        # A new connection hears nothing yet: everything watched is new to it.
        self._touched |= {*self._watchers, *self._multiplexed}
        while not self._stopping.is_set():
            self._watched_changed.clear()
            touched, self._touched = self._touched, set()
            added = {j for j in touched if self._is_watched(j) and j not in subscribed}
            removed = {j for j in touched if not self._is_watched(j) and j in subscribed}
            if added:
                await pubsub.subscribe(*map(keys.events_channel, added))
                subscribed |= added
            if removed:
                await pubsub.unsubscribe(*map(keys.events_channel, removed))
                subscribed -= removed
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
