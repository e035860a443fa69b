"""arq's own client against a running Conveyor worker and against a bare arq worker.

Every call here is arq's (`ArqRedis.enqueue_job`, `arq.jobs.Job`), through the
pool the migration page tells a bare arq user to make (its code block is
run as written, see `conveyor_arq_pool`). Each scenario runs on both:
Conveyor's worker (a real process, behind the api) on arq's default queue,
and arq's own `Worker` with plain functions of the same names on a queue of
its own; what arq's client answers is compared row by row, and the bare
worker's answers are pinned to arq's documented ones so that the comparison
cannot pass on two wrong answers. Both workers run one job at a time, so a
second job waits `queued` behind a first.
"""

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult, JobStatus
from arq.worker import Worker, func

from conveyor_core.catalog import DEFAULT_QUEUE, PermanentJobError
from conveyor_core.serializer import JobFailedError, job_deserializer, job_serializer
from conveyor_core.store.wire import META_KWARG
from tests.e2e.conftest import Stack, running
from tests.support import jobs
from tests.support.arq_client import conveyor_arq_pool

BARE_QUEUE = "arq:bare"
# How often the tests poll arq's client (arq's own default is 0.5 s).
POLL_S = 0.02
# What a try of `slow` costs, per step: long enough to be seen running.
STEP_S = 0.1

Row = dict[str, Any]
Ids = dict[str, str]  # the scenario's jobs by role, to look up in /v1/jobs


@dataclass(frozen=True)
class Enqueuer:
    """How a scenario's jobs are made: arq's `enqueue_job` onto `queue`."""

    redis: ArqRedis
    queue: str

    async def enqueue(self, function: str, defer_by_s: float | None = None, **kwargs: Any) -> Job:
        job = await self.redis.enqueue_job(
            function, _queue_name=self.queue, _defer_by=defer_by_s, **kwargs
        )
        assert job is not None
        return job


@dataclass(frozen=True)
class ApiSubmit(Enqueuer):
    """Submitted through Conveyor's api instead, then read as arq's `Job`
    made from the id, as the migration page says."""

    stack: Stack | None = None

    async def enqueue(self, function: str, defer_by_s: float | None = None, **kwargs: Any) -> Job:
        assert self.stack is not None
        params = {} if defer_by_s is None else {"defer_by_s": defer_by_s}
        submitted = await asyncio.to_thread(self.stack.submit, function, kwargs, params=params)
        return Job(
            submitted["id"], self.redis, _queue_name=self.queue, _deserializer=job_deserializer
        )


Scenario = Callable[[Enqueuer], Awaitable[tuple[Row, Ids]]]


# The bare arq worker's functions: the same names and outcomes as the test
# job types Conveyor's worker runs (tests/support/jobs.py), with the same
# marks in Redis.
async def slow(ctx: dict[str, Any], steps: int, step_s: float) -> int:
    for _ in range(steps):
        await asyncio.sleep(step_s)
    await ctx["redis"].set(f"test:finished:{ctx['job_id']}", "1")
    return steps


async def permanent(ctx: dict[str, Any], work_s: float = 0) -> None:
    await asyncio.sleep(work_s)
    raise PermanentJobError("this input can never work")


async def effect(ctx: dict[str, Any], work_s: float) -> str:
    await asyncio.sleep(work_s)
    await ctx["redis"].set(f"test:effect:{ctx['job_id']}", "1")
    return "done"


async def deferring(ctx: dict[str, Any], defer_s: float) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=defer_s)
    return int(ctx["job_try"])


async def bulky(ctx: dict[str, Any], data: str, echo: bool) -> dict[str, Any]:
    digest = hashlib.sha256(data.encode()).hexdigest()
    return {"size": len(data), "sha256": digest, "echo": data if echo else ""}


@contextlib.asynccontextmanager
async def arq_client(redis_url: str) -> AsyncIterator[ArqRedis]:
    """arq's client as the migration page tells a bare arq user to make it."""
    redis = await conveyor_arq_pool(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def bare_arq_worker(redis: ArqRedis) -> AsyncIterator[Worker]:
    """arq's own worker, in this process, on its own queue, one job at a time."""
    worker = Worker(
        functions=[
            func(slow, name="slow"),
            func(slow, name="stuck", timeout=0.3),
            func(permanent, name="permanent"),
            effect,
            func(effect, name="brief", keep_result=1),
            bulky,
            deferring,
        ],
        redis_pool=redis,
        queue_name=BARE_QUEUE,
        poll_delay=POLL_S,
        max_jobs=1,
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
def conveyor(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api and one Conveyor worker that runs one job at a time, as the bare one."""
    with running(Stack(redis_url, log_dir)) as stack:
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="1")
        yield stack


def state_in_api(stack: Stack, job_id: str) -> str:
    response = stack.http.get(f"/v1/jobs/{job_id}")
    if response.status_code == 404:
        return "gone"
    assert response.status_code == 200, response.text
    state: str = response.json()["state"]
    return state


async def status_once_started(job: Job, timeout_s: float = 10) -> JobStatus:
    """The first status arq's client reports after queued (or deferred)."""
    async with asyncio.timeout(timeout_s):
        while (status := await job.status()) in (JobStatus.queued, JobStatus.deferred):
            await asyncio.sleep(POLL_S)
    return status


async def status_once_deferred(job: Job, timeout_s: float = 10) -> JobStatus:
    """The status once the first try ended and the job waits for its next."""
    async with asyncio.timeout(timeout_s):
        while (status := await job.status()) in (JobStatus.queued, JobStatus.in_progress):
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
        return ("raised", "JobFailedError", value.type_name, value.message)
    if isinstance(value, BaseException):
        return ("raised", type(value).__name__, str(value))
    return value


async def result_row(job: Job, timeout_s: float = 10) -> Any:
    try:
        return outcome(await job.result(timeout=timeout_s, poll_delay=POLL_S))
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
        # A job submitted through the api carries its request's trace context
        # in a reserved kwarg; its handler never sees it.
        "kwargs": {k: v for k, v in info.kwargs.items() if k != META_KWARG},
        "job_try": info.job_try,
        "started_before_finishing": info.start_time <= info.finish_time,
    }


async def ended_rows(job: Job, row: Row) -> Row:
    """The rows of a job that ended: status, result(), result_info()."""
    row["after"] = await status_once_ended(job)
    row["result"] = await result_row(job)
    row["result_info"] = info_row(await job.result_info())
    return row


async def ran(redis: ArqRedis, job: Job) -> bool:
    """Whether the handler did its work (`slow` to its last step, `effect` at all)."""
    marks = [
        f"test:finished:{job.job_id}",
        f"test:effect:{job.job_id}",
        jobs.effect_key(job.job_id),
    ]
    return bool(await redis.exists(*marks))


async def keys_holding(redis: ArqRedis, text: str) -> dict[str, int]:
    """Every key whose value holds `text`, by its prefix, and how often."""
    found: dict[str, int] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values = [await redis.get(key) or b""]
        elif kind == "hash":
            values = list((await redis.hgetall(key)).values())  # type: ignore[misc]
        elif kind == "zset":
            values = list(await redis.zrange(key, 0, -1))
        elif kind == "list":
            values = list(await redis.lrange(key, 0, -1))  # type: ignore[misc]
        else:
            values = []
        count = sum(value.count(text.encode()) for value in values)
        if count:
            prefix = key.decode().split("{")[0].rsplit(":", 1)[0]
            found[prefix] = found.get(prefix, 0) + count
    return found


# -- scenarios: each runs on one worker's queue and says what arq's client saw


async def succeeds(to: Enqueuer) -> tuple[Row, Ids]:
    job = await to.enqueue("slow", steps=5, step_s=STEP_S)
    row: Row = {"running": await status_once_started(job)}
    await ended_rows(job, row)
    row["ran"] = await ran(to.redis, job)
    # abort() of a job that ended: False, and nothing changes.
    row["abort_when_done"] = await job.abort(timeout=5, poll_delay=POLL_S)
    row["after_abort"] = await job.status()
    row["result_after_abort"] = await result_row(job)
    return row, {"job": job.job_id}


async def fails_permanently(to: Enqueuer) -> tuple[Row, Ids]:
    job = await to.enqueue("permanent", work_s=0.5)
    row: Row = {"running": await status_once_started(job)}
    return await ended_rows(job, row), {"job": job.job_id}


async def times_out(to: Enqueuer) -> tuple[Row, Ids]:
    """A try past its timeout (`stuck`: 0.3 s, not retried): a builtin
    exception, raised again by `result()` as that class."""
    job = await to.enqueue("stuck", steps=30, step_s=STEP_S)
    row: Row = {"running": await status_once_started(job), "after": await status_once_ended(job)}
    try:
        await job.result(timeout=10, poll_delay=POLL_S)
    except TimeoutError as exc:
        row["raises"] = type(exc)  # the messages differ: Conveyor's says how long it ran
    info = await job.result_info()
    assert info is not None
    row["result_info"] = (info.success, type(info.result), info.function, info.job_try)
    row["ran"] = await ran(to.redis, job)
    return row, {"job": job.job_id}


async def deferred(to: Enqueuer) -> tuple[Row, Ids]:
    job = await to.enqueue("effect", work_s=0.5, defer_by_s=1)
    row: Row = {"before_due": await job.status()}
    row["running"] = await status_once_started(job)
    await ended_rows(job, row)
    row["ran"] = await ran(to.redis, job)
    return row, {"job": job.job_id}


async def retried(to: Enqueuer) -> tuple[Row, Ids]:
    """A job that raises arq's `Retry(defer=...)` on its first try."""
    job = await to.enqueue("deferring", defer_s=1)
    row: Row = {"between_tries": await status_once_deferred(job)}
    return await ended_rows(job, row), {"job": job.job_id}


async def aborted_while_running(to: Enqueuer) -> tuple[Row, Ids]:
    job = await to.enqueue("slow", steps=30, step_s=STEP_S)
    row: Row = {"running": await status_once_started(job)}
    row["abort"] = await job.abort(timeout=10, poll_delay=POLL_S)
    await ended_rows(job, row)
    await asyncio.sleep(0.5)  # had it gone on, it would finish its steps after 3 s
    row["ran"] = await ran(to.redis, job)
    return row, {"job": job.job_id}


async def aborted_while_queued(to: Enqueuer) -> tuple[Row, Ids]:
    """A job waiting behind a running one (one job at a time) is aborted."""
    # Long enough that Conveyor's worker reads arq's abort set (once per idle
    # poll, 1 s) before the slot frees; a bare arq worker reads it as it
    # takes the job, when the slot frees.
    first = await to.enqueue("slow", steps=40, step_s=STEP_S)
    assert await status_once_started(first) is JobStatus.in_progress
    job = await to.enqueue("effect", work_s=0)
    row: Row = {"waiting": await job.status()}
    row["abort"] = await job.abort(timeout=15, poll_delay=POLL_S)
    await ended_rows(job, row)
    row["ran"] = await ran(to.redis, job)
    row["first_result"] = await result_row(first)
    return row, {"job": job.job_id, "first": first.job_id}


async def aborted_while_deferred(to: Enqueuer) -> tuple[Row, Ids]:
    """arq's abort() of a job due later moves it to the front of the queue
    (score 1), so a worker takes it now and sees it aborted."""
    job = await to.enqueue("slow", steps=30, step_s=STEP_S, defer_by_s=60)
    row: Row = {"before_due": await job.status()}
    row["abort"] = await job.abort(timeout=10, poll_delay=POLL_S)
    await ended_rows(job, row)
    row["ran"] = await ran(to.redis, job)
    return row, {"job": job.job_id}


async def expires(to: Enqueuer) -> tuple[Row, Ids]:
    """A result is answered for as long as it is kept (`brief`: one second)."""
    job = await to.enqueue("brief", work_s=0)
    row: Row = {"kept": await result_row(job)}
    await asyncio.sleep(1.5)
    row["after_expiry"] = await job.status()
    row["result_after_expiry"] = await result_row(job, timeout_s=1)
    row["result_info_after_expiry"] = info_row(await job.result_info())
    row["unknown_id"] = await Job("no-such-job", to.redis, _queue_name=to.queue).status()
    return row, {"job": job.job_id}


async def stored_once(to: Enqueuer) -> tuple[Row, Ids]:
    """Where a finished job's payload and result are kept: the payload's text
    and the result's (the same text, echoed) in one key, each once."""
    marker = f"payload-{to.queue}-7f3a"
    job = await to.enqueue("bulky", data=marker, echo=True)
    row: Row = {"echoed": (await job.result(timeout=10, poll_delay=POLL_S))["echo"] == marker}
    row["keys_holding_it"] = await keys_holding(to.redis, marker)
    return row, {"job": job.job_id}


async def compare(
    redis_url: str, scenario: Scenario, conveyors: Callable[[ArqRedis], Enqueuer]
) -> tuple[Row, Ids]:
    """Run the scenario on both workers, the bare one's jobs enqueued by
    arq's client, Conveyor's as `conveyors` makes them; arq's client must
    answer alike. The bare worker's rows, and Conveyor's job ids."""
    async with arq_client(redis_url) as redis, bare_arq_worker(redis):
        bare, _ = await scenario(Enqueuer(redis, BARE_QUEUE))
        conveyor, ids = await scenario(conveyors(redis))
    for name in bare:
        assert (name, conveyor[name]) == (name, bare[name])
    assert conveyor.keys() == bare.keys()
    return bare, ids


CANCELLED = ("raised", "CancelledError", "")
NOT_KEPT = (
    "raised",
    "ResultNotFound",
    "Not waiting for job result because the job is not in queue. "
    "Is the worker function configured to keep result?",
)
PERMANENT_ERROR = ("raised", "JobFailedError", "PermanentJobError", "this input can never work")


# What arq's documentation says its client answers (checked on the bare
# worker, which Conveyor's must then match), and what /v1/jobs says of
# Conveyor's jobs.
CASES: list[tuple[Scenario, Row, dict[str, str]]] = [
    (
        succeeds,
        {
            "running": "in_progress",
            "after": "complete",
            "result": 5,
            "ran": True,
            "abort_when_done": False,
            "after_abort": "complete",
            "result_after_abort": 5,
        },
        {"job": "complete"},
    ),
    (
        fails_permanently,
        {"running": "in_progress", "after": "complete", "result": PERMANENT_ERROR},
        {"job": "dead"},
    ),
    (
        times_out,
        {
            "running": "in_progress",
            "after": "complete",
            "raises": TimeoutError,
            "result_info": (False, TimeoutError, "stuck", 1),
            "ran": False,
        },
        {"job": "dead"},
    ),
    (
        deferred,
        {"before_due": "deferred", "running": "in_progress", "result": "done", "ran": True},
        {"job": "complete"},
    ),
    (
        retried,
        {"between_tries": "deferred", "after": "complete", "result": 2},
        {"job": "complete"},
    ),
    (
        aborted_while_running,
        {"running": "in_progress", "abort": True, "after": "complete", "result": CANCELLED},
        {"job": "cancelled"},
    ),
    (
        aborted_while_queued,
        {"waiting": "queued", "abort": True, "result": CANCELLED, "ran": False},
        {"job": "cancelled", "first": "complete"},
    ),
    (
        aborted_while_deferred,
        {"before_due": "deferred", "abort": True, "result": CANCELLED, "ran": False},
        {"job": "cancelled"},
    ),
    (
        expires,
        {
            "kept": "done",
            "after_expiry": "not_found",
            "result_after_expiry": NOT_KEPT,
            "result_info_after_expiry": None,
            "unknown_id": "not_found",
        },
        {"job": "gone"},
    ),
    (
        stored_once,
        # arq's result key, once in its kwargs and once in its result; nowhere else.
        {"echoed": True, "keys_holding_it": {"arq:result": 2}},
        {"job": "complete"},
    ),
]


@pytest.mark.parametrize("via", ["arq_client", "api"])
@pytest.mark.parametrize(
    ("scenario", "arqs_answers", "states"),
    CASES,
    ids=[scenario.__name__ for scenario, _, _ in CASES],
)
async def test_arqs_client_answers_as_a_bare_arq_worker_would(
    conveyor: Stack,
    redis_url: str,
    via: str,
    scenario: Scenario,
    arqs_answers: Row,
    states: dict[str, str],
) -> None:
    """Conveyor's jobs enqueued by arq's client, or submitted through the api."""

    def conveyors(redis: ArqRedis) -> Enqueuer:
        if via == "api":
            return ApiSubmit(redis, DEFAULT_QUEUE, conveyor)
        return Enqueuer(redis, DEFAULT_QUEUE)

    bare, ids = await compare(redis_url, scenario, conveyors)
    assert {name: bare[name] for name in arqs_answers} == arqs_answers
    assert {role: state_in_api(conveyor, job_id) for role, job_id in ids.items()} == states


async def test_a_job_cancelled_through_conveyor_answers_arqs_client_as_an_aborted_one(
    conveyor: Stack, redis_url: str
) -> None:
    """Conveyor's half of `abort()`: once a cancel ends a running job, arq's
    client sees what a bare arq worker's abort leaves (aborted_while_running)."""
    async with arq_client(redis_url) as redis:
        job = await redis.enqueue_job("slow", steps=30, step_s=STEP_S, _queue_name=DEFAULT_QUEUE)
        assert job is not None
        assert await status_once_started(job) is JobStatus.in_progress
        assert conveyor.http.delete(f"/v1/jobs/{job.job_id}").status_code == 202
        row = await ended_rows(job, {})
        assert row == {
            "after": "complete",
            "result": CANCELLED,
            "result_info": {
                "success": False,
                "result": CANCELLED,
                "function": "slow",
                "args": [],
                "kwargs": {"steps": 30, "step_s": STEP_S},
                "job_try": 1,
                "started_before_finishing": True,
            },
        }
        assert not await ran(redis, job)
    assert state_in_api(conveyor, job.job_id) == "cancelled"


def job_of(redis: ArqRedis, job_id: str) -> Job:
    """arq's `Job` for an id it did not enqueue, as the migration page says to make it."""
    return Job(job_id, redis, _queue_name=DEFAULT_QUEUE, _deserializer=job_deserializer)


async def test_arqs_status_of_api_jobs_by_priority(conveyor: Stack, redis_url: str) -> None:
    """A job the api submits reads `queued` while it waits at the default
    priority or above, `deferred` below it (arq's status() compares the
    queue's score with now, and a lower priority's scores lie in the future:
    conveyor_core/scores.py; the migration page says so); `abort()` cancels
    both before they run."""
    async with arq_client(redis_url) as redis:
        to = ApiSubmit(redis, DEFAULT_QUEUE, conveyor)
        # Long enough for the aborts below (each read within a second) to come first.
        first = await to.enqueue("slow", steps=40, step_s=STEP_S)
        assert await status_once_started(first) is JobStatus.in_progress
        # Behind it (one job at a time).
        waiting = job_of(redis, conveyor.submit("effect", {"work_s": 0})["id"])
        urgent = job_of(
            redis, conveyor.submit("effect", {"work_s": 0}, params={"priority": 0})["id"]
        )
        low = job_of(redis, conveyor.submit("effect", {"work_s": 0}, params={"priority": 9})["id"])
        statuses = [await j.status() for j in (waiting, urgent, low)]
        assert statuses == ["queued", "queued", "deferred"]
        assert await waiting.abort(timeout=10, poll_delay=POLL_S) is True
        assert await low.abort(timeout=10, poll_delay=POLL_S) is True
        assert await urgent.result(timeout=10, poll_delay=POLL_S) == "done"
        assert await first.result(timeout=10, poll_delay=POLL_S) == 40
        states = [state_in_api(conveyor, j.job_id) for j in (first, waiting, urgent, low)]
    assert states == ["complete", "cancelled", "complete", "cancelled"]
    assert [j for j in (waiting.job_id, low.job_id) if conveyor.starts(j)] == []  # never started
