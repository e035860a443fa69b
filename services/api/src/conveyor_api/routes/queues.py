"""`/v1/queues`: depth and latency per queue, cheap enough for an autoscaler to
poll; pause and resume a queue."""

import asyncio
import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from conveyor_api import audit
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import CatalogDep, StoreDep
from conveyor_core.catalog import Catalog
from conveyor_core.history import EVENTS, MAX_MINUTES, MINUTE_MS, HistoryReader
from conveyor_core.jobs import ms_to_datetime
from conveyor_core.store import QueueStats

router = APIRouter(prefix="/v1/queues", tags=["queues"])

# Reading needs jobs:read; pausing and resuming (audited) need jobs:admin.
AdminDep = Annotated[ApiKey, Depends(require(Scope.JOBS_ADMIN))]


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
    paused: bool = Field(
        description="Workers start no job from a paused queue; running jobs finish and "
        "enqueueing goes on."
    )
    paused_at: datetime | None = Field(default=None, description="When it was paused.")
    limits: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The limits in force, per job type of the queue that has any.",
    )
    shards: int = Field(
        default=1,
        description="How many shards (hash tags, so slots of a Redis Cluster) the queue "
        "spreads over; its counts are their sums.",
    )

    @classmethod
    def of(cls, s: QueueStats, catalog: Catalog | None = None) -> "QueuePublic":
        return cls(
            limits=_limits(s.name, catalog) if catalog else {},
            shards=catalog.shard_count(s.name) if catalog else 1,
            name=s.name,
            ready=s.ready,
            deferred=s.deferred,
            in_progress=s.in_progress,
            retrying=s.retrying,
            dead=s.dead,
            oldest_ready_age_s=round(s.oldest_ready_age_s, 3),
            paused=s.paused_at_ms is not None,
            paused_at=ms_to_datetime(s.paused_at_ms),
        )


def _limits(queue: str, catalog: Catalog) -> dict[str, dict[str, Any]]:
    return {
        t.name: {k: v for k, v in dataclasses.asdict(t.limits).items() if v is not None}
        for t in catalog.for_queue(queue)
        if t.limits
    }


class QueueList(BaseModel):
    queues: list[QueuePublic]


QueueName = Annotated[str, Path(min_length=1, max_length=200, description="A catalog queue.")]


@router.get("", summary="Queue statistics", dependencies=[Depends(require(Scope.JOBS_READ))])
async def list_queues(store: StoreDep, catalog: CatalogDep) -> QueueList:
    """One Lua call per queue shard: a few O(log n) commands, no scans."""
    stats = await asyncio.gather(*(store.queue_stats(q) for q in catalog.queues()))
    return QueueList(queues=[QueuePublic.of(s, catalog) for s in stats])


def _known(name: str, catalog: CatalogDep) -> str:
    if name not in catalog.queues():
        raise HTTPException(404, f"No queue named {name!r} in the catalog.")
    return name


NOT_IN_CATALOG: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such queue in the catalog"}
}


@router.post("/{name}/pause", summary="Pause a queue", responses=NOT_IN_CATALOG)
async def pause_queue(
    name: QueueName, store: StoreDep, catalog: CatalogDep, caller: AdminDep
) -> QueuePublic:
    """Every worker of the queue stops starting jobs at its next claim; running
    jobs finish; enqueueing goes on. Pausing a paused queue changes nothing
    (and is not in the audit log)."""
    if (await store.pause(_known(name, catalog))).changed:
        await audit.record(store.redis, caller.name, "pause", name, 0)
    return QueuePublic.of(await store.queue_stats(name), catalog)


@router.post("/{name}/resume", summary="Resume a queue", responses=NOT_IN_CATALOG)
async def resume_queue(
    name: QueueName, store: StoreDep, catalog: CatalogDep, caller: AdminDep
) -> QueuePublic:
    """The queue's workers are woken and start its jobs at once. Resuming a
    running queue changes nothing (and is not in the audit log)."""
    if await store.resume(_known(name, catalog)):
        await audit.record(store.redis, caller.name, "resume", name, 0)
    return QueuePublic.of(await store.queue_stats(name), catalog)


class MinutePublic(BaseModel):
    """One minute of a queue's history."""

    at: datetime
    counts: dict[str, int] = Field(description="Per event, all job types together.")
    by_job_type: dict[str, dict[str, int]]
    mean_wait_s: float | None = Field(description="Queue latency of the jobs started then.")


class QueueHistory(BaseModel):
    queue: str
    minutes: list[MinutePublic]


@router.get(
    "/{name}/history",
    summary="A queue's per-minute history",
    responses=NOT_IN_CATALOG,
    dependencies=[Depends(require(Scope.JOBS_READ))],
)
async def queue_history(
    name: QueueName,
    request: Request,
    catalog: CatalogDep,
    minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES)] = 60,
) -> QueueHistory:
    """Oldest minute first, up to 72 hours back. The api keeps the minutes that
    can no longer change: a query costs Redis only the minutes it has not read
    before (about one a minute for a polled chart), whatever its span."""
    history: HistoryReader = request.app.state.history
    found = await history.read(_known(name, catalog), minutes, shards=catalog.shards(name))
    return QueueHistory(
        queue=name,
        minutes=[
            MinutePublic(
                at=ms_to_datetime(m.minute * MINUTE_MS) or datetime.min,
                counts={e: m.total(e) for e in EVENTS},
                by_job_type=m.counts,
                mean_wait_s=round(w / 1000, 3) if (w := m.mean_wait_ms()) is not None else None,
            )
            for m in found
        ],
    )
