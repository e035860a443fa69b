"""`/v1/bulk`: preview, start, follow and resume a bulk action (cancel, requeue
or delete every job a filter matches); see bulk.py for how it runs."""

import math
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, Field

from conveyor_api import tenants
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.bulk import BulkRunner, BulkStatus
from conveyor_api.deps import CatalogDep, SettingsDep
from conveyor_core.catalog import ID_PATTERN, Catalog
from conveyor_core.jobs import JobState, ms_to_datetime
from conveyor_core.store import JobFilter

router = APIRouter(prefix="/v1/bulk", tags=["bulk"])

AdminDep = Annotated[ApiKey, Depends(require(Scope.JOBS_ADMIN))]
BulkId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]


class BulkAction(StrEnum):
    CANCEL = "cancel"  # jobs waiting, retrying (at once) or running (asked to stop)
    REQUEUE = "requeue"  # dead jobs: a new first try each
    DELETE = "delete"  # any job but a running one: its record and arq's keys go


class JobFilterIn(BaseModel):
    """Which jobs: every field given must match."""

    state: JobState | None = None
    queue: str | None = Field(default=None, max_length=200)
    job_type: str | None = Field(default=None, max_length=200)
    error_type: str | None = Field(default=None, max_length=200)
    text: str | None = Field(
        default=None, max_length=200, description="Part of the job id or error message."
    )
    since: AwareDatetime | None = Field(
        default=None, description="Finished (else started, else enqueued) at or after this."
    )
    until: AwareDatetime | None = Field(default=None, description="... and before this.")

    def to_filter(self, catalog: Catalog) -> JobFilter:
        if self.job_type is not None and self.job_type not in catalog:
            raise HTTPException(422, f"Unknown job type {self.job_type!r}.")
        if self.queue is not None and self.queue not in catalog.queues():
            raise HTTPException(422, f"No queue named {self.queue!r} in the catalog.")
        return JobFilter(
            state=self.state,
            queue=self.queue,
            job_type=self.job_type,
            error_type=self.error_type,
            text=self.text or None,
            since_ms=_ms(self.since),
            until_ms=_ms(self.until),
        )


def _ms(at: datetime | None) -> int | None:
    return int(at.timestamp() * 1000) if at else None


class BulkPreview(BaseModel):
    count: int = Field(description="Jobs the filter matches now (at least, unless `exact`).")
    exact: bool = Field(
        description="False when the preview's budget (rows read, time) ran out before the "
        "listing did: then `count` is a lower bound."
    )
    scanned: int = Field(description="Jobs read to count them.")


class BulkRequest(BaseModel):
    action: BulkAction
    filter: JobFilterIn
    all: bool = Field(
        default=False,
        description="Required (true) to delete with an empty filter: every job.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        description="Act on at most this many matching jobs: the count the preview "
        "showed. Required to delete with an empty filter.",
    )

    def checked(self, catalog: Catalog) -> JobFilter:
        """The filter, once the request is sound: deleting every job takes an
        explicit `all` and the count the preview showed."""
        where = self.filter.to_filter(catalog)
        errors = []
        if self.all and where.as_dict():
            errors.append(("all", "only with an empty filter (every job)"))
        if self.action is BulkAction.DELETE and not where.as_dict():
            if not self.all:
                errors.append(("all", 'an empty filter deletes every job: send "all": true'))
            if self.count is None:
                errors.append(("count", "deleting every job needs the count the preview showed"))
        if errors:
            raise RequestValidationError(
                [{"loc": ("body", name), "msg": msg, "type": "value_error"} for name, msg in errors]
            )
        return where


class BulkPublic(BaseModel):
    """A bulk action and how far it has gone."""

    id: str
    action: str
    filter: dict[str, Any]
    who: str
    state: str = Field(description="running, done, failed or cancelled")
    matched: int = Field(description="Jobs the filter matched so far.")
    done: int = Field(description="Jobs acted on.")
    skipped: int = Field(description="Matched jobs the action no longer applied to.")
    batches: int
    started_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    error: str = ""
    at_most: int | None = Field(default=None, description="It stops after this many matches.")
    cancelled_by: str = Field(default="", description="Who cancelled it, if anyone did.")

    @classmethod
    def of(cls, s: BulkStatus) -> "BulkPublic":
        return cls(
            id=s.id,
            action=s.action,
            filter=s.filter,
            who=s.who,
            state=s.state,
            matched=s.matched,
            done=s.done,
            skipped=s.skipped,
            batches=s.batches,
            started_at=ms_to_datetime(s.started_at_ms),
            updated_at=ms_to_datetime(s.updated_at_ms),
            finished_at=ms_to_datetime(s.finished_at_ms),
            error=s.error,
            at_most=s.at_most,
            cancelled_by=s.cancelled_by,
        )


async def get_bulk(request: Request) -> BulkRunner:
    runner: BulkRunner = request.app.state.bulk
    return runner


BulkDep = Annotated[BulkRunner, Depends(get_bulk)]


@router.post(
    "/preview",
    summary="Count the jobs a filter matches",
    responses={
        429: {
            "description": "The api key is over its rate, or has a preview running "
            "(one at a time); retry after Retry-After"
        }
    },
)
async def preview(
    body: JobFilterIn,
    caller: AdminDep,
    bulk: BulkDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    request: Request,
) -> BulkPreview:
    """A filter that matches nothing counts 0. The cost is bounded: a preview
    reads at most `CONVEYOR_API_PREVIEW_MAX_ROWS` jobs, for at most
    `CONVEYOR_API_PREVIEW_TIMEOUT_S`, one at a time per api key, and stops
    when its client goes away; beyond its budget it answers a lower bound.
    An own-jobs key counts its own jobs only."""
    where = replace(body.to_filter(catalog), submitted_by=tenants.owner(caller))
    async with bulk.previewing(caller.name, settings.preview_timeout_s) as allowed:
        if not allowed:
            raise HTTPException(
                429,
                f"Api key {caller.name!r} has a bulk preview running; one at a time per key.",
                headers={"Retry-After": str(math.ceil(settings.preview_timeout_s))},
            )
        counted = await bulk.count(
            where,
            max_rows=settings.preview_max_rows,
            timeout_s=settings.preview_timeout_s,
            gone=request.is_disconnected,
        )
    return BulkPreview(count=counted.count, exact=counted.exact, scanned=counted.scanned)


@router.post(
    "",
    status_code=202,
    summary="Start a bulk action",
    responses={200: {"description": "The Idempotency-Key named an existing bulk action"}},
)
async def start(
    body: BulkRequest,
    caller: AdminDep,
    bulk: BulkDep,
    catalog: CatalogDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=64, pattern=ID_PATTERN),
    ] = None,
) -> BulkPublic:
    """Runs in the api in batches; poll `GET /v1/bulk/{id}` for its progress.
    Starting again with the same `Idempotency-Key` returns the same action.
    A delete with an empty filter (every job) needs `"all": true` and `count`,
    the count the preview showed: it deletes at most that many."""
    # An own-jobs key acts on its own jobs only.
    where = replace(body.checked(catalog), submitted_by=tenants.owner(caller))
    status = await bulk.start(body.action.value, where, caller.name, idempotency_key, body.count)
    return BulkPublic.of(status)


@router.get(
    "/{bulk_id}",
    summary="A bulk action's progress",
    dependencies=[Depends(require(Scope.JOBS_READ))],
    responses={404: {"description": "No such bulk action"}},
)
async def read(bulk_id: BulkId, bulk: BulkDep) -> BulkPublic:
    status = await bulk.get(bulk_id)
    if status is None:
        raise HTTPException(404, f"No bulk action {bulk_id!r} (it may have expired).")
    return BulkPublic.of(status)


@router.post(
    "/{bulk_id}/cancel",
    summary="Stop a running bulk action",
    responses={
        404: {"description": "No such bulk action"},
        409: {"description": "It has finished already"},
    },
)
async def cancel(bulk_id: BulkId, caller: AdminDep, bulk: BulkDep) -> BulkPublic:
    """The process running it stops after the batch in flight; what was done
    stays done. Cancelling a cancelled action changes nothing."""
    if not await bulk.cancel(bulk_id, caller.name):
        status = await bulk.get(bulk_id)
        if status is None:
            raise HTTPException(404, f"No bulk action {bulk_id!r} (it may have expired).")
        if status.state != "cancelled":
            raise HTTPException(409, f"Bulk action {bulk_id} is {status.state} already.")
    status = await bulk.get(bulk_id)
    if status is None:
        raise HTTPException(404, f"No bulk action {bulk_id!r} (it may have expired).")
    return BulkPublic.of(status)


@router.post(
    "/{bulk_id}/resume",
    status_code=202,
    summary="Resume a bulk action whose api process stopped",
    responses={404: {"description": "No such bulk action"}},
)
async def resume(bulk_id: BulkId, caller: AdminDep, bulk: BulkDep) -> BulkPublic:
    """Goes on from where it stopped; does nothing when it is done, or running
    in another process."""
    status = await bulk.get(bulk_id)
    if status is None:
        raise HTTPException(404, f"No bulk action {bulk_id!r} (it may have expired).")
    if status.state == "running":
        bulk.spawn(bulk_id)
    return BulkPublic.of(status)
