"""A bulk requeue of 20,000 dead jobs against the api as a real process: it
finishes, requeues each job exactly once, and the api answers other routes
meanwhile (p99 under 250 ms)."""

import asyncio
import threading
import time

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_seed import CREATE_TASK
from tests.e2e.conftest import Stack
from tests.support.auth import AUTH_HEADERS
from tests.support.dead import make_dead

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("bulk_at_scale")]

DEAD_JOBS = 20_000
P99_LIMIT_S = 0.250


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_bulk_requeue_of_20000_dead_jobs_keeps_the_api_responsive(
    stack: Stack, redis: ArqRedis
) -> None:
    dead = await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, DEAD_JOBS)
    some_job = dead[0]
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # another client's reads, while the bulk action runs
        with httpx.Client(base_url=stack.http.base_url, headers=AUTH_HEADERS, timeout=10) as http:
            while not stop.is_set():
                for path in ("/v1/queues", f"/v1/jobs/{some_job}", "/v1/jobs?limit=20"):
                    started = time.perf_counter()
                    assert http.get(path).status_code == 200
                    latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        started_s = time.monotonic()
        response = await asyncio.to_thread(
            stack.http.post,
            "/v1/bulk",
            json={"action": "requeue", "filter": {"state": "dead", "job_type": "create_task"}},
        )
        assert response.status_code == 202, response.text
        bulk_id = response.json()["id"]
        progress = []
        while True:
            status = (await asyncio.to_thread(stack.http.get, f"/v1/bulk/{bulk_id}")).json()
            progress.append(status["done"])
            if status["state"] != "running":
                break
            await asyncio.sleep(0.2)
        took_s = time.monotonic() - started_s
    finally:
        stop.set()
        prober.join()

    assert (status["state"], status["done"], status["skipped"]) == ("done", DEAD_JOBS, 0)
    assert len(set(progress)) > 3, progress  # it reported progress on the way
    assert await redis.zcard(CREATE_TASK.queue) == DEAD_JOBS
    assert await redis.zcard(keys.index_key(CREATE_TASK.queue, "dead")) == 0
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in dead:
            pipe.hget(keys.job_key(job_id), "requeues")
        requeues = await pipe.execute()
    assert set(requeues) == {b"1"}  # each exactly once
    assert len(latencies) > 50
    print(
        f"bulk requeue of {DEAD_JOBS}: {took_s:.1f} s, {status['batches']} batches; "
        f"api meanwhile: {len(latencies)} requests, p99 {p99(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    assert p99(latencies) < P99_LIMIT_S
