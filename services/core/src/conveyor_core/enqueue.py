"""The one way Conveyor puts a job on a queue, from the api or from a job."""

from typing import Any

from arq.connections import ArqRedis

from conveyor_core.catalog import JobType


class JobNotEnqueuedError(RuntimeError):
    """arq refused the job because one with the same id exists."""


async def enqueue(redis: ArqRedis, job_type: JobType, **kwargs: Any) -> str:
    """Enqueue one job of `job_type` on its queue; return its id."""
    job = await redis.enqueue_job(job_type.name, _queue_name=job_type.queue, **kwargs)
    if job is None:
        raise JobNotEnqueuedError(f"job of type {job_type.name!r} was not enqueued: id taken")
    return str(job.job_id)
