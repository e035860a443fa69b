"""The tutorial's endpoints: a greeting and `POST /task`. Mounted by the api
(the seed module's API_ROUTERS); the worker never imports it."""

import random
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from conveyor_api import tenants
from conveyor_api.auth import Caller, Scope, authorize
from conveyor_core.enqueue import enqueue
from conveyor_core.logging import bound
from conveyor_seed import CREATE_TASK, CreateTask
from conveyor_seed.settings import TutorialSettings

router = APIRouter(tags=["tutorial"])

# The caller, whose rate the route spends: one request per job it enqueues.
SubmitterDep = Annotated[Caller, Depends(authorize(Scope.JOBS_SUBMIT))]


class TaskCreate(BaseModel):
    """Body of `POST /task`."""

    count: int = Field(title="How many tasks to generate? (1 to 100)", ge=1, le=100)


class TasksQueued(BaseModel):
    """Answer of `POST /task`: the ids of the jobs just enqueued."""

    queued: int
    job_ids: list[str]


def tutorial_settings(request: Request) -> TutorialSettings:
    """Read once per app, at its first task."""
    settings: TutorialSettings | None = getattr(request.app.state, "seed_tutorial", None)
    if settings is None:
        settings = request.app.state.seed_tutorial = TutorialSettings()
    return settings


@router.get("/", summary="Hello")
async def index() -> dict[str, str]:
    return {"message": "Hello, world!"}


@router.post(
    "/task",
    status_code=201,
    summary="Enqueue `count` create_task jobs",
    responses={
        403: {"description": "The api key may not submit create_task jobs"},
        429: {"description": "Over the key's rate (one request per job) or its quota"},
        503: {"description": "Redis is unavailable or may evict; retry after Retry-After"},
    },
)
async def create_tasks(body: TaskCreate, caller: SubmitterDep, request: Request) -> TasksQueued:
    """Spends one request of the key's rate per job, and each job counts
    toward the key's quota of outstanding jobs (the jobs queued before the
    quota refuses one stay queued; the 429 lists them)."""
    settings = tutorial_settings(request)
    key, store = caller.key, caller.services.store
    priority = tenants.submit_priority(key, CREATE_TASK, None)
    limiter = caller.services.rate_limiter
    if limiter is not None and body.count > limiter.burst:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "count"),
                    "msg": f"at most {limiter.burst} at once (the api key's burst)",
                    "type": "value_error",
                }
            ]
        )
    await caller.spend(body.count)
    job_ids: list[str] = []
    for _ in range(body.count):
        # Not for security: a stand-in for work of varying length.
        sleep_s = random.uniform(settings.task_sleep_min_s, settings.task_sleep_max_s)  # noqa: S311
        submitted = await enqueue(
            store,
            CREATE_TASK,
            CreateTask(sleep_s=round(sleep_s, 3)),
            request_id=bound("request_id"),
            priority=priority,
            submitted_by=key.name,
            quota=tenants.quota_of(key),
        )
        if submitted.over_quota:
            refusal = tenants.over_quota(key, caller.services.settings.retry_after_s)
            refusal.extensions.update(queued=len(job_ids), job_ids=job_ids)
            raise refusal
        job_ids.append(submitted.job_id)
    return TasksQueued(queued=len(job_ids), job_ids=job_ids)
