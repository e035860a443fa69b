"""The worker process survives a Redis outage and takes jobs again when Redis returns."""

import asyncio
import threading
import time
from pathlib import Path

import pytest
import redis as redis_sync
from pydantic import BaseModel
from redis.exceptions import OutOfMemoryError

from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from conveyor_seed import CreateTask
from tests.support import jobs
from tests.support.jobs import result_of
from tests.support.processes import stop_all, worker_process
from tests.support.redis_faults import busy, configured

pytestmark = pytest.mark.e2e


def run_one_job(redis_url: str) -> None:
    """Enqueue create_task and wait for its result."""
    import asyncio

    from conveyor_core.enqueue import enqueue
    from conveyor_core.redis import create_redis
    from conveyor_core.settings import RedisSettings
    from conveyor_core.store import JobStore
    from conveyor_seed import CREATE_TASK, CreateTask

    async def go() -> object:
        client = create_redis(RedisSettings(url=redis_url))
        try:
            submitted = await enqueue(JobStore(client), CREATE_TASK, CreateTask(sleep_s=0.01))
            return await result_of(JobStore(client), submitted.job_id)
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 0.01


def test_worker_survives_redis_outage(own_redis: RedisProcess, log_dir: Path) -> None:
    worker = worker_process(own_redis.url, log_dir, CONVEYOR_WORKER_POLL_DELAY_S="0.05")
    try:
        worker.start()
        worker.wait_for("/readyz")
        run_one_job(own_redis.url)

        own_redis.stop()
        worker.wait_for("/readyz", status=503)
        time.sleep(1)  # several failed polls in a row
        assert worker.alive(), worker.output()
        assert worker.wait_for("/healthz").status_code == 200

        own_redis.start()
        worker.wait_for("/readyz")
        run_one_job(own_redis.url)
        assert "redis fault unreachable" in worker.output()
    finally:
        stop_all(worker)


def test_worker_starts_while_redis_is_down(own_redis: RedisProcess, log_dir: Path) -> None:
    own_redis.stop()
    worker = worker_process(own_redis.url, log_dir)
    try:
        worker.start()  # waits for /healthz: alive though Redis is down
        worker.wait_for("/readyz", status=503)
        own_redis.start()
        worker.wait_for("/readyz")
        run_one_job(own_redis.url)
        assert worker.stop() == 0
    finally:
        stop_all(worker)


def test_sigterm_exits_zero(redis_url: str, log_dir: Path) -> None:
    worker = worker_process(redis_url, log_dir).start()
    try:
        assert worker.stop() == 0, worker.output()
        with redis_sync.Redis.from_url(redis_url) as client:
            assert client.ping()
    finally:
        stop_all(worker)


# Holds the server busy for `ARGV[1]` milliseconds (not to TIME's whole
# second, which cut a wait of 4 s to 3): every client's reply waits.
BLOCK_SERVER = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local deadline = now_ms() + tonumber(ARGV[1])
while now_ms() < deadline do end
"""
# Long enough that a busy machine's worker sees the silence within it (a
# turn's 0.3 s bound after its 1 s poll, nominally) and says so; short of
# Redis's 5 s busy-reply threshold, past which it answers BUSY instead.
BLOCKED_S = 4.5


def test_a_redis_that_stops_answering_does_not_stall_the_worker(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    # The worker awaits replies without a per-reply timeout; each turn of its
    # loop is bounded instead, so a silent Redis shows as not ready, not as a hang.
    worker = worker_process(own_redis.url, log_dir, REDIS_SOCKET_TIMEOUT_S="0.3")
    try:
        worker.start()
        worker.wait_for("/readyz")
        run_one_job(own_redis.url)

        blocker = threading.Thread(target=_hold_server_busy, args=(own_redis.url, BLOCKED_S))
        blocker.start()
        worker.wait_for("/readyz", status=503, timeout_s=BLOCKED_S - 0.5)
        assert worker.wait_for("/healthz").status_code == 200
        blocker.join()

        worker.wait_for("/readyz")
        run_one_job(own_redis.url)
        assert worker.alive(), worker.output()
    finally:
        stop_all(worker)


def _hold_server_busy(redis_url: str, seconds: float) -> None:
    with redis_sync.Redis.from_url(redis_url) as client:
        client.eval(BLOCK_SERVER, 0, round(seconds * 1000))


# Past busy-reply-threshold (lowered from 5 s, so BUSY comes at once) a script
# that runs on makes Redis answer BUSY to every other command.
BUSY_THRESHOLD_MS = 100
BUSY_S = 6.0


def test_a_redis_busy_with_a_long_script_stops_claims_not_the_worker_and_loses_no_job(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    """The running job's end meets BUSY: not recorded, it runs again once its
    lock lapses; the worker stays up, says why it is not ready, and carries on."""
    worker = worker_process(
        own_redis.url, log_dir, CONVEYOR_JOB_MODULES=jobs.MODULES, CONVEYOR_WORKER_LOCK_TTL_S="2"
    )
    try:
        worker.start()
        worker.wait_for("/readyz")
        running = asyncio.run(submit(own_redis.url, "create_task", CreateTask(sleep_s=1)))
        assert asyncio.run(state_of(own_redis.url, running, "in_progress")) == "in_progress"

        with (
            configured(own_redis.url, busy_reply_threshold=BUSY_THRESHOLD_MS),
            busy(own_redis.url, BUSY_S),
        ):
            ready = worker.wait_for("/readyz", status=503, timeout_s=BUSY_S - 1).json()
            assert ready["redis_fault"] == "busy"
            assert worker.wait_for("/healthz").status_code == 200
            time.sleep(1.5)  # the running job ends, into BUSY
            assert worker.alive(), worker.output()

        worker.wait_for("/readyz")
        assert asyncio.run(state_of(own_redis.url, running, "complete", 15)) == "complete"
        run_one_job(own_redis.url)
        assert "redis fault busy" in worker.output()
        assert worker.stop() == 0, worker.output()
    finally:
        stop_all(worker)


def test_a_worker_stopped_while_redis_is_busy_exits_cleanly(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    # Withdrawing its card meets BUSY: logged, and the worker still closes.
    worker = worker_process(own_redis.url, log_dir)
    try:
        worker.start()
        worker.wait_for("/readyz")
        with (
            configured(own_redis.url, busy_reply_threshold=BUSY_THRESHOLD_MS),
            busy(own_redis.url, 3),
        ):
            assert worker.stop() == 0, worker.output()
        assert "Traceback" not in worker.output()
    finally:
        stop_all(worker)


def test_a_full_redis_stops_claims_not_the_worker_and_loses_no_job(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    """At maxmemory with noeviction: the running job still finishes (ending a job
    may run on a full Redis), new claims are refused whole, the worker stays up and
    says why it is not ready, and every queued job runs once memory is back."""
    worker = worker_process(
        own_redis.url, log_dir, CONVEYOR_JOB_MODULES=jobs.MODULES, CONVEYOR_WORKER_MAX_JOBS="1"
    )
    client = redis_sync.Redis.from_url(own_redis.url)
    try:
        worker.start()
        worker.wait_for("/readyz")
        # The tutorial's task writes nothing to Redis itself: it only sleeps.
        running = asyncio.run(submit(own_redis.url, "create_task", CreateTask(sleep_s=1.5)))
        assert asyncio.run(state_of(own_redis.url, running, "in_progress")) == "in_progress"

        client.config_set("maxmemory-policy", "noeviction")
        # Far below what Redis holds: whatever a closing client or a loaded script
        # frees or adds, Redis stays full until the test makes room.
        client.config_set("maxmemory", 1)
        assert asyncio.run(submit(own_redis.url, "create_task", CreateTask(sleep_s=0))) is None
        client.config_set("maxmemory", 0)
        queued = [
            asyncio.run(submit(own_redis.url, "create_task", CreateTask(sleep_s=0)))
            for _ in range(3)
        ]
        # Full again before the worker is free to claim them (it runs one job at a time).
        client.config_set("maxmemory", 1)
        assert asyncio.run(state_of(own_redis.url, running, "complete")) == "complete"
        ready = worker.wait_for("/readyz", status=503, timeout_s=5).json()
        assert ready["redis_fault"] == "out_of_memory"
        time.sleep(1)
        assert worker.alive(), worker.output()
        for job_id in queued:
            assert asyncio.run(state_of(own_redis.url, job_id, "queued", 0)) == "queued"

        client.config_set("maxmemory", 0)
        worker.wait_for("/readyz")
        for job_id in queued:
            assert asyncio.run(state_of(own_redis.url, job_id, "complete")) == "complete"
        assert "redis fault out_of_memory" in worker.output()
    finally:
        client.close()
        stop_all(worker)


async def submit(redis_url: str, job_type: str, payload: BaseModel) -> str | None:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        store = JobStore(client, load_catalog(jobs.MODULES.split(",")))
        try:
            return (await enqueue(store, store.catalog[job_type], payload)).job_id
        except OutOfMemoryError:
            return None
    finally:
        await client.aclose()


async def state_of(redis_url: str, job_id: str | None, wanted: str, timeout_s: float = 10) -> str:
    """The job's state once it is `wanted`, or whatever it is when time runs out."""
    assert job_id is not None
    client = create_redis(RedisSettings(url=redis_url))
    try:
        store = JobStore(client, load_catalog(jobs.MODULES.split(",")))
        deadline = time.monotonic() + timeout_s
        while True:
            job = await store.get(job_id)
            state = job.state.value if job else "missing"
            if state == wanted or time.monotonic() >= deadline:
                return state
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
