"""One try through `Processor.process()` against a real Redis, one node and a
cluster, on a queue of one shard and of three: each outcome the policy
decides, the cases where the handler never runs, and a stale try."""

import asyncio
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY
from pydantic import BaseModel

from conveyor_core.catalog import Catalog, Queue, load_catalog
from conveyor_core.context import JobContext
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobPublic, JobState, now_ms
from conveyor_core.store import ArqJob, Claim, Claimed, Fetch, JobStore
from conveyor_worker.policy import Stop
from conveyor_worker.process import Processor, Try
from conveyor_worker.worker import resolve_handler
from tests.support import jobs
from tests.support.locks import lapse_lock

CATALOG = load_catalog(jobs.MODULES.split(","))
QUEUE = CATALOG["effect"].queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    return node_or_cluster_redis


@pytest.fixture(params=[1, 3], ids=["1 shard", "3 shards"])
def store(redis: ArqRedis, request: pytest.FixtureRequest) -> JobStore:
    """The test catalog, its queue in one shard (today's layout) or three."""
    queues = [Queue(QUEUE, shards=request.param)]
    return JobStore(redis, Catalog(CATALOG, CATALOG.resources, CATALOG.api_routers, queues))


@pytest.fixture
def processor(store: JobStore) -> Processor:
    handlers = {t.name: resolve_handler(t.handler) for t in CATALOG.for_queue(QUEUE)}
    return Processor(QUEUE, store, store.catalog, handlers, instrument=False)


async def claim_one(store: JobStore) -> Try:
    """The one due job, from whichever shard of the queue it is on."""
    claimed = [
        job
        for shard in store.catalog.shards(QUEUE)
        for job in (await store.claim(shard, 1, **CLAIM)).jobs
    ]
    assert len(claimed) == 1
    return try_of(claimed[0])


def try_of(claimed: Claimed) -> Try:
    return Try(claimed, Fence(QUEUE, claimed.job_id, claimed.token))


async def submit_and_claim(store: JobStore, job_type: str, payload: BaseModel) -> Try:
    await enqueue(store, CATALOG[job_type], payload)
    return await claim_one(store)


async def record(store: JobStore, job_id: str) -> JobPublic:
    job = await store.get(job_id)
    assert job is not None
    return job


def delay_after_last_try(job: JobPublic) -> timedelta:
    """From the end of the job's last try, as its record keeps it, to its next."""
    assert job.next_try_at is not None
    finished_at = job.attempts[-1].finished_at
    assert finished_at is not None
    return job.next_try_at - finished_at


async def starts(redis: ArqRedis, job_id: str) -> int:
    return int(await redis.llen(f"test:starts:{job_id}"))  # type: ignore[misc]


# One node only: the test handler `effect` counts in one EVAL over two slots.
@pytest.mark.parametrize("node_or_cluster_redis", ["node"], indirect=True)
async def test_success_completes_with_the_result(store: JobStore, processor: Processor) -> None:
    try_ = await submit_and_claim(store, "effect", jobs.Effect(work_s=0))
    assert await processor.process(try_) is JobState.COMPLETE
    job = await record(store, try_.job_id)
    assert (job.state, job.result, job.tries) == (JobState.COMPLETE, "done", 1)


async def test_a_failure_retries_with_backoff(store: JobStore, processor: Processor) -> None:
    try_ = await submit_and_claim(store, "flaky", jobs.Flaky(fail_times=1))
    assert await processor.process(try_) is JobState.RETRYING
    job = await record(store, try_.job_id)
    assert job.state is JobState.RETRYING
    assert job.error is not None
    assert job.error.type == "RuntimeError"
    # The quick policy's first backoff, 0.1 to 0.2 s, from the try's end.
    assert timedelta(seconds=0.1) <= delay_after_last_try(job) <= timedelta(seconds=0.2)


async def test_arqs_retry_defers_by_what_it_asked(store: JobStore, processor: Processor) -> None:
    try_ = await submit_and_claim(store, "deferring", jobs.Deferring(defer_s=1))
    assert await processor.process(try_) is JobState.RETRYING
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert (job.state, job.tries, job.error.type) == (JobState.RETRYING, 1, "Retry")
    assert delay_after_last_try(job) == timedelta(seconds=1)


async def test_a_permanent_error_is_dead(store: JobStore, processor: Processor) -> None:
    try_ = await submit_and_claim(store, "permanent", jobs.Doomed())
    assert await processor.process(try_) is JobState.DEAD
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert (job.state, job.error.type) == (JobState.DEAD, "PermanentJobError")


async def test_no_tries_left_is_dead_without_running(
    redis: ArqRedis, store: JobStore, processor: Processor
) -> None:
    submitted = await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))
    # Every try so far died with its worker: the record's last try never ended.
    max_tries = CATALOG["effect"].retry.max_tries
    await redis.hset(  # type: ignore[misc]
        f"conveyor:job:{submitted.job_id}",
        mapping={"state": "queued", "version": 3, "tries": max_tries},
    )
    try_ = await claim_one(store)
    assert await processor.process(try_) is JobState.DEAD
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert job.error.type == "TriesExhaustedError"
    assert await starts(redis, try_.job_id) == 0


async def test_a_timeout_is_dead_when_the_policy_does_not_retry_it(
    store: JobStore, processor: Processor
) -> None:
    try_ = await submit_and_claim(store, "stuck", jobs.Slow(steps=10, step_s=0.1))
    assert await processor.process(try_) is JobState.DEAD
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert (job.error.type, job.error.message) == ("TimeoutError", "timed out after 0.3 s")


async def test_an_invalid_payload_is_dead_without_running(
    redis: ArqRedis, store: JobStore, processor: Processor
) -> None:
    await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))
    try_ = await claim_one(store)
    bad = Claimed(
        try_.job_id,
        try_.claimed.score_ms,
        try_.claimed.job_try,
        try_.claimed.token,
        _with_payload(try_.claimed.job_bytes, {"work_s": "long"}),
    )
    assert await processor.process(try_of(bad)) is JobState.DEAD
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert job.error.type == "ValidationError"
    assert await starts(redis, try_.job_id) == 0


def _with_payload(job_bytes: bytes | None, payload: dict[str, Any]) -> bytes:
    assert job_bytes is not None
    job = ArqJob.decode(job_bytes)
    assert job is not None
    return ArqJob(job.function, payload, job.meta, job.enqueued_at_ms).encode()


async def run_until_started(
    redis: ArqRedis, processor: Processor, try_: Try
) -> "asyncio.Task[JobState | None]":
    task = asyncio.create_task(processor.process(try_))
    try_.task = task  # type: ignore[assignment]
    async with asyncio.timeout(5):
        while not await starts(redis, try_.job_id):
            await asyncio.sleep(0.01)
    return task


@pytest.mark.parametrize(
    ("stop", "state", "tries"),
    [(Stop.SHUTDOWN, JobState.QUEUED, 0), (Stop.CANCELLED, JobState.CANCELLED, 1)],
)
async def test_a_stopped_try_is_put_back_or_cancelled(
    redis: ArqRedis,
    store: JobStore,
    processor: Processor,
    stop: Stop,
    state: JobState,
    tries: int,
) -> None:
    try_ = await submit_and_claim(store, "slow", jobs.Slow(steps=50, step_s=0.1))
    task = await run_until_started(redis, processor, try_)
    assert try_.in_handler
    try_.stop = stop
    task.cancel()
    assert await task is state
    job = await record(store, try_.job_id)
    # Interrupted: queued again, the try not counted; cancelled: final.
    assert (job.state, job.tries) == (state, tries)
    assert not await redis.exists(f"arq:in-progress:{try_.job_id}")


# The race does not depend on where the job is kept: one node is enough.
@pytest.mark.parametrize("node_or_cluster_redis", ["node"], indirect=True)
@pytest.mark.parametrize(
    ("stop", "state"), [(Stop.SHUTDOWN, JobState.QUEUED), (Stop.CANCELLED, JobState.CANCELLED)]
)
async def test_a_stop_as_the_handlers_await_completes_ends_the_handler_there(
    store: JobStore, stop: Stop, state: JobState
) -> None:
    """The try is stopped in the loop turn its handler's awaited future
    completes. Under Python 3.11's asyncio.wait_for that cancel was lost: the
    handler ran on to its end and the job completed, the shutdown or the
    client's cancel unheard. Under asyncio.timeout the cancel lands at the await."""
    awaiting, released = asyncio.Event(), asyncio.Event()
    ran_on: list[str] = []

    async def handler(ctx: JobContext, payload: jobs.Effect) -> str:
        awaiting.set()
        await released.wait()
        ran_on.append(ctx.job_id)
        return "done"

    processor = Processor(QUEUE, store, store.catalog, {"effect": handler}, instrument=False)
    try_ = await submit_and_claim(store, "effect", jobs.Effect(work_s=0))
    task = asyncio.create_task(processor.process(try_))
    async with asyncio.timeout(5):
        await awaiting.wait()
    # One turn, no await between: the handler's wait is over, and the worker
    # stops the try as _stop_try does.
    released.set()
    try_.stop = stop
    task.cancel()
    assert await task is state
    assert ran_on == []
    assert (await record(store, try_.job_id)).state is state


async def test_unknown_job_type_is_dead_with_a_clear_error(
    redis: ArqRedis, store: JobStore, processor: Processor
) -> None:
    submitted = await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))
    try_ = await claim_one(store)
    elsewhere = _renamed(try_.claimed, "not_here")
    assert await processor.process(try_of(elsewhere)) is JobState.DEAD
    job = await record(store, submitted.job_id)
    assert job.error is not None
    assert job.error.type == "UnknownJobType"
    assert "'not_here'" in job.error.message


def _renamed(claimed: Claimed, function: str) -> Claimed:
    assert claimed.job_bytes is not None
    job = ArqJob.decode(claimed.job_bytes)
    assert job is not None
    raw = ArqJob(function, job.payload, job.meta, job.enqueued_at_ms).encode()
    return Claimed(claimed.job_id, claimed.score_ms, claimed.job_try, claimed.token, raw)


class _Planted:
    """Unpickling this creates the marker file: the side effect a planted pickle wants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


# One node only: a bare arq id (no queue tag), whose keys span slots on a cluster.
@pytest.mark.parametrize("node_or_cluster_redis", ["node"], indirect=True)
async def test_a_planted_pickle_is_dead_lettered_and_never_unpickled(
    redis: ArqRedis, store: JobStore, processor: Processor, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    job_id = "planted"
    planted = pickle.dumps({"t": "effect", "f": "effect", "k": {"x": _Planted(marker)}})
    await redis.set(f"arq:job:{job_id}", planted)
    await redis.zadd(QUEUE, {job_id: now_ms()})

    try_ = await claim_one(store)
    assert try_.job_id == job_id
    assert await processor.process(try_) is JobState.DEAD

    job = await record(store, job_id)
    assert job.error is not None
    assert (job.error.type, job.error.message) == (
        "InvalidJobData",
        "job data is not valid JSON job data",
    )
    assert not marker.exists()


def _stale_calls(call: str) -> float:
    value = REGISTRY.get_sample_value("conveyor_stale_calls_total", {"queue": QUEUE, "call": call})
    return value or 0.0


# One node only: the test handler `effect` counts in one EVAL over two slots.
@pytest.mark.parametrize("node_or_cluster_redis", ["node"], indirect=True)
async def test_a_stale_trys_end_is_refused_counted_and_fetches_nothing(
    redis: ArqRedis, store: JobStore, processor: Processor, caplog: pytest.LogCaptureFixture
) -> None:
    submitted = await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))
    stale = await claim_one(store)
    await lapse_lock(redis, QUEUE, submitted.job_id)
    live = await claim_one(store)
    await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))  # for a fetch to find
    fetched: list[Claim] = []

    class Slot:
        def fetch(self) -> Fetch:
            return Fetch(1, 10_000, 60_000, 100)

        def take(self, claim: Claim) -> None:
            fetched.append(claim)

    processor.next_jobs = Slot()
    before = _stale_calls("end")
    assert await processor.process(stale) is None
    assert _stale_calls("end") == before + 1
    assert fetched == []
    job = await record(store, submitted.job_id)
    assert (job.state, job.tries) == (JobState.IN_PROGRESS, 2)
    assert "this try is stale" in caplog.text

    assert await processor.process(live) is JobState.COMPLETE
    assert len(fetched) == 1
    job = await record(store, submitted.job_id)
    assert (job.state, job.tries, job.result) == (JobState.COMPLETE, 2, "done")
