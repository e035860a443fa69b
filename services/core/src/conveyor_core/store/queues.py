"""A queue as a whole: pause and resume it, its statistics, and housekeeping."""

from conveyor_core import keys
from conveyor_core.jobs import (
    TERMINAL_STATES,
    JobState,
    now_ms,
)
from conveyor_core.store.base import StoreBase
from conveyor_core.store.results import Paused, QueueStats

# Housekeeping removes at most this many expired entries per index and call.
TRIM_BATCH = 10_000


class Queues(StoreBase):
    """Queues and their housekeeping."""

    async def pause(self, queue: str) -> Paused:
        """Stop workers starting jobs from `queue`; says when it was paused (ms),
        and whether this call paused it."""
        paused_at, changed = await self._pause(
            keys=[keys.paused_key(queue)], args=["pause", now_ms(), keys.wake_channel(queue)]
        )
        return Paused(int(paused_at), changed == 1)

    async def resume(self, queue: str) -> bool:
        """Let workers start jobs from `queue` again, at once; whether it was paused."""
        _, changed = await self._pause(
            keys=[keys.paused_key(queue)], args=["resume", now_ms(), keys.wake_channel(queue)]
        )
        return bool(changed == 1)

    async def trim_expired(self, queue: str, batch: int = TRIM_BATCH) -> int:
        """Drop the entries of expired records from the queue's final-state indexes.

        Those indexes are scored by expiry time, so the expired entries are the
        front of each: removing them costs the same whatever else the index
        holds. At most `batch` per index and call.
        """
        at_ms = now_ms()
        indexes = [keys.index_key(queue, state.value) for state in TERMINAL_STATES]
        removed: list[int]
        if self.one_slot_per_call:
            # A cluster pipeline takes no scripts (the indexes share a slot, but
            # its pipeline loads no script): one call each.
            removed = [await self._trim(keys=[index], args=[at_ms, batch]) for index in indexes]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in indexes:
                    await self._trim(keys=[index], args=[at_ms, batch], client=pipe)
                removed = await pipe.execute()
        return sum(removed)

    async def queue_stats(self, queue: str) -> QueueStats:
        at_ms = now_ms()
        ready, deferred, running, retrying, dead, oldest, paused_at = await self._queue_stats(
            keys=[
                queue,
                keys.index_key(queue, JobState.IN_PROGRESS.value),
                keys.index_key(queue, JobState.RETRYING.value),
                keys.index_key(queue, JobState.DEAD.value),
                keys.paused_key(queue),
            ],
            args=[at_ms],
        )
        oldest_age_s = (at_ms - int(float(oldest))) / 1000 if oldest else 0.0
        return QueueStats(
            queue,
            ready,
            deferred,
            running,
            retrying,
            dead,
            max(oldest_age_s, 0.0),
            int(paused_at) if paused_at else None,
        )
