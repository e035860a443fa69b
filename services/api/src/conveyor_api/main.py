"""The api's app factory: `uvicorn --factory conveyor_api.main:create_app`."""

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from arq.connections import ArqRedis
from fastapi import APIRouter, FastAPI

from conveyor_api import tenants
from conveyor_api.auth import KeyRing, secure_routes
from conveyor_api.bulk import BulkRunner
from conveyor_api.cursors import CursorSigner, cursor_secret
from conveyor_api.deps import Services
from conveyor_api.edge import Edge
from conveyor_api.events import JobEvents, StreamLimits
from conveyor_api.gate import Gate
from conveyor_api.keyfile import KeyFileError, KeyFileReloader
from conveyor_api.limits import offloading_submits, upload_routes
from conveyor_api.problems import document_problems, install_problem_handlers
from conveyor_api.routes import (
    audit,
    bulk,
    dev,
    docs,
    events,
    groups,
    health,
    jobs,
    queues,
    ui,
    workers,
    workflows,
)
from conveyor_api.settings import Settings
from conveyor_api.telemetry import setup_telemetry
from conveyor_core import claimcheck, stored_bytes
from conveyor_core.catalog import Catalog, JobModuleError, load_catalog
from conveyor_core.history import HistoryReader
from conveyor_core.metrics import REDIS_WAIT_SHORT
from conveyor_core.ratelimit import RateLimiter
from conveyor_core.redaction import Redactor
from conveyor_core.redis import connect
from conveyor_core.redis_health import RedisHealth
from conveyor_core.store import JobStore

logger = logging.getLogger("conveyor.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog.modules)
    tenants.check_policies(settings.keys, catalog)
    key_file = (
        KeyFileReloader(
            settings.keys_file,
            settings.keys_reload_interval_s,
            validate=lambda keys: tenants.check_policies(keys, catalog),
        )
        if settings.keys_file is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client (and connection pool) for the process, not one per request.
        # A node's client or a cluster's (REDIS_URL says which); the cluster's
        # carries what this code reads from arq's (cluster.py), and every call
        # keeps to one slot (keys.py).
        app.state.redis = redis = cast(ArqRedis, connect(settings.redis))
        # Redis' memory policy and usage: warned about, exported, read by /readyz,
        # and no job acknowledged while Redis may evict it.
        app.state.redis_health = redis_health = RedisHealth(redis, settings.redis, "api")
        app.state.store = JobStore(
            redis,
            catalog,
            admit=redis_health.refuse_if_unsafe,
            blobs=claimcheck.open_blob_store(settings.blobs),
            # A submit is acknowledged once this many replicas hold its job.
            wait_replicas=settings.redis.wait_replicas,
            wait_timeout_ms=settings.redis.wait_timeout_ms,
        )
        # Exported at 0 from the start (also with no wait), so the alert's
        # increase() sees a queue's first short submit.
        for queue in catalog.queues():
            REDIS_WAIT_SHORT.labels(queue)
        app.state.events = events = JobEvents(redis)
        app.state.history = HistoryReader(redis)
        if settings.rate_limit_per_s > 0:
            app.state.rate_limiter = RateLimiter(
                redis, settings.rate_limit_per_s, settings.rate_limit_burst
            )
        app.state.services = Services(
            redis, app.state.store, settings, app.state.redact, app.state.rate_limiter
        )
        redis_health.start()
        events.start()
        # Keys with a quota of stored bytes: their gauges follow expiry, not only writes.
        quota_gauges = stored_bytes.QuotaGauges(
            redis,
            lambda: [
                quota
                for key in app.state.keyring.keys
                if (quota := tenants.byte_quota_of(key)) is not None
            ],
        )
        quota_gauges.start()
        app.state.bulk = bulk_runner = BulkRunner(redis, app.state.store, catalog)
        bulk_runner.start_adopting()
        if key_file is not None:
            key_file.start(app.state)
        try:
            yield
        finally:
            if key_file is not None:
                await key_file.stop()
            await bulk_runner.stop()
            await quota_gauges.stop()
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
        # Our own /docs, its files served from the package (routes/docs.py), not
        # FastAPI's, which loads them from a CDN and starts them with inline
        # script; no /redoc, which does the same.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.catalog = catalog
    # Requests look keys up here; a keys file's reloader replaces it when the file changes.
    app.state.keyring = KeyRing(settings.keys) if key_file is None else key_file.load()
    if key_file is not None and not app.state.keyring.keys and not settings.development:
        raise KeyFileError(f"api keys file {settings.keys_file} lists no keys")
    app.state.rate_limiter = None  # set at start, when rate limits are on
    app.state.redact = Redactor(settings.observability.redacted)
    app.state.cursors = CursorSigner(cursor_secret(settings))
    app.state.stream_limits = StreamLimits(settings.sse_streams_per_key, settings.sse_streams_max)
    if settings.development:
        logger.warning(
            "development mode: %d api key(s); never run like this in production",
            len(app.state.keyring.keys),
        )
    install_problem_handlers(app, retry_after_s=settings.retry_after_s)
    setup_telemetry(app)
    # The busiest routes first: requests are matched against routes in order.
    jobs.add_routes(app.router, catalog.public())
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(queues.router)
    app.include_router(bulk.router)
    app.include_router(groups.router)
    app.include_router(workflows.router)
    app.include_router(audit.router)
    app.include_router(workers.router)
    for router in module_routers(catalog):
        app.include_router(router)
    app.include_router(events.router)
    if settings.development:
        # What `make run`'s mail catcher caught; no such route in production.
        app.include_router(dev.router)
    secure_routes(app)
    document_problems(app)
    # One middleware for what every request gets: the key checked before the
    # body is read (gate.py), the request id, span, log line and metrics,
    # security headers, CORS, body limits (edge.py); and the two busiest routes
    # answered there when FastAPI has nothing to add.
    gate = Gate(
        lambda: app.state.keyring,  # looked up per request: the keys may be replaced
        rate_per_s=settings.unauthenticated_rate_per_s,
        burst=settings.unauthenticated_burst,
        max_clients=settings.unauthenticated_max_clients,
        trusted_proxy_hops=settings.trusted_proxy_hops,
    )
    app.add_middleware(
        Edge,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_depth=settings.max_json_depth,
        cors_origins=settings.cors_origin_list,
        metrics_port=settings.metrics_port,
        fast_routes=jobs.FastJobRoutes(app, catalog.public()),
        upload_routes=upload_routes(app, offloading_submits(catalog)),
        gate=gate,
    )
    # Last: the page's static files, open to all (the page holds no data).
    ui.install(app)
    return app


def module_routers(catalog: Catalog) -> list[APIRouter]:
    """The routers the job modules add (their `API_ROUTERS`), imported here only."""
    routers = []
    for path in catalog.api_routers:
        module_name, _, name = path.partition(":")
        try:
            router = getattr(importlib.import_module(module_name), name)
        except Exception as exc:
            raise JobModuleError(
                module_name, f"API_ROUTERS entry {path!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(router, APIRouter):
            raise JobModuleError(module_name, f"API_ROUTERS entry {path!r} is not an APIRouter")
        routers.append(router)
    return routers
