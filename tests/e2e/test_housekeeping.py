"""Memory stays bounded: index entries of expired records go away by themselves,
whatever sits at the front of an index, and a killed worker's job runs again
within the bound the docs give (docs/explanation/guarantees.md)."""

import asyncio
import signal
import time

import pytest

from conveyor_core import keys
from conveyor_core.catalog import DEFAULT_QUEUE, load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_worker.worker import HOUSEKEEPING_INTERVAL_S
from tests.e2e.conftest import Stack
from tests.support import jobs

pytestmark = pytest.mark.e2e

BRIEF_JOBS = 1_200


async def submit_many(redis_url: str, job_type: str, count: int) -> list[str]:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        store = JobStore(client, load_catalog(jobs.MODULES.split(",")))
        kind = store.catalog[job_type]
        return [(await enqueue(store, kind, jobs.Effect(work_s=0))).job_id for _ in range(count)]
    finally:
        await client.aclose()


def index_members(stack: Stack, state: str) -> set[str]:
    members = stack.redis.zrange(keys.index_key(DEFAULT_QUEUE, state), 0, -1)
    return {m.decode() for m in members}  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_indexes_shed_expired_records_behind_a_long_lived_dead_job(stack: Stack) -> None:
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="20")
    dead = stack.submit("permanent", {})["id"]  # kept a week, at the front of its index
    stack.wait_for_state(dead, "dead")
    brief = asyncio.run(submit_many(stack.redis_url, "brief", BRIEF_JOBS))
    deadline = time.monotonic() + 60
    while len(index_members(stack, "complete")) < BRIEF_JOBS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert int(stack.redis.get("test:effects") or 0) == BRIEF_JOBS  # type: ignore[arg-type]

    # Each brief record expires a second after it finished; the next housekeeping
    # run (every HOUSEKEEPING_INTERVAL_S) drops its entry.
    deadline = time.monotonic() + 1 + 2 * HOUSEKEEPING_INTERVAL_S
    while index_members(stack, "complete") and time.monotonic() < deadline:
        time.sleep(0.5)

    assert index_members(stack, "complete") == set()
    assert index_members(stack, "dead") == {dead}
    for state in keys.INDEXED_STATES:
        for job_id in index_members(stack, state):
            assert stack.redis.exists(keys.job_key(job_id)), (state, job_id)
    assert not any(stack.redis.exists(keys.job_key(j)) for j in brief[:50])


LOCK_TTL_S = 2.0
IDLE_POLL_S = 0.5


def test_a_killed_workers_job_runs_again_within_lock_ttl_plus_idle_poll(stack: Stack) -> None:
    settings = {
        "CONVEYOR_WORKER_LOCK_TTL_S": str(LOCK_TTL_S),
        "CONVEYOR_WORKER_IDLE_POLL_S": str(IDLE_POLL_S),
    }
    doomed = stack.start_worker(**settings)
    # 8 s: still running when the second worker is up, on a loaded machine too.
    job = stack.submit("slow", {"steps": 80, "step_s": 0.1})
    stack.wait_for_state(job["id"], "in_progress")
    stack.start_worker(**settings)  # already polling when the first dies
    time.sleep(0.5)

    assert len(stack.starts(job["id"])) == 1
    doomed.stop(signal.SIGKILL)
    killed_at = time.time()
    done = stack.wait_for_state(job["id"], "complete", timeout_s=30)

    starts = stack.starts(job["id"])
    assert len(starts) == 2
    recovery_s = starts[1] - killed_at
    assert recovery_s <= LOCK_TTL_S + IDLE_POLL_S + 0.25, recovery_s
    assert done["tries"] == 2  # a try that died with its worker counts
