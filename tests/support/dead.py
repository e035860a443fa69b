"""Dead jobs made fast, straight through the store (submit, claim, dead), for
tests of filters and bulk actions."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from arq.connections import ArqRedis

from conveyor_core.catalog import JobType, load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.store import JobStore
from tests.support import jobs

CLAIM = {"lock_ttl_ms": 60_000, "cancelled_retention_ms": 60_000, "scan_limit": 1_000}
# Calls in flight at once. Each opens a connection of its own while none is
# free: hundreds at once, on a busy machine, outlast the client's 1 s
# connect timeout.
CONCURRENT_CALLS = 50

T = TypeVar("T")


async def in_groups(calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """The calls' results, at most CONCURRENT_CALLS of them in flight at once."""
    results: list[T] = []
    for start in range(0, len(calls), CONCURRENT_CALLS):
        group = calls[start : start + CONCURRENT_CALLS]
        results += await asyncio.gather(*(call() for call in group))
    return results


async def make_dead(
    redis: ArqRedis,
    job_type: JobType,
    payload: dict[str, Any],
    count: int,
    *,
    error_type: str = "RuntimeError",
    message: str = "boom",
    chunk: int = 500,
) -> list[str]:
    """`count` dead jobs of `job_type` (no other job may wait in its queue)."""
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    error = json.dumps({"type": error_type, "message": message, "traceback": ""})
    ids: list[str] = []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        done = await in_groups([partial(enqueue, store, job_type, payload)] * n)
        ids += [d.job_id for d in done]
        claimed = await store.claim(job_type.queue, n, **CLAIM)
        assert len(claimed.jobs) == n, f"claimed {len(claimed.jobs)} of {n}"
        await in_groups([partial(store.dead, job_type, c.job_id, error) for c in claimed.jobs])
    return ids
