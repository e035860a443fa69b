"""Everything the api observes, registered in one place: request ids, server
spans, request logs and metrics, and `/metrics`. Handlers contain none of it.

One pure ASGI middleware does it all, with one wrapper of `send`: the server
span (continuing the client's W3C trace context), the request id, the log line
and the HTTP metrics. OpenTelemetry's ASGI instrumentation did the span before,
at a cost of two more spans per request (one per `send`) and a walk over every
route to name it; here the span is named from the route the router matched.
"""

import asyncio
import logging
import random
import re
import time
from contextvars import Token
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
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
    LabelCache,
)
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import JobStore
from conveyor_core.tracing import sampled_trace_id

logger = logging.getLogger("conveyor.requests")
tracer = trace.get_tracer("conveyor.api")

REQUEST_ID_HEADER = b"x-request-id"
# A client's request id is kept when it looks like one; anything else is replaced.
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
# Probes and scrapes: neither traced nor logged (they would drown the rest).
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# How long a scrape waits for the queue statistics.
QUEUE_STATS_TIMEOUT_S = 1.0
# The server span's attributes (OpenTelemetry's HTTP semantic conventions).
REQUEST_ID_ATTRIBUTE = "conveyor.request_id"

# The HTTP metrics' children, by (method, route, status): found once, not per request.
_requests = LabelCache(HTTP_REQUESTS)
_durations = LabelCache(HTTP_DURATION)


class _HeadersGetter(Getter[dict[str, bytes]]):
    """Header values for the propagators, decoded only when one asks for them."""

    def get(self, carrier: dict[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: dict[str, bytes]) -> list[str]:
        return list(carrier)


_HEADERS = _HeadersGetter()


def new_request_id() -> str:
    """32 hex digits. A request id correlates, it guards nothing: no need for the
    system's random source (a syscall per request), Python's generator will do."""
    return f"{random.getrandbits(128):032x}"


class RequestTelemetry:
    """Per request: a server span, the request id in and out, one log line and the
    HTTP metrics. Probes and `/metrics` get the id and the metrics only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value for name, value in scope["headers"]}
        incoming = headers.get("x-request-id", b"").decode("latin-1")
        request_id = incoming if VALID_REQUEST_ID.match(incoming) else new_request_id()
        quiet = scope["path"] in QUIET_PATHS
        status = 500  # unless the app answers
        response_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, response_id)]
                message = {**message, "headers": headers}
            await send(message)

        span, token = (None, None) if quiet else self._start_span(scope, headers, request_id)
        started = time.perf_counter()
        try:
            with log_context(request_id=request_id):
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception as exc:
                    if span is not None:
                        span.record_exception(exc)
                    raise
                finally:
                    duration_s = time.perf_counter() - started
                    self._record(scope, span, request_id, status, duration_s, quiet)
        finally:
            if token is not None:
                otel_context.detach(token)

    @staticmethod
    def _start_span(
        scope: Scope, headers: dict[str, bytes], request_id: str
    ) -> tuple[trace.Span, Token[Context]]:
        # The configured propagators (W3C trace context and baggage by default)
        # read the client's headers; the attributes are set once, at the end.
        parent = propagate.extract(headers, getter=_HEADERS)
        span = tracer.start_span(scope["method"], context=parent, kind=SpanKind.SERVER)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def _record(
        scope: Scope,
        span: trace.Span | None,
        request_id: str,
        status: int,
        duration_s: float,
        quiet: bool,
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or _mount(scope) or "unmatched"
        method = scope["method"]
        exemplar = None
        if span is not None:
            span.update_name(f"{method} {route}")
            span.set_attributes(
                {
                    "http.request.method": method,
                    "http.route": route,
                    "http.response.status_code": status,
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                    REQUEST_ID_ATTRIBUTE: request_id,
                }
            )
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if trace_id := sampled_trace_id(span):
                exemplar = {"trace_id": trace_id}
        key = (method, route, status)
        _requests.get(key).inc(exemplar=exemplar)
        _durations.get(key).observe(duration_s, exemplar)
        if not quiet:
            fields: dict[str, Any] = {
                "method": method,
                "route": route,
                "status": status,
                "duration_s": round(duration_s, 4),
            }
            logger.info("request", extra={"fields": fields})
        if span is not None:
            span.end()


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
