"""A queue as a whole: pause and resume it, its statistics, and housekeeping."""

from typing import Any

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
        and whether this call paused it. One call per shard, shard 0 first:
        its time is the queue's."""
        replies = [
            await self._pause(
                keys=[keys.paused_key(shard)], args=["pause", now_ms(), keys.wake_channel(shard)]
            )
            for shard in self.catalog.shards(queue)
        ]
        return Paused(int(replies[0][0]), any(changed == 1 for _, changed in replies))

    async def resume(self, queue: str) -> bool:
        """Let workers start jobs from `queue` again, at once; whether it was
        paused (any of its shards)."""
        changed = [
            await self._pause(
                keys=[keys.paused_key(shard)], args=["resume", now_ms(), keys.wake_channel(shard)]
            )
            for shard in self.catalog.shards(queue)
        ]
        return any(c == 1 for _, c in changed)

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
        """The queue's counts, summed over its shards (one call each); its
        oldest ready job is the oldest of any shard."""
        at_ms = now_ms()
        shards = [await self._shard_stats(shard, at_ms) for shard in self.catalog.shards(queue)]
        oldests = [int(float(oldest)) for *_, oldest, _ in shards if oldest]
        oldest_age_s = (at_ms - min(oldests)) / 1000 if oldests else 0.0
        paused_at = shards[0][-1]
        ready, deferred, running, retrying, dead = (
            sum(int(shard[i]) for shard in shards) for i in range(5)
        )
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

    async def _shard_stats(self, shard: str, at_ms: int) -> list[Any]:
        """ready, deferred, running, retrying, dead, the oldest ready job's due
        time and the paused flag of one shard (lua/queue_stats.lua)."""
        reply: list[Any] = await self._queue_stats(
            keys=[
                shard,
                keys.index_key(shard, JobState.IN_PROGRESS.value),
                keys.index_key(shard, JobState.RETRYING.value),
                keys.index_key(shard, JobState.DEAD.value),
                keys.paused_key(shard),
            ],
            args=[at_ms],
        )
        return reply
