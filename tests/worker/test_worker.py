"""The worker in-process against a real Redis: registration, ctx resources, a job run."""

import asyncio

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from conveyor_core.catalog import CREATE_TASK, CreateTask, load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobState
from conveyor_core.store import JobStore
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.support import jobs
from tests.worker.conftest import make_worker


async def test_worker_registers_exactly_the_catalog_of_its_queue(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    catalog = load_catalog([jobs.MODULE])
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

    job = Job(submitted.job_id, redis)
    assert await job.status() == JobStatus.complete
    info = await job.result_info()
    assert info is not None
    assert info.success
    assert info.result == 0.01
    record = await JobStore(redis).get(submitted.job_id)
    assert record is not None
    assert record.state is JobState.COMPLETE
    assert record.result == 0.01
    assert record.tries == 1


async def test_startup_opens_and_shutdown_closes_shared_resources(
    redis: ArqRedis, redis_url: str
) -> None:
    worker = make_worker(redis, redis_url)
    worker.ctx["redis"] = redis
    assert worker.on_startup is not None
    assert worker.on_shutdown is not None
    await worker.on_startup(worker.ctx)
    session = worker.ctx["http"]
    assert not session.closed
    assert isinstance(worker.ctx["store"], JobStore)

    await worker.on_shutdown(worker.ctx)
    assert session.closed
    assert "http" not in worker.ctx


async def test_a_job_whose_last_try_never_finished_goes_dead_without_running(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis)
    catalog = load_catalog([jobs.MODULE])
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    # As if every try so far had died with its worker: arq's try counter is at the limit.
    await redis.set(f"arq:retry:{submitted.job_id}", catalog["effect"].retry.max_tries)

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


async def test_the_claim_marks_the_record_in_progress_with_the_try_arq_will_count(
    redis: ArqRedis, redis_url: str
) -> None:
    store = JobStore(redis)
    catalog = load_catalog([jobs.MODULE])
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    await redis.set(f"arq:retry:{submitted.job_id}", 2)  # two tries so far

    worker = await started_worker(redis, redis_url)
    await worker._claim_and_start()
    claim = worker.claims[submitted.job_id]
    record = await store.get(submitted.job_id)
    await asyncio.gather(*worker.tasks.values())
    await worker.close()

    assert claim.moved
    assert claim.old_state == "waiting"
    assert record is not None
    assert record.state is JobState.IN_PROGRESS
    assert record.tries == 3
    finished = await store.get(submitted.job_id)
    assert finished is not None
    assert finished.state is JobState.COMPLETE
    assert finished.tries == 3
    assert worker.claims == {}  # the wrapper took its claim


@pytest.mark.parametrize(
    ("cancel_first", "expected"),
    [(False, JobState.DEAD), (True, JobState.CANCELLED)],
    ids=["expired", "aborted-before-start"],
)
async def test_a_job_arq_ends_without_running_is_settled_not_left_in_progress(
    redis: ArqRedis, redis_url: str, cancel_first: bool, expected: JobState
) -> None:
    store = JobStore(redis)
    catalog = load_catalog([jobs.MODULE])
    submitted = await enqueue(store, catalog["effect"], jobs.Effect(work_s=0))
    worker = await started_worker(redis, redis_url)
    run_job = worker.run_job

    async def meddle_then_run(job_id: str, score: int) -> None:
        # Between the claim and arq's run_job: a cancel, or the job's data expiring.
        if cancel_first:
            assert await store.cancel(job_id, catalog["effect"].queue, ttl_s=60) == "cancelling"
        else:
            await redis.delete(f"arq:job:{job_id}")
        await run_job(job_id, score)

    worker.run_job = meddle_then_run  # type: ignore[method-assign]
    await worker._claim_and_start()
    await asyncio.gather(*worker.tasks.values())
    await worker.close()

    record = await store.get(submitted.job_id)
    assert record is not None
    assert record.state is expected
    assert await redis.llen(f"test:starts:{submitted.job_id}") == 0  # type: ignore[misc]


async def started_worker(redis: ArqRedis, redis_url: str) -> ConveyorWorker:
    """A worker whose startup hook ran, driven by the test one poll at a time."""
    worker = make_worker(redis, redis_url)
    worker.ctx["redis"] = redis
    assert worker.on_startup is not None
    await worker.on_startup(worker.ctx)
    return worker
