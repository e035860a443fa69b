"""`/ui`: the status page, static files that talk to the same `/v1` api as any client.

The page holds no data of its own, so it is served without a key; what it
shows comes from api calls made with the key a person types in.
"""

import os

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from conveyor_api.deps import SettingsDep

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)

# Queue counts and the dead letters are small reads; the jobs' progress comes by SSE.
REFRESH_S = 3.0


class UiConfig(BaseModel):
    """What the page needs to know about this deployment."""

    redact_keys: list[str] = Field(description="Payload keys containing these are masked.")
    refresh_s: float = Field(description="How often queue counts and dead letters refresh.")
    submit_tasks: bool = Field(
        default=False,
        description="A job module mounts `POST /task` (the seed app's tutorial): show its form.",
    )
    caught_mail: bool = Field(
        default=False,
        description="Development mode: list what `make run`'s mail catcher caught.",
    )


# The endpoint the page's "Submit tasks" form posts to, when a job module mounts it.
TASK_PATH = "/task"


@router.get("/config.json")
async def ui_config(settings: SettingsDep, request: Request) -> UiConfig:
    # The OpenAPI document lists every route, those of included routers too (cached).
    submit_tasks = "post" in request.app.openapi()["paths"].get(TASK_PATH, {})
    return UiConfig(
        redact_keys=settings.observability.redacted,
        refresh_s=REFRESH_S,
        submit_tasks=submit_tasks,
        caught_mail=settings.development,
    )


class PageFiles(StaticFiles):
    """The page's files, revalidated on every load (a 304 when unchanged), so a
    browser never runs an old script against a newer api."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install(app: FastAPI) -> None:
    """The config route, then the files (the package's `ui/static`), `/ui` itself
    redirecting to `/ui/` so the page's relative links resolve under it."""
    app.include_router(router)
    static = PageFiles(packages=[("conveyor_api", "ui/static")], html=True)
    app.mount("/ui", static, name="ui")
