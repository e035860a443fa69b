"""The api's app factory: `uvicorn --factory conveyor_api.main:create_app`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conveyor_api.problems import install_problem_handlers
from conveyor_api.routes import health, tutorial
from conveyor_api.settings import Settings
from conveyor_core.redis import create_redis


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client (and connection pool) for the process, not one per request.
        app.state.redis = create_redis(settings.redis)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(
        title="Conveyor",
        summary="Submit background jobs and watch them run.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app, retry_after_s=settings.retry_after_s)
    app.include_router(health.router)
    app.include_router(tutorial.router)
    return app
