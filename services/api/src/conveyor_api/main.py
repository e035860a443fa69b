"""The api's app factory: `uvicorn --factory conveyor_api.main:create_app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conveyor_api.auth import KeyRing, secure_routes
from conveyor_api.deps import Services
from conveyor_api.events import JobEvents
from conveyor_api.headers import setup_headers
from conveyor_api.limits import BodyLimitMiddleware, JsonGuardMiddleware
from conveyor_api.problems import document_problems, install_problem_handlers
from conveyor_api.routes import documents, events, health, jobs, queues, tutorial, ui
from conveyor_api.settings import Settings
from conveyor_api.telemetry import setup_telemetry
from conveyor_core.catalog import load_catalog
from conveyor_core.documents import DocumentStore
from conveyor_core.ratelimit import RateLimiter
from conveyor_core.redaction import Redactor
from conveyor_core.redis import create_redis
from conveyor_core.redis_health import RedisHealth
from conveyor_core.store import JobStore

logger = logging.getLogger("conveyor.api")

# Room for the multipart boundaries and form fields around an uploaded file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog.modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client (and connection pool) for the process, not one per request.
        app.state.redis = redis = create_redis(settings.redis)
        app.state.store = JobStore(redis, catalog)
        app.state.documents = DocumentStore(redis)
        app.state.events = events = JobEvents(redis)
        if settings.rate_limit_per_s > 0:
            app.state.rate_limiter = RateLimiter(
                redis, settings.rate_limit_per_s, settings.rate_limit_burst
            )
        app.state.services = Services(
            redis, app.state.store, settings, app.state.redact, app.state.rate_limiter
        )
        # Redis' memory policy and usage: warned about, exported, and read by /readyz.
        app.state.redis_health = redis_health = RedisHealth(redis, settings.redis, "api")
        redis_health.start()
        events.start()
        try:
            yield
        finally:
            await redis_health.stop()
            await events.stop()
            await redis.aclose()

    app = FastAPI(
        title="Conveyor",
        summary="Submit background jobs and watch them run.",
        version="0.1.0",
        lifespan=lifespan,
        # Our own middleware makes the server span, the request logs and the
        # metrics (telemetry.py); FastAPI's would make a second set, and spans
        # for every dependency and serialization besides.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # Innermost first: the depth check reads a body the size limit has bounded.
    app.add_middleware(JsonGuardMiddleware, max_depth=settings.max_json_depth)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        # An upload may be as large as a document may be, plus the multipart framing.
        max_upload_bytes=max(
            settings.max_upload_bytes, settings.documents.max_bytes + MULTIPART_OVERHEAD_BYTES
        ),
    )
    setup_headers(app, settings.cors_origin_list)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.keyring = KeyRing(settings.keys)
    app.state.rate_limiter = None  # set at start, when rate limits are on
    app.state.redact = Redactor(settings.observability.redacted)
    if settings.development:
        logger.warning(
            "development mode: %d api key(s); never run like this in production",
            len(settings.keys),
        )
    install_problem_handlers(app, retry_after_s=settings.retry_after_s)
    setup_telemetry(app, settings.metrics_port)
    # The busiest routes first: requests are matched against routes in order.
    jobs.add_routes(app.router, list(catalog))
    app.include_router(health.router)
    app.include_router(tutorial.router)
    app.include_router(queues.router)
    app.include_router(documents.router)
    app.include_router(events.router)
    secure_routes(app)
    document_problems(app)
    # Last: the page's static files, open to all (the page holds no data).
    ui.install(app)
    return app
