"""The worker in-process against a real Redis: registration, ctx resources, a job run."""

from typing import Any

import aiohttp
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from conveyor_core.catalog import CREATE_TASK
from conveyor_core.enqueue import enqueue
from conveyor_core.settings import RedisSettings
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, on_shutdown, on_startup, worker_settings


def burst_worker(redis: ArqRedis, redis_url: str) -> ConveyorWorker:
    settings = Settings(redis=RedisSettings(url=redis_url), poll_delay_s=0.01)
    kwargs: dict[str, Any] = worker_settings(settings, redis)
    return ConveyorWorker(**kwargs, burst=True, handle_signals=False)


async def test_worker_registers_the_tutorial_job(redis: ArqRedis, redis_url: str) -> None:
    worker = burst_worker(redis, redis_url)
    assert set(worker.functions) == {CREATE_TASK.name}
    assert worker.queue_name == CREATE_TASK.queue


async def test_worker_runs_create_task_to_completion(redis: ArqRedis, redis_url: str) -> None:
    job_id = await enqueue(redis, CREATE_TASK, sleep_s=0.01)

    worker = burst_worker(redis, redis_url)
    await worker.main()
    await worker.close()

    job = Job(job_id, redis)
    assert await job.status() == JobStatus.complete
    info = await job.result_info()
    assert info is not None
    assert info.success
    assert info.result == 0.01
    assert worker.redis_ok


async def test_startup_opens_and_shutdown_closes_shared_resources() -> None:
    ctx: dict[str, Any] = {}
    await on_startup(ctx)
    session = ctx["http"]
    assert isinstance(session, aiohttp.ClientSession)
    assert not session.closed

    await on_shutdown(ctx)
    assert session.closed
    assert "http" not in ctx
