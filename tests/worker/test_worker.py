"""The worker in-process against a real Redis: registration, ctx resources, a job run."""

import asyncio
import os
from typing import Any

import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobState
from conveyor_core.store import Claim, JobStore
from conveyor_seed import CREATE_TASK, CreateTask
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.support import jobs
from tests.worker.conftest import make_worker


async def test_worker_registers_exactly_the_catalog_of_its_queue(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    catalog = load_catalog(jobs.MODULES.split(","))
    assert set(worker.functions) == {t.name for t in catalog.for_queue(CREATE_TASK.queue)}
    assert worker.queue_name == CREATE_TASK.queue
    # arq's own limit is above the policy's, so the wrapper decides the last try.
    assert worker.functions["flaky"].max_tries == catalog["flaky"].retry.max_tries + 1


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
    free_slots = worker.sem._value  # arq's: max_jobs + 1
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
    # Every slot handed on was given back once.
    assert (worker.job_counter, worker.sem._value, worker.tasks) == (0, free_slots, {})


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
    worker.ctx["redis"] = redis
    assert worker.on_startup is not None
    await worker.on_startup(worker.ctx)
    assert isinstance(worker.ctx["store"], JobStore)
    assert worker.ctx["resources"]["test_ledger"] == jobs.Ledger(os.getpid())
    assert await redis.get(f"test:ledger:opened:{os.getpid()}") == b"1"

    await worker.ctx["open_resources"].close(timeout_s=1)
    assert await redis.get(f"test:ledger:closed:{os.getpid()}") == b"1"
    assert worker.ctx["resources"] == {}


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


async def test_the_claim_starts_the_record_and_sets_arqs_try_count_to_its_own(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    catalog = store.catalog
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    # Two tries so far by the record; arq's own counter says more (shutdowns it
    # counted, which put the job back and did not use a try).
    await redis.hset(  # type: ignore[misc]
        f"conveyor:job:{submitted.job_id}", mapping={"state": "queued", "version": 5, "tries": 2}
    )
    await redis.set(f"arq:retry:{submitted.job_id}", 7)

    worker = await started_worker(redis, redis_url)
    await worker._claim_and_start()
    record = await store.get(submitted.job_id)
    await asyncio.gather(*worker.tasks.values())
    await worker.close()

    assert record is not None
    assert record.state is JobState.IN_PROGRESS
    assert record.tries == 3
    finished = await store.get(submitted.job_id)
    assert finished is not None
    assert finished.state is JobState.COMPLETE
    assert finished.tries == 3
    assert finished.version == 7  # claimed, completed
    # arq's run_job counted try 3 too: the effect job saw it.
    assert await redis.lrange(f"test:tries:{submitted.job_id}", 0, -1) == [b"3"]  # type: ignore[misc]


async def test_a_job_arq_ends_without_running_is_settled_not_left_in_progress(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog(jobs.MODULES.split(","))
    store = JobStore(redis, catalog)
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    run_job = worker.run_job

    async def expire_then_run(job_id: str, score: int) -> None:
        await redis.delete(f"arq:job:{job_id}")  # its data expired between claim and start
        await run_job(job_id, score)

    worker.run_job = expire_then_run  # type: ignore[method-assign]
    await worker._claim_and_start()
    await asyncio.gather(*worker.tasks.values())
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.DEAD
    assert record.error is not None
    assert record.error.type == "NotStarted"
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 0  # type: ignore[misc]
    assert not await redis.zscore(CREATE_TASK.queue, submitted.job_id)


async def test_a_job_cancelled_between_its_claim_and_its_start_never_runs(
    redis: ArqRedis, redis_url: str
) -> None:
    catalog = load_catalog([jobs.MODULE])
    store = JobStore(redis, catalog)
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    run_job = worker.run_job

    async def cancel_then_run(job_id: str, score: int) -> None:
        assert (await store.cancel(job_id))[0] == "cancelling"
        worker._on_wake_message(b"abort")  # as the cancel's announcement arrives
        await worker._cancel_aborted_jobs()
        await run_job(job_id, score)

    worker.run_job = cancel_then_run  # type: ignore[method-assign]
    await worker._claim_and_start()
    await asyncio.gather(*worker.tasks.values())
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
    await asyncio.gather(*worker.tasks.values())
    # As if it ran on a worker that was killed: in progress, lock gone, cancel asked.
    await redis.hset(f"conveyor:job:{submitted.job_id}", "state", "in_progress")  # type: ignore[misc]
    await redis.zadd(CREATE_TASK.queue, {submitted.job_id: 1})
    outcome, _ = await store.cancel(submitted.job_id)
    assert outcome == "cancelling"

    await worker._claim_and_start()
    await asyncio.gather(*worker.tasks.values())
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 1  # type: ignore[misc]


async def started_worker(redis: ArqRedis, redis_url: str) -> ConveyorWorker:
    """A worker whose startup hook ran, driven by the test one poll at a time."""
    worker = make_worker(redis, redis_url)
    worker.ctx["redis"] = redis
    assert worker.on_startup is not None
    await worker.on_startup(worker.ctx)
    return worker
