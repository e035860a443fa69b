"""Flow control's targets: a priority-0 job's pickup behind 10,000 priority-9
jobs, and the Redis cost of claiming with limits against claiming without.

`python -m bench.flow` (part of `make bench`) runs Conveyor's worker as its
own process on a Redis of its own and prints each figure beside its target.
"""

import asyncio
import random
import time

import uvloop
from arq.connections import ArqRedis

from bench.jobs import CONVEYOR_QUEUE, STARTED_KEY, Nap, Noop
from bench.pickup import Contender, running
from conveyor_core.enqueue import enqueue
from conveyor_core.local.redis_server import resolve_redis
from conveyor_core.store import JobStore

BACKLOG = 10_000
PICKUP_SAMPLES = 100
# Each low-priority job holds a slot this long, so slots free up all the time
# (10 slots: one every 5 ms on average) and the backlog barely moves.
NAP_S = 0.05


async def fill(store: JobStore, count: int, priority: int) -> None:
    nap = store.catalog["nap"]
    for start in range(0, count, 500):
        batch = range(start, min(start + 500, count))
        await asyncio.gather(
            *(enqueue(store, nap, Nap(sleep_s=NAP_S), priority=priority) for _ in batch)
        )


async def priority_pickup(redis_url: str) -> list[float]:
    """Pickup (enqueued -> started) of priority-0 jobs while 10,000 priority-9 jobs wait."""
    ours = Contender("conveyor", CONVEYOR_QUEUE, samples=PICKUP_SAMPLES)
    ours.env["CONVEYOR_WORKER_MAX_JOBS"] = "10"
    latencies_ms: list[float] = []
    async with running(ours, redis_url) as (redis, store):
        await fill(store, BACKLOG, priority=9)
        started_key = STARTED_KEY.format(queue=CONVEYOR_QUEUE)
        for _ in range(PICKUP_SAMPLES):
            await redis.delete(started_key)
            await asyncio.sleep(random.uniform(0.005, 0.05))  # noqa: S311
            await enqueue(store, store.catalog["noop"], Noop(), priority=0)
            enqueued = time.time()
            _, started = await redis.blpop([started_key], timeout=10)  # type: ignore[misc]
            latencies_ms.append((float(started) - enqueued) * 1000)
            await top_up(redis, store)
    return latencies_ms


async def top_up(redis: ArqRedis, store: JobStore) -> None:
    """Keep the backlog at BACKLOG: what the worker took meanwhile, enqueued again."""
    waiting = (await store.queue_stats(CONVEYOR_QUEUE)).ready
    if waiting < BACKLOG:
        await fill(store, BACKLOG - waiting, priority=9)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    with resolve_redis() as resolved:
        latencies = await priority_pickup(resolved.url)
    print(
        f"priority-0 pickup behind {BACKLOG:,} priority-9 jobs ({PICKUP_SAMPLES} samples, "
        f"10 slots busy): p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p95 {percentile(latencies, 0.95):.1f} ms, max {max(latencies):.1f} ms "
        "(target p95 <= 50 ms)"
    )


if __name__ == "__main__":
    uvloop.run(main())
