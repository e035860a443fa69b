"""Everything the api observes, registered in one place: request ids, request
logs and metrics, server spans, and `/metrics`. Handlers contain none of it."""

import asyncio
import logging
import re
import time
from uuid import uuid4

from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor_core.catalog import Catalog
from conveyor_core.logging import log_context
from conveyor_core.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    JOBS_ENQUEUED,
    QUEUE_JOBS,
    QUEUE_OLDEST_READY_AGE,
    REDIS_UP,
)
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import JobStore
from conveyor_core.tracing import exemplar

logger = logging.getLogger("conveyor.requests")

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is kept when it looks like one; anything else is replaced.
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
# Probes and scrapes: neither traced nor logged (they would drown the rest).
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")
# How long a scrape waits for the queue statistics.
QUEUE_STATS_TIMEOUT_S = 1.0


class RequestTelemetry:
    """Request id in and out, one log line and the HTTP metrics per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if VALID_REQUEST_ID.match(incoming) else uuid4().hex
        status = 500  # unless the app answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        span = trace.get_current_span()
        span.set_attribute("conveyor.request_id", request_id)
        started = time.perf_counter()
        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, duration_s: float) -> None:
        route = getattr(scope.get("route"), "path", None) or _mount(scope) or "unmatched"
        method = scope["method"]
        HTTP_REQUESTS.labels(method, route, status).inc(exemplar=exemplar())
        HTTP_DURATION.labels(method, route, status).observe(duration_s, exemplar())
        if scope["path"] not in QUIET_PATHS:
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_s": round(duration_s, 4),
            }
            logger.info("request", extra={"fields": fields})


def _mount(scope: Scope) -> str | None:
    """`/ui/{path}` for files a mounted app served: one label for all of them.

    A mount matched has moved its prefix into `root_path` (after whatever
    `root_path` the app itself was given, kept as `app_root_path`).
    """
    prefix = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return f"{prefix}/{{path}}" if prefix else None


async def refresh_queue_metrics(store: JobStore, catalog: Catalog) -> None:
    """Queue depth and latency, read at scrape time (a few O(log n) commands a queue)."""
    try:
        async with asyncio.timeout(QUEUE_STATS_TIMEOUT_S):
            stats = await asyncio.gather(*(store.queue_stats(q) for q in catalog.queues()))
    except REDIS_DOWN_ERRORS:  # TimeoutError among them
        REDIS_UP.set(0)
        return
    REDIS_UP.set(1)
    for s in stats:
        for state, count in (
            ("ready", s.ready),
            ("deferred", s.deferred),
            ("in_progress", s.in_progress),
            ("retrying", s.retrying),
            ("dead", s.dead),
        ):
            QUEUE_JOBS.labels(s.name, state).set(count)
        QUEUE_OLDEST_READY_AGE.labels(s.name).set(s.oldest_ready_age_s)


async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with trace-id exemplars) when asked for."""
    await refresh_queue_metrics(request.app.state.store, request.app.state.catalog)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), headers={"Content-Type": content_type})


class MetricsOnItsOwnPort:
    """With a metrics port: `/metrics` is served there and only there, so the
    api's public port (behind the ingress) does not expose it."""

    def __init__(self, app: ASGIApp, metrics_port: int) -> None:
        self.app = app
        self.metrics_port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server") or ("", None)
            on_metrics_port = server[1] == self.metrics_port
            if on_metrics_port != (scope["path"] == "/metrics"):
                await Response(status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def setup_telemetry(app: FastAPI, metrics_port: int | None = None) -> None:
    """Call once, after the other middleware (the server span then wraps them all)
    and after `app.state.catalog` is set."""
    # Each job type's enqueue counter exists at 0 from the start, so rate() sees
    # the first job after a restart.
    for job_type in app.state.catalog:
        JOBS_ENQUEUED.labels(job_type.name, job_type.queue)
    if metrics_port:
        app.add_middleware(MetricsOnItsOwnPort, metrics_port=metrics_port)
    app.add_middleware(RequestTelemetry)
    app.add_api_route("/metrics", metrics, include_in_schema=False)
    FastAPIInstrumentor.instrument_app(app, excluded_urls=",".join(QUIET_PATHS))
