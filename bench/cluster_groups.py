"""Groups on a local Redis Cluster against one node: how soon a group's
continuation starts after its last member's end, when it joins the members'
own queue (started in the member's script) and when it joins another queue
(on a cluster, another slot: through the outbox of the members' shard, which
a worker of that queue drains).

`python -m bench.cluster_groups` starts the test cluster
(tests/support/cluster.py: three primaries, three replicas) and one
`redis-server`, runs two Conveyor workers in this process on each (one for
the members' queue of three shards, one for the other queue) and prints the
p50 and p95 over GROUPS groups of MEMBERS members each. No target: the
issue's targets are one node's (bench/groups.py); this says what the outbox
adds.
"""

import asyncio
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import uvloop

from bench.jobs import Noop
from conveyor_core.catalog import Catalog, JobType, Queue, RetryPolicy
from conveyor_core.context import JobContext
from conveyor_core.groups import Call, start_group
from conveyor_core.local.redis_server import RedisServerProcess
from conveyor_core.redis import connect
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_worker.worker import ConveyorWorker
from tests.support.cluster import LocalCluster

GROUPS = 100
MEMBERS = 10
MEMBERS_QUEUE = "bench:members"
OTHER_QUEUE = "bench:after"
SHARDS = 3

CATALOG = Catalog(
    [
        JobType("member", Noop, "bench.cluster_groups:member", queue=MEMBERS_QUEUE),
        JobType(
            "then_here",
            Noop,
            "bench.cluster_groups:then",
            queue=MEMBERS_QUEUE,
            retry=RetryPolicy(max_tries=1),
        ),
        JobType(
            "then_there",
            Noop,
            "bench.cluster_groups:then",
            queue=OTHER_QUEUE,
            retry=RetryPolicy(max_tries=1),
        ),
    ],
    queues=[Queue(MEMBERS_QUEUE, shards=SHARDS)],
)

# A continuation's start (time.time()), by its group's id.
_started: dict[str, asyncio.Future[float]] = {}


async def member(ctx: JobContext, payload: Noop) -> None:
    return None


async def then(ctx: JobContext, payload: Noop) -> None:
    """A continuation: says when it started, then reads every result."""
    at = time.time()
    if (future := _started.get(ctx.group_id or "")) is not None and not future.done():
        future.set_result(at)
    await ctx.group_results()


@asynccontextmanager
async def workers(url: str) -> AsyncIterator[JobStore]:
    """A worker of each queue, running in this process; a store for the bench."""
    redis = connect(RedisSettings(url=url))
    store = JobStore(redis, CATALOG)  # type: ignore[arg-type]
    handlers: dict[str, Callable[[JobContext, Any], Awaitable[Any]]] = {
        "member": member,
        "then_here": then,
        "then_there": then,
    }
    async with AsyncExitStack() as stack:
        for queue in (MEMBERS_QUEUE, OTHER_QUEUE):
            worker = ConveyorWorker(
                redis_pool=redis,  # type: ignore[arg-type]
                store=store,
                queue_name=queue,
                handlers=handlers,
                instrument=False,
                handle_signals=False,
            )
            running = asyncio.create_task(worker.main())
            while len(worker.wakeups) < len(worker.shards):  # noqa: ASYNC110  # a local list
                await asyncio.sleep(0.01)
            for wakeup in worker.wakeups:
                await asyncio.wait_for(wakeup.subscribed.wait(), 10)
            stack.push_async_callback(worker.close)
            stack.push_async_callback(asyncio.wait_for, running, 30)
            stack.callback(worker.request_stop)
        yield store
    await redis.aclose()


async def latencies_ms(store: JobStore, then_type: str) -> list[float]:
    """Continuation start after the last member's end (its record's, to the ms)."""
    out = []
    for _ in range(GROUPS):
        group = await start_group(
            store, [Call("member", Noop())] * MEMBERS, then=Call(then_type, Noop())
        )
        future = _started[group.id] = asyncio.get_running_loop().create_future()
        started = await asyncio.wait_for(future, 30)
        members = await store.get_many(group.member_ids)
        last_end = max(m.finished_at.timestamp() for m in members if m and m.finished_at)
        out.append((started - last_end) * 1000)
    return sorted(out)


async def measure(name: str, url: str) -> list[str]:
    lines = []
    async with workers(url) as store:
        for then_type, where in (
            ("then_here", "its members' queue"),
            ("then_there", "another queue"),
        ):
            values = await latencies_ms(store, then_type)
            p95 = values[int(len(values) * 0.95) - 1]
            lines.append(
                f"{name}: continuation in {where}, start after the last member's end: "
                f"p50 {statistics.median(values):.1f} ms, p95 {p95:.1f} ms "
                f"({GROUPS} groups of {MEMBERS})"
            )
    return lines


def main() -> None:
    binary = shutil.which("redis-server") or "redis-server"
    node = RedisServerProcess(binary)
    cluster = LocalCluster(binary=binary)
    node.start()
    try:
        cluster.start()
        lines = uvloop.run(measure("one node", node.url))
        lines += uvloop.run(measure("cluster 3+3", cluster.seed_url))
    finally:
        cluster.stop()
        node.stop()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
