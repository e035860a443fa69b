"""`/v1/queues`: depth and latency per queue, cheap enough for an autoscaler to poll."""

import asyncio

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from conveyor_api.auth import Scope, require
from conveyor_api.deps import CatalogDep, StoreDep

router = APIRouter(
    prefix="/v1/queues", tags=["queues"], dependencies=[Depends(require(Scope.JOBS_ADMIN))]
)


class QueuePublic(BaseModel):
    name: str
    ready: int = Field(description="Due jobs waiting for a worker.")
    deferred: int = Field(description="Jobs not due yet (deferred).")
    in_progress: int
    retrying: int = Field(description="Jobs whose try failed, waiting for the next one.")
    dead: int = Field(description="Jobs in the dead letters.")
    oldest_ready_age_s: float = Field(
        description="How long the oldest ready job has waited since it was due (queue latency)."
    )


class QueueList(BaseModel):
    queues: list[QueuePublic]


@router.get("", summary="Queue statistics")
async def list_queues(store: StoreDep, catalog: CatalogDep) -> QueueList:
    """One Lua call per queue: a few O(log n) commands, no scans."""
    stats = await asyncio.gather(*(store.queue_stats(q) for q in catalog.queues()))
    return QueueList(
        queues=[
            QueuePublic(
                name=s.name,
                ready=s.ready,
                deferred=s.deferred,
                in_progress=s.in_progress,
                retrying=s.retrying,
                dead=s.dead,
                oldest_ready_age_s=round(s.oldest_ready_age_s, 3),
            )
            for s in stats
        ]
    )
