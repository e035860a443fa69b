"""The worker in-process against a real Redis: registration, ctx resources, a job run."""

import asyncio
import contextlib
import os
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from redis.exceptions import ResponseError

from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobPublic, JobState, now_ms
from conveyor_core.keys import FUNCTION_LIBRARIES_SEEN
from conveyor_core.store import Claim, JobStore
from conveyor_seed import CREATE_TASK, CreateTask
from conveyor_worker.policy import Stop
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ABORT_MAX_AGE_S, ConveyorWorker, worker_settings
from tests.support import jobs
from tests.worker.conftest import make_worker


async def test_worker_registers_exactly_the_catalog_of_its_queue(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    catalog = load_catalog(jobs.MODULES.split(","))
    names = {t.name for t in catalog.for_queue(CREATE_TASK.queue)}
    assert set(worker.processor.job_types) == set(worker.processor.handlers) == names
    assert worker.queue_name == CREATE_TASK.queue


def test_a_queue_without_job_types_is_refused(redis: ArqRedis) -> None:
    with pytest.raises(ValueError, match="no job types on queue 'nowhere'"):
        worker_settings(Settings(queue="nowhere"), redis, load_catalog())


async def test_worker_runs_create_task_to_completion(redis: ArqRedis, redis_url: str) -> None:
    store = JobStore(redis)
    submitted = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0.01))

    worker = make_worker(redis, redis_url, burst=True)
    await worker.main()
    await worker.close()

    # The result is stored once, as JSON, in arq's result key (the record holds no copy).
    assert not await redis.exists(f"arq:job:{submitted.job_id}")
    assert not await redis.hexists(f"conveyor:job:{submitted.job_id}", "result")  # type: ignore[misc]
    assert (await redis.get(f"arq:result:{submitted.job_id}") or b"").startswith(b'{"t":1,')
    record = await JobStore(redis).get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.COMPLETE
    assert record.result == 0.01
    assert record.tries == 1


async def test_a_busy_slot_takes_its_next_job_with_the_end_of_the_last(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis)
    submitted = [await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0)) for _ in range(5)]
    worker = make_worker(redis, redis_url, burst=True, max_jobs=1)
    polls = []
    claim = worker.store.claim

    async def counted(*args: Any, **kwargs: Any) -> Claim:
        polls.append(await claim(*args, **kwargs))
        return polls[-1]

    worker.store.claim = counted  # type: ignore[method-assign]
    await worker.main()
    await worker.close()

    for job in submitted:
        record = await store.get(job.job_id)
        assert record is not None
        assert (record.state, record.tries) == (JobState.COMPLETE, 1)
    # The poll loop claimed the first job; each end of a try claimed the next.
    assert sum(len(c.jobs) for c in polls) == 1
    # Every try left the map of running tries.
    assert worker.running == {}


def test_a_deferred_jobs_wake_up_sets_the_timer_and_claims_nothing(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    worker._claim_due = False
    worker._next_due_ms = 5_000.0
    worker._on_wake_message(b"due 9000")  # later than what the worker waits for
    assert (worker._claim_due, worker._next_due_ms, worker._wake.is_set()) == (False, 5_000, False)
    worker._on_wake_message(b"due 3000")
    assert (worker._claim_due, worker._next_due_ms, worker._wake.is_set()) == (False, 3_000, True)
    worker._on_wake_message(b"some-job-id")  # a job due now
    assert worker._claim_due


async def test_startup_opens_and_shutdown_closes_shared_resources(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    await worker.startup()
    assert worker.processor.resources["test_ledger"] == jobs.Ledger(os.getpid())
    assert await redis.get(f"test:ledger:opened:{os.getpid()}") == b"1"

    resources = worker.processor.resources
    await worker.close()
    assert await redis.get(f"test:ledger:closed:{os.getpid()}") == b"1"
    assert resources == {}


async def test_a_job_whose_last_try_never_finished_goes_dead_without_running(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis)
    catalog = load_catalog(jobs.MODULES.split(","))
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    # As if every try so far had died with its worker: the record's last try never ended.
    await redis.hset(  # type: ignore[misc]
        f"conveyor:job:{submitted.job_id}",
        mapping={"state": "in_progress", "version": 3, "tries": catalog["effect"].retry.max_tries},
    )

    worker = make_worker(redis, redis_url, burst=True)
    await worker.main()
    await worker.close()

    record = await JobStore(redis).get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.DEAD
    assert record.error is not None
    assert record.error.type == "TriesExhaustedError"
    never_ran = await redis.llen(f"test:starts:{submitted.job_id}") == 0  # type: ignore[misc]
    assert never_ran


async def test_the_claim_starts_the_record_and_the_try_count_comes_from_it(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    catalog = store.catalog
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    # Two tries so far by the record (shutdowns that put the job back used none).
    await redis.hset(  # type: ignore[misc]
        f"conveyor:job:{submitted.job_id}", mapping={"state": "queued", "version": 5, "tries": 2}
    )

    worker = await started_worker(redis, redis_url)
    await worker._claim_and_start()
    token = worker.running[submitted.job_id].fence.token
    record = await store.get(submitted.job_id)
    await asyncio.gather(*running_tasks(worker))
    await worker.close()

    assert record is not None
    assert record.state is JobState.IN_PROGRESS
    assert record.tries == 3
    # The record holds the try's token (as its lock did); arq's retry key is not used.
    assert token
    assert await redis.hget(f"conveyor:job:{submitted.job_id}", "token") == token.encode()  # type: ignore[misc]
    assert not await redis.exists(f"arq:retry:{submitted.job_id}")
    finished = await store.get(submitted.job_id)
    assert finished is not None
    assert finished.state is JobState.COMPLETE
    assert finished.tries == 3
    assert finished.version == 7  # claimed, completed
    assert await redis.lrange(f"test:tries:{submitted.job_id}", 0, -1) == [b"3"]  # type: ignore[misc]


async def test_a_job_whose_data_is_gone_is_settled_not_left_in_progress(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    claim = store.claim

    async def claim_then_expire(*args: Any, **kwargs: Any) -> Claim:
        claimed = await claim(*args, **kwargs)
        # Its data expired just before the claim read it.
        return Claim([replace(c, job_bytes=None) for c in claimed.jobs], claimed.next_due_ms)

    worker.store.claim = claim_then_expire  # type: ignore[method-assign]
    await worker._claim_and_start()
    await asyncio.gather(*running_tasks(worker))
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.DEAD
    assert record.error is not None
    assert record.error.type == "JobDataMissing"
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 0  # type: ignore[misc]
    assert not await redis.zscore(CREATE_TASK.queue, submitted.job_id)


async def test_a_job_cancelled_between_its_claim_and_its_start_never_runs(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog([jobs.MODULE])
    store = JobStore(redis, catalog)
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    await worker._claim_and_start()  # its task is created, not started yet
    # As the cancel check finds it, before the task's first step.
    worker._stop_try(worker.running[submitted.job_id], Stop.CANCELLED)
    await asyncio.gather(*running_tasks(worker))
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 0  # type: ignore[misc]


async def test_a_job_whose_worker_died_with_a_cancel_pending_is_cancelled_not_run(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    await worker._claim_and_start()
    await asyncio.gather(*running_tasks(worker))
    # As if it ran on a worker that was killed: in progress, lock gone, cancel asked.
    await redis.hset(f"conveyor:job:{submitted.job_id}", "state", "in_progress")  # type: ignore[misc]
    await redis.zadd(CREATE_TASK.queue, {submitted.job_id: 1})
    outcome, _ = await store.cancel(submitted.job_id)
    assert outcome == "cancelling"

    await worker._claim_and_start()
    await asyncio.gather(*running_tasks(worker))
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 1  # type: ignore[misc]


async def started_worker(redis: ArqRedis, redis_url: str) -> ConveyorWorker:
    """A worker whose resources are open, driven by the test one claim at a time."""
    worker = make_worker(redis, redis_url)
    await worker.startup()
    return worker


def running_tasks(worker: ConveyorWorker) -> list["asyncio.Task[None]"]:
    return [t.task for t in worker.running.values() if t.task is not None]


async def test_a_retry_with_defer_is_retrying_then_completes_on_try_two(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    worker = make_worker(redis, redis_url)
    running = asyncio.create_task(worker.main())
    try:
        await ready(worker)
        sent_s = time.time()
        submitted = await enqueue(store, catalog["deferring"], jobs.Deferring(defer_s=1))
        retrying = await state_of(store, submitted.job_id, JobState.RETRYING, timeout_s=2)
        assert retrying.error is not None
        assert (retrying.tries, retrying.error.type) == (1, "Retry")
        assert retrying.next_try_at is not None
        assert retrying.finished_at is None
        # The delay it asked for, from the end of try 1 as the record keeps it.
        (first,) = retrying.attempts
        assert first.finished_at is not None
        assert retrying.next_try_at - first.finished_at == timedelta(seconds=1)
        done = await state_of(store, submitted.job_id, JobState.COMPLETE, timeout_s=3)
        # Within 3 s of the submit, as the issue asks: the deferral's second and
        # a busy machine's slack; a deferral misread (a second as 1,000) fails.
        assert time.time() - sent_s < 3
        assert (done.tries, done.result) == (2, 2)
        # Try 2 ran when it was due, not before.
        second = done.attempts[-1]
        assert second.started_at is not None
        assert second.started_at >= retrying.next_try_at
    finally:
        worker.request_stop()
        await running
        await worker.close()


async def state_of(store: JobStore, job_id: str, state: JobState, timeout_s: float) -> JobPublic:
    async with asyncio.timeout(timeout_s):
        while True:
            job = await store.get(job_id)
            if job is not None and job.state is state:
                return job
            await asyncio.sleep(0.01)


async def ready(worker: ConveyorWorker) -> None:
    """Until the worker's loop turns with its resources open."""
    async with asyncio.timeout(10):
        while not (worker.redis_ok and worker.processor.resources):
            await asyncio.sleep(0.01)


async def test_arqs_client_abort_cancels_a_running_job(redis: ArqRedis, redis_url: str) -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    worker = make_worker(redis, redis_url, idle_poll_s=0.2)
    running = asyncio.create_task(worker.main())
    try:
        await ready(worker)
        submitted = await enqueue(store, catalog["slow"], jobs.Slow(steps=100, step_s=0.1))
        await state_of(store, submitted.job_id, JobState.IN_PROGRESS, timeout_s=5)
        # As arq's Job.abort() asks: the id in arq's abort set.
        await redis.zadd(abort_jobs_ss, {submitted.job_id: now_ms()})
        cancelled = await state_of(
            store, submitted.job_id, JobState.CANCELLED, timeout_s=15
        )  # a loaded machine: the check runs each idle poll
    finally:
        worker.request_stop()
        await running
        await worker.close()
    assert cancelled.tries == 1
    assert not await redis.exists(f"test:finished:{submitted.job_id}")
    # Heard once: the id left arq's abort set.
    assert await redis.zscore(abort_jobs_ss, submitted.job_id) is None


async def test_arqs_client_abort_cancels_a_waiting_job(redis: ArqRedis, redis_url: str) -> None:
    """A job waiting behind a busy slot that arq's client aborts is cancelled
    where it waits, never run; aborts of ids no worker acts on expire."""
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    worker = make_worker(redis, redis_url, idle_poll_s=0.2, max_jobs=1)
    running = asyncio.create_task(worker.main())
    try:
        await ready(worker)
        busy = await enqueue(store, catalog["slow"], jobs.Slow(steps=300, step_s=0.1))
        await state_of(store, busy.job_id, JobState.IN_PROGRESS, timeout_s=5)
        waiting = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
        await redis.zadd(
            abort_jobs_ss,
            {
                waiting.job_id: now_ms(),
                "an-ended-job": now_ms(),
                "a-stale-abort": now_ms() - (ABORT_MAX_AGE_S + 1) * 1000,
            },
        )
        cancelled = await state_of(store, waiting.job_id, JobState.CANCELLED, timeout_s=15)
        assert (await store.cancel(busy.job_id))[0] == "cancelling"
        await state_of(store, busy.job_id, JobState.CANCELLED, timeout_s=15)
    finally:
        worker.request_stop()
        await running
        await worker.close()
    assert cancelled.tries == 0
    assert await redis.lrange(f"test:starts:{waiting.job_id}", 0, -1) == []  # type: ignore[misc]
    assert await redis.zrange(abort_jobs_ss, 0, -1) == [b"an-ended-job"]


async def test_housekeeping_deletes_unused_function_libraries_once_per_interval(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url, library_max_unseen_s=60)
    stale = "conveyor_" + "d" * 16
    text = f"#!lua name={stale}\nredis.register_function('{stale}_f', function() return 1 end)"
    await redis.function_load(text, replace=True)  # type: ignore[misc]
    await redis.hset(FUNCTION_LIBRARIES_SEEN, stale, str(now_ms() - 120_000))  # type: ignore[misc]
    try:
        await worker._delete_unused_libraries()
        assert stale not in str(await redis.function_list())  # type: ignore[misc]
        # Another round within the interval (any worker's) leaves it be.
        await redis.function_load(text, replace=True)  # type: ignore[misc]
        await redis.hset(FUNCTION_LIBRARIES_SEEN, stale, str(now_ms() - 120_000))  # type: ignore[misc]
        await worker._delete_unused_libraries()
        assert stale in str(await redis.function_list())  # type: ignore[misc]
        # The heartbeat says the worker uses its own library.
        await worker._announce()
        own = worker.store.functions.name
        assert await redis.hexists(FUNCTION_LIBRARIES_SEEN, own)  # type: ignore[misc]
    finally:
        with contextlib.suppress(ResponseError):
            await redis.function_delete(stale)  # type: ignore[misc]
