"""arq's own client against a running Conveyor worker and against a bare arq worker.

Every call here is arq's (`ArqRedis.enqueue_job`, `arq.jobs.Job`), with the
JSON serializer a bare arq client passes to share Conveyor's Redis
(conveyor_core.serializer). Each scenario runs on both: Conveyor's worker (a
real process) on arq's default queue, and arq's own `Worker` with plain
functions of the same names on a queue of its own; what arq's client
answers is compared row by row.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, JobResult, JobStatus
from arq.worker import Worker, func

from conveyor_core.catalog import DEFAULT_QUEUE, PermanentJobError
from conveyor_core.serializer import JobFailedError, job_deserializer, job_serializer
from tests.e2e.conftest import Stack, running
from tests.support.processes import ServiceProcess, stop_all, worker_process

BARE_QUEUE = "arq:bare"
# How often the tests poll arq's client (arq's own default is 0.5 s).
POLL_S = 0.02

Row = dict[str, Any]


# The bare arq worker's functions: the same names and outcomes as the test
# job types Conveyor's worker runs (tests/support/jobs.py).
async def slow(ctx: dict[str, Any], steps: int, step_s: float) -> int:
    for _ in range(steps):
        await asyncio.sleep(step_s)
    await ctx["redis"].set(f"test:finished:{ctx['job_id']}", "1")
    return steps


async def permanent(ctx: dict[str, Any]) -> None:
    raise PermanentJobError("this input can never work")


async def effect(ctx: dict[str, Any], work_s: float) -> str:
    await asyncio.sleep(work_s)
    return "done"


@contextlib.asynccontextmanager
async def arq_client(redis_url: str) -> AsyncIterator[ArqRedis]:
    """arq's client as the docs tell a bare arq user to make it."""
    redis = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    try:
        yield redis
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def bare_arq_worker(redis: ArqRedis) -> AsyncIterator[Worker]:
    """arq's own worker, in this process, on its own queue."""
    worker = Worker(
        functions=[func(slow, name="slow"), func(permanent, name="permanent"), effect],
        redis_pool=redis,
        queue_name=BARE_QUEUE,
        poll_delay=POLL_S,
        allow_abort_jobs=True,
        handle_signals=False,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # Not worker.close(): it closes the client's pool with redis-py's deprecated close().
        for running_job in [*worker.tasks.values(), task]:
            running_job.cancel()
        await asyncio.gather(*worker.tasks.values(), task, return_exceptions=True)


@pytest.fixture
def conveyor_worker(redis_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    worker = worker_process(redis_url, log_dir).start()
    worker.wait_for("/readyz")
    yield worker
    stop_all(worker)


async def status_once_started(job: Job, timeout_s: float = 10) -> JobStatus:
    """The first status arq's client reports after queued (or deferred)."""
    async with asyncio.timeout(timeout_s):
        while (status := await job.status()) in (JobStatus.queued, JobStatus.deferred):
            await asyncio.sleep(POLL_S)
    return status


async def status_once_ended(job: Job, timeout_s: float = 10) -> JobStatus:
    async with asyncio.timeout(timeout_s):
        while (status := await job.status()) is not JobStatus.complete:
            await asyncio.sleep(POLL_S)
    return status


def outcome(value: Any) -> Any:
    """A result or an exception, comparable across the two workers."""
    if isinstance(value, JobFailedError):
        return ("raised", value.type_name, value.message)
    if isinstance(value, BaseException):
        return ("raised", type(value).__name__, str(value))
    return value


async def result_row(job: Job) -> Any:
    try:
        return outcome(await job.result(timeout=10, poll_delay=POLL_S))
    except (Exception, asyncio.CancelledError) as exc:
        return outcome(exc)


def info_row(info: JobResult | None) -> Any:
    if info is None:
        return None
    return {
        "success": info.success,
        "result": outcome(info.result),
        "function": info.function,
        "args": list(info.args),
        "kwargs": info.kwargs,
        "job_try": info.job_try,
        "started_before_finishing": info.start_time <= info.finish_time,
    }


async def succeeds(redis: ArqRedis, queue: str) -> Row:
    job = await redis.enqueue_job("slow", steps=5, step_s=0.1, _queue_name=queue)
    assert job is not None
    row: Row = {"enqueued": True, "running": await status_once_started(job)}
    row["after"] = await status_once_ended(job)
    row["result"] = await result_row(job)
    row["result_info"] = info_row(await job.result_info())
    return row


async def fails_permanently(redis: ArqRedis, queue: str) -> Row:
    job = await redis.enqueue_job("permanent", _queue_name=queue)
    assert job is not None
    row: Row = {"enqueued": True, "after": await status_once_ended(job)}
    row["result"] = await result_row(job)
    row["result_info"] = info_row(await job.result_info())
    return row


async def deferred(redis: ArqRedis, queue: str) -> Row:
    job = await redis.enqueue_job("effect", work_s=0, _queue_name=queue, _defer_by=1)
    assert job is not None
    row: Row = {"enqueued": True, "before_due": await job.status()}
    row["after"] = await status_once_ended(job)
    row["result"] = await result_row(job)
    row["result_info"] = info_row(await job.result_info())
    return row


async def compare(redis_url: str, scenario: Callable[[ArqRedis, str], Awaitable[Row]]) -> None:
    async with arq_client(redis_url) as redis, bare_arq_worker(redis):
        bare = await scenario(redis, BARE_QUEUE)
        conveyor = await scenario(redis, DEFAULT_QUEUE)
    for name in bare:
        assert (name, conveyor[name]) == (name, bare[name])
    assert conveyor.keys() == bare.keys()


@pytest.mark.usefixtures("conveyor_worker")
@pytest.mark.parametrize("scenario", [succeeds, fails_permanently, deferred])
async def test_arqs_client_answers_as_a_bare_arq_worker_would(
    redis_url: str, scenario: Callable[[ArqRedis, str], Awaitable[Row]]
) -> None:
    await compare(redis_url, scenario)


async def test_the_rows_a_bare_arq_worker_gives(redis_url: str) -> None:
    """What the comparison above compares to: arq's documented answers."""
    async with arq_client(redis_url) as redis, bare_arq_worker(redis):
        ok, failed, later = [
            await s(redis, BARE_QUEUE) for s in (succeeds, fails_permanently, deferred)
        ]
    assert (ok["running"], ok["after"], ok["result"]) == ("in_progress", "complete", 5)
    assert ok["result_info"]["success"] is True
    assert failed["result"] == ("raised", "PermanentJobError", "this input can never work")
    assert failed["result_info"]["success"] is False
    assert (later["before_due"], later["result"]) == ("deferred", "done")


async def aborted_while_running(redis: ArqRedis, queue: str) -> Row:
    job = await redis.enqueue_job("slow", steps=30, step_s=0.1, _queue_name=queue)
    assert job is not None
    row: Row = {"job_id": job.job_id, "running": await status_once_started(job)}
    row["abort"] = await job.abort(timeout=10, poll_delay=POLL_S)
    row["after"] = await job.status()
    row["result"] = await result_row(job)
    info = await job.result_info()
    row["result_info_success"] = info.success if info else None
    await asyncio.sleep(0.5)  # had it gone on, it would finish its steps after 3 s
    row["stopped"] = not await redis.exists(f"test:finished:{job.job_id}")
    return row


async def test_arqs_abort_cancels_a_running_job_as_a_bare_arq_worker_does(
    redis_url: str, log_dir: Path
) -> None:
    with running(Stack(redis_url, log_dir), workers=1) as stack:
        async with arq_client(redis_url) as redis, bare_arq_worker(redis):
            bare = await aborted_while_running(redis, BARE_QUEUE)
            conveyor = await aborted_while_running(redis, DEFAULT_QUEUE)
        assert bare.pop("job_id")
        assert bare == {
            "running": "in_progress",
            "abort": True,
            "after": "complete",
            "result": ("raised", "CancelledError", ""),
            "result_info_success": False,
            "stopped": True,
        }
        for name in bare:
            assert (name, conveyor[name]) == (name, bare[name])
        assert stack.job(conveyor["job_id"])["state"] == "cancelled"


async def test_a_job_cancelled_through_conveyor_answers_arqs_client_as_an_aborted_one(
    redis_url: str, log_dir: Path
) -> None:
    """Conveyor's half of `abort()`: once a cancel ends a running job, arq's
    client sees what a bare arq worker's abort leaves (see the test above)."""
    with running(Stack(redis_url, log_dir), workers=1) as stack:
        async with arq_client(redis_url) as redis:
            job = await redis.enqueue_job("slow", steps=30, step_s=0.1, _queue_name=DEFAULT_QUEUE)
            assert job is not None
            assert await status_once_started(job) is JobStatus.in_progress
            assert stack.http.delete(f"/v1/jobs/{job.job_id}").status_code == 202
            assert await status_once_ended(job) is JobStatus.complete
            assert await result_row(job) == ("raised", "CancelledError", "")
            info = await job.result_info()
            assert info is not None
            assert (info.success, info.function, info.kwargs) == (
                False,
                "slow",
                {"steps": 30, "step_s": 0.1},
            )
            assert not await redis.exists(f"test:finished:{job.job_id}")
        assert stack.job(job.job_id)["state"] == "cancelled"


async def test_a_job_submitted_through_the_api_answers_arqs_client(
    redis_url: str, log_dir: Path
) -> None:
    """Not only jobs arq's client enqueued: any job's id works with arq's `Job`."""
    with running(Stack(redis_url, log_dir), workers=1) as stack:
        async with arq_client(redis_url) as redis:
            later = stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 30})
            job = Job(later["id"], redis, _queue_name=DEFAULT_QUEUE, _deserializer=job_deserializer)
            assert await job.status() is JobStatus.deferred
            submitted = stack.submit("slow", {"steps": 5, "step_s": 0.1})
            job = Job(
                submitted["id"], redis, _queue_name=DEFAULT_QUEUE, _deserializer=job_deserializer
            )
            assert await status_once_started(job) is JobStatus.in_progress
            assert await job.result(timeout=10, poll_delay=POLL_S) == 5
            info = await job.result_info()
            assert info is not None
            assert (info.success, info.job_try, info.kwargs["steps"]) == (True, 1, 5)
            assert "__conveyor__" in info.kwargs  # the request's trace context rides along
            failed = stack.submit("permanent", {})
            job = Job(
                failed["id"], redis, _queue_name=DEFAULT_QUEUE, _deserializer=job_deserializer
            )
            with pytest.raises(JobFailedError, match="this input can never work"):
                await job.result(timeout=10, poll_delay=POLL_S)
            assert await Job("no-such-job", redis).status() is JobStatus.not_found
        assert stack.job(submitted["id"])["result"] == 5
