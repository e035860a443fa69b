"""Groups' targets: what fan-in costs Redis per member, how soon the
continuation starts after the last member's end, and a batch submit of 1,000
jobs against 1,000 single submits, side by side.

`python -m bench.groups` (part of `make bench`) runs Conveyor's worker (and,
for the submits, its api) as processes of their own on a Redis of its own and
prints each figure beside its target.
"""

import asyncio
import statistics
import time

import httpx
import uvloop
from arq.connections import ArqRedis

from bench.http import BENCH_KEY, Server
from bench.jobs import CONVEYOR_QUEUE, DONE_KEY, GATHERED_KEY, Noop
from bench.pickup import Contender, running, total_commands
from conveyor_core.enqueue import enqueue
from conveyor_core.group_ids import member_id
from conveyor_core.groups import (
    Call,
    start_group,
)
from conveyor_core.local.redis_server import resolve_redis
from conveyor_core.store import JobStore

FAN_IN_MEMBERS = 1000
COST_ROUNDS = 3
LATENCY_GROUPS = 100
LATENCY_MEMBERS = 10
SUBMITS = 1000
SUBMIT_ROUNDS = 3


async def gathered(redis: ArqRedis, timeout_s: int = 60) -> tuple[float, int]:
    """(when the continuation started, how many results it read)."""
    _, raw = await redis.blpop([GATHERED_KEY], timeout=timeout_s)  # type: ignore[misc]
    started, count = raw.decode().split()
    return float(started), int(count)


async def drained(redis: ArqRedis, count: int) -> None:
    done_key = DONE_KEY.format(queue=CONVEYOR_QUEUE)
    async with asyncio.timeout(120):
        while int(await redis.get(done_key) or 0) < count:  # noqa: ASYNC110  # polls Redis, not a local flag
            await asyncio.sleep(0.01)


async def plain_cost(redis: ArqRedis, store: JobStore) -> int:
    """Redis commands while the worker drains FAN_IN_MEMBERS no-op jobs."""
    await redis.delete(DONE_KEY.format(queue=CONVEYOR_QUEUE))
    await store.pause(CONVEYOR_QUEUE)
    noop = store.catalog["noop"]
    for start in range(0, FAN_IN_MEMBERS, 100):
        batch = range(start, min(start + 100, FAN_IN_MEMBERS))
        await asyncio.gather(*(enqueue(store, noop, Noop()) for _ in batch))
    before = await total_commands(redis)
    await store.resume(CONVEYOR_QUEUE)
    await drained(redis, FAN_IN_MEMBERS)
    return await total_commands(redis) - before


async def group_cost(redis: ArqRedis, store: JobStore) -> int:
    """Redis commands while the worker drains a group of FAN_IN_MEMBERS no-op
    jobs and runs its continuation, which reads every result."""
    await redis.delete(DONE_KEY.format(queue=CONVEYOR_QUEUE), GATHERED_KEY)
    await store.pause(CONVEYOR_QUEUE)
    await start_group(store, [Call("noop", Noop())] * FAN_IN_MEMBERS, then=Call("gather", Noop()))
    before = await total_commands(redis)
    await store.resume(CONVEYOR_QUEUE)
    _, count = await gathered(redis)
    assert count == FAN_IN_MEMBERS, count
    return await total_commands(redis) - before


async def fan_in(redis_url: str) -> list[str]:
    contender = Contender("groups", CONVEYOR_QUEUE, samples=0)
    plain: list[int] = []
    grouped: list[int] = []
    latencies_ms: list[float] = []
    async with running(contender, redis_url) as (redis, store):
        for round_ in range(COST_ROUNDS):  # alternating, so drift hits both alike
            print(f"fan-in cost round {round_ + 1} ...", flush=True)
            plain.append(await plain_cost(redis, store))
            grouped.append(await group_cost(redis, store))
        print("continuation start ...", flush=True)
        for _ in range(LATENCY_GROUPS):
            group = await start_group(
                store, [Call("noop", Noop())] * LATENCY_MEMBERS, then=Call("gather", Noop())
            )
            started, _ = await gathered(redis)
            members = await store.get_many([member_id(group.id, i) for i in range(group.total)])
            last_end = max(m.finished_at.timestamp() for m in members if m and m.finished_at)
            latencies_ms.append((started - last_end) * 1000)
    per_member = (statistics.median(grouped) - statistics.median(plain)) / FAN_IN_MEMBERS
    latencies_ms.sort()
    p50 = latencies_ms[len(latencies_ms) // 2]
    p95 = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.95))]
    return [
        f"fan-in of {FAN_IN_MEMBERS:,} members (median of {COST_ROUNDS}): "
        f"{statistics.median(plain) / FAN_IN_MEMBERS:.2f} Redis commands per plain job, "
        f"{statistics.median(grouped) / FAN_IN_MEMBERS:.2f} per member with the continuation's "
        f"read of every result: {per_member:.2f} more per member (target <= 3)",
        f"continuation start after the last member's end ({LATENCY_GROUPS} groups of "
        f"{LATENCY_MEMBERS}): p50 {p50:.1f} ms, p95 {p95:.1f} ms (target p50 <= 10 ms; "
        "the end is the record's, to the ms)",
    ]


def submits(redis_url: str) -> str:
    """POST /v1/batches with SUBMITS jobs against SUBMITS single POST /v1/jobs/noop,
    one client, one connection, in alternating rounds."""
    api = Server("conveyor", "conveyor_api")
    api.start(redis_url)
    batch_s: list[float] = []
    single_s: list[float] = []
    body = {"jobs": [{"job_type": "noop", "payload": {}}] * SUBMITS}
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    try:
        with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as http:
            for round_ in range(SUBMIT_ROUNDS):
                print(f"submit round {round_ + 1} ...", flush=True)
                started = time.perf_counter()
                for _ in range(SUBMITS):
                    assert http.post("/v1/jobs/noop", json={}).status_code == 201
                single_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert http.post("/v1/batches", json=body).status_code == 201
                batch_s.append(time.perf_counter() - started)
    finally:
        api.stop()
    single, batch = statistics.median(single_s), statistics.median(batch_s)
    return (
        f"submit of {SUBMITS:,} jobs through the api (median of {SUBMIT_ROUNDS}): "
        f"{SUBMITS:,} single submits {single * 1000:.0f} ms, one batch {batch * 1000:.0f} ms: "
        f"{single / batch:.1f}x faster (target >= 10x)"
    )


async def main() -> None:
    with resolve_redis() as resolved:
        lines = await fan_in(resolved.url)
        lines.append(await asyncio.to_thread(submits, resolved.url))
    for line in lines:
        print(line)


if __name__ == "__main__":
    uvloop.run(main())
