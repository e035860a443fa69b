"""Flow control's targets: a priority-0 job's pickup behind 10,000 priority-9
jobs, and the Redis cost of claiming with limits against claiming without.

`python -m bench.flow` (part of `make bench`) runs Conveyor's worker as its
own process on a Redis of its own and prints each figure beside its target.
"""

import asyncio
import random
import statistics
import time

import uvloop
from arq.connections import ArqRedis

from bench.jobs import CONVEYOR_QUEUE, DONE_KEY, LIMITED_QUEUE, STARTED_KEY, Nap, Noop
from bench.pickup import Contender, _dt, redis_cpu_s, running, total_commands
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


CLAIM_JOBS = 3000
CLAIM_ROUNDS = 3
HEAD_START_S = 10.0


async def claim_cost(redis_url: str, queue: str, job_type: str) -> tuple[float, float]:
    """Redis CPU (ms) and commands per job while a worker drains CLAIM_JOBS no-op
    jobs of `job_type` that fell due together."""
    contender = Contender(job_type, queue, samples=0, job_type=job_type)
    async with running(contender, redis_url) as (redis, store):
        done_key = DONE_KEY.format(queue=queue)
        await redis.delete(done_key)
        due = time.time() + HEAD_START_S
        kind = store.catalog[job_type]
        for start in range(0, CLAIM_JOBS, 100):
            batch = range(start, min(start + 100, CLAIM_JOBS))
            await asyncio.gather(*(enqueue(store, kind, Noop(), run_at=_dt(due)) for _ in batch))
        assert time.time() < due, "enqueueing took longer than the head start"
        await asyncio.sleep(due - time.time())
        cpu_s, commands = await redis_cpu_s(redis), await total_commands(redis)
        polls = 0
        while int(await redis.get(done_key) or 0) < CLAIM_JOBS:
            polls += 1
            await asyncio.sleep(0.005)
        cpu_ms = (await redis_cpu_s(redis) - cpu_s) * 1000 / CLAIM_JOBS
        ours = polls + 3
        per_job = (await total_commands(redis) - commands - ours) / CLAIM_JOBS
        return cpu_ms, per_job


async def claim_costs(redis_url: str) -> str:
    plain: list[tuple[float, float]] = []
    limited: list[tuple[float, float]] = []
    for round_ in range(CLAIM_ROUNDS):  # alternating, so drift hits both alike
        print(f"claim cost round {round_ + 1} ...", flush=True)
        plain.append(await claim_cost(redis_url, CONVEYOR_QUEUE, "noop"))
        limited.append(await claim_cost(redis_url, LIMITED_QUEUE, "noop_limited"))
    cpu = statistics.median(c for c, _ in limited) / statistics.median(c for c, _ in plain)
    return (
        f"Redis per job, draining {CLAIM_JOBS:,} no-op jobs (median of {CLAIM_ROUNDS}): "
        f"without limits {statistics.median(c for c, _ in plain):.3f} ms CPU, "
        f"{statistics.median(n for _, n in plain):.1f} commands; "
        f"with limits (running and rate, not binding) "
        f"{statistics.median(c for c, _ in limited):.3f} ms CPU, "
        f"{statistics.median(n for _, n in limited):.1f} commands; "
        f"CPU ratio {cpu:.2f} (target <= 1.2)"
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    with resolve_redis() as resolved:
        latencies = await priority_pickup(resolved.url)
        costs = await claim_costs(resolved.url)
    print(costs)
    print(
        f"priority-0 pickup behind {BACKLOG:,} priority-9 jobs ({PICKUP_SAMPLES} samples, "
        f"10 slots busy): p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p95 {percentile(latencies, 0.95):.1f} ms, max {max(latencies):.1f} ms "
        "(target p95 <= 50 ms)"
    )


if __name__ == "__main__":
    uvloop.run(main())
