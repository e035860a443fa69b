"""The api's app factory: `uvicorn --factory conveyor_api.main:create_app`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conveyor_api.events import JobEvents
from conveyor_api.limits import BodyLimitMiddleware
from conveyor_api.problems import install_problem_handlers
from conveyor_api.routes import events, health, jobs, queues, tutorial, ui
from conveyor_api.settings import Settings
from conveyor_api.telemetry import setup_telemetry
from conveyor_core.catalog import load_catalog
from conveyor_core.redis import create_redis
from conveyor_core.store import JobStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog.modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client (and connection pool) for the process, not one per request.
        app.state.redis = redis = create_redis(settings.redis)
        app.state.store = JobStore(redis)
        app.state.events = events = JobEvents(redis)
        events.start()
        try:
            yield
        finally:
            await events.stop()
            await redis.aclose()

    app = FastAPI(
        title="Conveyor",
        summary="Submit background jobs and watch them run.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.state.settings = settings
    app.state.catalog = catalog
    install_problem_handlers(app, retry_after_s=settings.retry_after_s)
    setup_telemetry(app)
    app.include_router(health.router)
    app.include_router(tutorial.router)
    app.include_router(jobs.build_router(list(catalog)))
    app.include_router(queues.router)
    app.include_router(events.router)
    ui.install(app)
    return app
