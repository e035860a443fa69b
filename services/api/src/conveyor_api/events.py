"""Job change notices for SSE streams (one pub/sub connection per api process),
and the bounds on those streams: how many per key and per process, how long."""

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from conveyor_core import keys
from conveyor_core.metrics import LIVE_STREAMS, LIVE_STREAMS_REFUSED
from conveyor_core.redis import RedisClient
from conveyor_core.shardpubsub import READ_WAIT_S, ShardChannels, channel_slot
from conveyor_core.tasks import cancel_and_wait

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
            async with asyncio.timeout(timeout_s):
                await self._woken.wait()
        except TimeoutError:
            return False
        return True


class JobEvents:
    """Wakes the streams watching a job whenever that job changes.

    Each job has its own sharded channel (in its queue's slot, keys.py), and
    this process subscribes to the channels of the jobs its streams watch:
    one connection per slot they are in (on one node, one connection), so a
    replica that serves no stream hears nothing and spends nothing. The
    subscriptions follow the watched jobs one by one (a job's first watcher
    subscribes its channel, its last one leaving unsubscribes it), never the
    whole set again but after a reconnection. A notice carries no state: a
    woken stream re-reads the job, so a notice lost while Redis was away, or
    sent before a subscription took effect, costs nothing but a re-read
    (every stream is woken when its job's subscription is confirmed, again
    after a reconnection or a failover).
    """

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        # By channel: a job's (keys.events_channel) or a group's.
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        # By job id: multiplexed streams hear jobs only.
        self._multiplexed: defaultdict[str, set[JobChanges]] = defaultdict(set)
        # Channels whose first watcher came or last one left since the listener looked.
        self._touched: set[str] = set()
        self._watched_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One subscriber per slot of watched jobs (one in all on a single node).
        self._shards: dict[int | None, ShardChannels] = {}
        self._leaving: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job events")

    async def stop(self) -> None:
        self._stopping.set()
        self._watched_changed.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT_S * 3)
            if not done:
                await cancel_and_wait(self._task, timeout_s=READ_WAIT_S * 3)
        await asyncio.gather(*(shard.stop() for shard in self._shards.values()))
        await asyncio.gather(*self._leaving, return_exceptions=True)

    def watch(self, job_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set on every change of `job_id` (clear it before re-reading)."""
        return self._watch(keys.events_channel(job_id))

    def watch_group(self, group_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set on every change of a group (a member's end, its finish...)."""
        return self._watch(keys.group_events_channel(group_id))

    @contextlib.contextmanager
    def _watch(self, channel: str) -> Iterator[asyncio.Event]:
        changed = asyncio.Event()
        self._watchers[channel].add(changed)
        self._touched_channel(channel)
        try:
            yield changed
        finally:
            self._watchers[channel].discard(changed)
            if not self._watchers[channel]:
                del self._watchers[channel]
                self._touched_channel(channel)

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
        self._touched_channel(keys.events_channel(job_id))

    def _touched_channel(self, channel: str) -> None:
        self._touched.add(channel)
        self._watched_changed.set()

    def _is_watched(self, channel: str) -> bool:
        return (
            channel in self._watchers
            or channel.removeprefix(keys.EVENTS_PREFIX) in self._multiplexed
        )

    async def _run(self) -> None:
        """Follow the watched jobs: subscribe the new ones' channels, leave the rest's."""
        while not self._stopping.is_set():
            self._watched_changed.clear()
            touched, self._touched = self._touched, set()
            for channel in touched:
                slot = channel_slot(self._redis, channel)
                if self._is_watched(channel):
                    self._shard(slot).add(channel)
                elif (shard := self._shards.get(slot)) is not None:
                    shard.discard(channel)
                    if not shard.wanted:  # its last job: its connection goes too
                        del self._shards[slot]
                        leaving = asyncio.create_task(shard.stop())
                        self._leaving.add(leaving)
                        leaving.add_done_callback(self._leaving.discard)
            await self._watched_changed.wait()

    def _shard(self, slot: int | None) -> ShardChannels:
        shard = self._shards.get(slot)
        if shard is None:
            shard = self._shards[slot] = ShardChannels(
                self._redis,
                on_message=lambda channel, _data: self._heard(channel),
                on_subscribed=self._heard,
                # Streams re-read at once: Redis away is theirs to report.
                on_lost=self._wake_all,
            )
            shard.start()
        return shard

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for changed in watchers:
                changed.set()
        for streams in self._multiplexed.values():
            for changes in streams:
                changes.mark_all()

    def _heard(self, channel: str) -> None:
        for changed in self._watchers.get(channel, ()):
            changed.set()
        job_id = channel.removeprefix(keys.EVENTS_PREFIX)
        for changes in self._multiplexed.get(job_id, ()):
            changes.mark(job_id)
