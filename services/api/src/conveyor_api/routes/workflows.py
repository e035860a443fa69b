"""`/v1/workflows/{id}`: the workflow a job or a group belongs to, as one
bounded tree (conveyor_core.workflows), for the console and the CLI."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from conveyor_api import tenants
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import StoreDep
from conveyor_core.catalog import ID_MAX_CHARS, JOB_ID_PATTERN
from conveyor_core.workflows import MAX_PAGE, WorkflowPublic, read_workflow

router = APIRouter(tags=["groups"])

ReadKeyDep = Annotated[ApiKey, Depends(require(Scope.JOBS_READ))]
WorkflowId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=ID_MAX_CHARS,
        pattern=JOB_ID_PATTERN,
        description="A job's id (a member, a continuation, or the job that started a group) "
        "or a group's.",
    ),
]


@router.get(
    "/v1/workflows/{focus}",
    summary="The workflow around a job or a group: its groups as a tree, a page of members each "
    "(a job of no group: itself alone)",
    responses={
        404: {"description": "No job or group with that id"},
        503: {"description": "Redis is unavailable; retry after Retry-After"},
    },
)
async def read_workflow_route(
    focus: WorkflowId,
    store: StoreDep,
    reader: ReadKeyDep,
    offset: Annotated[
        int | None,
        Query(
            ge=0,
            description="The top group's first member shown; by default the first of the "
            "page that holds the id asked for, when it is a member of the top group.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE, description="The top group's page.")] = 20,
) -> WorkflowPublic:
    workflow = await read_workflow(store, focus, offset=offset, limit=limit)
    if workflow is None or not tenants.reads_owned_by(reader, workflow.submitted_by):
        raise HTTPException(404, f"No job or group with id {focus!r} (it may have expired).")
    return workflow
