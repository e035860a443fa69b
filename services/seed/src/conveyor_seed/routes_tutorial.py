"""The tutorial's endpoints: a greeting and `POST /task`. Mounted by the api
(the seed module's API_ROUTERS); the worker never imports it."""

import random

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from conveyor_api.auth import Scope, require
from conveyor_api.deps import StoreDep
from conveyor_core.enqueue import enqueue
from conveyor_core.logging import bound
from conveyor_seed import CREATE_TASK, CreateTask
from conveyor_seed.settings import TutorialSettings

router = APIRouter(tags=["tutorial"])


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
    dependencies=[Depends(require(Scope.JOBS_SUBMIT))],
    responses={503: {"description": "Redis is unavailable or may evict; retry after Retry-After"}},
)
async def create_tasks(body: TaskCreate, store: StoreDep, request: Request) -> TasksQueued:
    settings = tutorial_settings(request)
    job_ids = []
    for _ in range(body.count):
        # Not for security: a stand-in for work of varying length.
        sleep_s = random.uniform(settings.task_sleep_min_s, settings.task_sleep_max_s)  # noqa: S311
        submitted = await enqueue(
            store,
            CREATE_TASK,
            CreateTask(sleep_s=round(sleep_s, 3)),
            request_id=bound("request_id"),
        )
        job_ids.append(submitted.job_id)
    return TasksQueued(queued=len(job_ids), job_ids=job_ids)
