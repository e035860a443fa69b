"""The tutorial end to end: real api and worker processes, results read from Redis."""

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from tests.support.auth import AUTH_HEADERS
from tests.support.jobs import result_of
from tests.support.processes import api_process, stop_all, worker_process

pytestmark = pytest.mark.e2e


async def results(redis_url: str, job_ids: list[str], timeout_s: float) -> list[object]:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        store = JobStore(client)
        return list(await asyncio.gather(*(result_of(store, j, timeout_s) for j in job_ids)))
    finally:
        await client.aclose()


def test_post_task_runs_five_jobs_on_the_worker(redis_url: str, log_dir: Path) -> None:
    api = api_process(
        redis_url,
        log_dir,
        CONVEYOR_API_TASK_SLEEP_MIN_S="0.05",
        CONVEYOR_API_TASK_SLEEP_MAX_S="0.2",
    )
    worker = worker_process(redis_url, log_dir)
    try:
        api.start()
        worker.start()

        response = httpx.post(f"{api.base_url}/task", json={"count": 5}, headers=AUTH_HEADERS)
        assert response.status_code == 201
        job_ids = response.json()["job_ids"]
        assert len(job_ids) == 5

        slept = asyncio.run(results(redis_url, job_ids, timeout_s=30))
        assert all(isinstance(s, float) and 0.05 <= s <= 0.2 for s in slept), slept

        # uvicorn shuts down gracefully, then re-raises SIGTERM to exit by it.
        assert api.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in api.output()
        assert worker.stop() == 0
    finally:
        stop_all(api, worker)
