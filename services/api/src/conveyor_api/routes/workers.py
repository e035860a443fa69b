"""`/v1/workers`: the live worker processes and the jobs each runs now."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from conveyor_api.auth import Scope, require
from conveyor_api.deps import RedisDep
from conveyor_core.jobs import ms_to_datetime
from conveyor_core.workers import live_workers

router = APIRouter(
    prefix="/v1/workers", tags=["workers"], dependencies=[Depends(require(Scope.JOBS_READ))]
)


class WorkerPublic(BaseModel):
    name: str
    host: str
    pid: int
    queue: str
    concurrency: int
    running: list[str]
    version: str
    last_seen: datetime | None


class WorkerList(BaseModel):
    workers: list[WorkerPublic]


@router.get("", summary="Live worker processes")
async def list_workers(
    redis: RedisDep, queue: Annotated[str | None, Query(max_length=200)] = None
) -> WorkerList:
    """Workers heard from in the last few seconds, with the ids of the jobs they run."""
    cards = await live_workers(redis)
    return WorkerList(
        workers=[
            WorkerPublic(
                name=c.name,
                host=c.host,
                pid=c.pid,
                queue=c.queue,
                concurrency=c.concurrency,
                running=c.running,
                version=c.version,
                last_seen=ms_to_datetime(c.last_seen_ms),
            )
            for c in cards
            if queue in (None, c.queue)
        ]
    )
