"""The no-op job both contenders run: note when it started, count it, return."""

import asyncio
import time
from typing import Any

from arq.connections import ArqRedis
from pydantic import BaseModel

from conveyor_core.catalog import JobType, RetryPolicy
from conveyor_core.context import JobContext
from conveyor_core.flow import Limits, Rate

CONVEYOR_QUEUE = "bench:conveyor"
# The same no-op job, limited: what the claim's flow control costs.
LIMITED_QUEUE = "bench:conveyor-limited"
DONE_KEY = "bench:done:{queue}"
# Start times, pushed by each job; the benchmark BLPOPs them instead of polling.
STARTED_KEY = "bench:started:{queue}"


class Noop(BaseModel):
    pass


async def noop(ctx: JobContext, payload: Noop) -> float:
    """Conveyor's handler."""
    started = time.time()
    await record(ctx.redis, ctx.job_type.queue, started)
    return started


class Nap(BaseModel):
    sleep_s: float


async def nap(ctx: JobContext, payload: Nap) -> None:
    """Background work for the flow-control bench: holds a slot a while, records nothing."""
    await asyncio.sleep(payload.sleep_s)


async def arq_noop(ctx: dict[str, Any]) -> float:
    """The same job for a bare arq worker."""
    started = time.time()
    await record(ctx["redis"], ctx["queue"], started)
    return started


# The Redis commands `record` sends per job: the bench's own, not the worker's,
# so the cost per job leaves them out (for both contenders alike).
RECORD_COMMANDS = 3


async def record(redis: ArqRedis, queue: str, started: float) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(DONE_KEY.format(queue=queue))
        pipe.rpush(STARTED_KEY.format(queue=queue), repr(started))
        pipe.ltrim(STARTED_KEY.format(queue=queue), -1, -1)
        await pipe.execute()


class Carry(BaseModel):
    """A payload with data in it: the claim-check bench's 1 MiB jobs."""

    data: str


async def carry(ctx: JobContext, payload: Carry) -> int:
    return len(payload.data)


# A group's continuation (bench/groups.py) pushes "started time, results" here.
GATHERED_KEY = "bench:gathered"


async def gather(ctx: JobContext, payload: Noop) -> int:
    """A group's continuation: reads every member's result, then says when it
    started and how many it read."""
    started = time.time()
    results = await ctx.group_results()
    await ctx.redis.rpush(GATHERED_KEY, f"{started!r} {len(results)}")  # type: ignore[misc]
    return len(results)


# Payloads over this go to the blob store (bench/blobs.py).
OFFLOAD_ABOVE_BYTES = 64 * 1024

JOB_TYPES = [
    JobType("noop", Noop, "bench.jobs:noop", queue=CONVEYOR_QUEUE, retry=RetryPolicy(max_tries=1)),
    JobType("nap", Nap, "bench.jobs:nap", queue=CONVEYOR_QUEUE, retry=RetryPolicy(max_tries=1)),
    JobType(
        "gather", Noop, "bench.jobs:gather", queue=CONVEYOR_QUEUE, retry=RetryPolicy(max_tries=1)
    ),
    # Limits that never bind (the worker runs 10 at a time, far under the rate),
    # so both queues run the same jobs at the same pace and only the checks differ.
    JobType(
        "noop_limited",
        Noop,
        "bench.jobs:noop",
        queue=LIMITED_QUEUE,
        retry=RetryPolicy(max_tries=1),
        limits=Limits(max_running=1000, rate=Rate(1_000_000, 1.0)),
    ),
    JobType(
        "carry",
        Carry,
        "bench.jobs:carry",
        queue=CONVEYOR_QUEUE,
        retry=RetryPolicy(max_tries=1),
        offload_above_bytes=OFFLOAD_ABOVE_BYTES,
    ),
]
