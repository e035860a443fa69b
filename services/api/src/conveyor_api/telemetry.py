"""Everything the api observes, registered in one place: request ids, server
spans, request logs and metrics, and `/metrics`. Handlers contain none of it.

Per request, a `RequestRecord`, made and ended by the api's one middleware
(edge.Edge): the server span (continuing the client's W3C trace context), the
request id, the log line and the HTTP metrics. OpenTelemetry's ASGI
instrumentation did the span before, at a cost of two more spans per request
(one per `send`) and a walk over every route to name it; here the span is
named from the route the router (or a fast route) matched.
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
from starlette.types import Scope

from conveyor_core.catalog import Catalog
from conveyor_core.jobs import now_ms
from conveyor_core.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    JOBS_ENQUEUED,
    QUEUE_JOBS,
    QUEUE_OLDEST_READY_AGE,
    QUEUE_PAUSED,
    QUEUE_PAUSED_SECONDS,
    REDIS_UP,
    LabelCache,
)
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import JobStore
from conveyor_core.tracing import sampled_trace_id

logger = logging.getLogger("conveyor.requests")
tracer = trace.get_tracer("conveyor.api")

REQUEST_ID_HEADER = b"x-request-id"  # in and out
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


class _HeadersGetter(Getter[dict[bytes, bytes]]):
    """Header values for the propagators, decoded only when one asks for them."""

    def get(self, carrier: dict[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: dict[bytes, bytes]) -> list[str]:
        return [name.decode("latin-1") for name in carrier]


_HEADERS = _HeadersGetter()


def new_request_id() -> str:
    """32 hex digits. A request id correlates, it guards nothing: no need for the
    system's random source (a syscall per request), Python's generator will do."""
    return f"{random.getrandbits(128):032x}"


class RequestRecord:
    """What one request leaves behind: a server span, the request id in and out,
    one log line and the HTTP metrics. Probes and `/metrics` get the id and the
    metrics only. Made, ended and detached by the api's middleware (edge.Edge)."""

    __slots__ = (
        "quiet",
        "request_id",
        "request_id_header",
        "scope",
        "span",
        "started",
        "status",
        "token",
    )

    def __init__(self, scope: Scope, headers: dict[bytes, bytes], *, quiet: bool) -> None:
        self.scope = scope
        incoming = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        self.request_id = incoming if VALID_REQUEST_ID.match(incoming) else new_request_id()
        self.request_id_header = (REQUEST_ID_HEADER, self.request_id.encode())
        self.quiet = quiet
        self.status = 500  # unless the app answers
        self.span: trace.Span | None = None
        self.token: Token[Context] | None = None
        if not quiet:
            # The configured propagators (W3C trace context and baggage by default)
            # read the client's headers; the attributes are set once, at the end.
            parent = propagate.extract(headers, getter=_HEADERS)
            self.span = span = tracer.start_span(
                scope["method"], context=parent, kind=SpanKind.SERVER
            )
            self.token = otel_context.attach(trace.set_span_in_context(span, parent))
        self.started = time.perf_counter()

    def failed(self, exc: Exception) -> None:
        if self.span is not None:
            self.span.record_exception(exc)

    def done(self) -> None:
        """The span's name and attributes, the metrics and the log line; the span ends."""
        duration_s = time.perf_counter() - self.started
        scope, span, status = self.scope, self.span, self.status
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
                    REQUEST_ID_ATTRIBUTE: self.request_id,
                }
            )
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            if trace_id := sampled_trace_id(span):
                exemplar = {"trace_id": trace_id}
        key = (method, route, status)
        _requests.get(key).inc(exemplar=exemplar)
        _durations.get(key).observe(duration_s, exemplar)
        if not self.quiet:
            fields: dict[str, Any] = {
                "method": method,
                "route": route,
                "status": status,
                "duration_s": round(duration_s, 4),
            }
            logger.info("request", extra={"fields": fields})
        if span is not None:
            span.end()

    def detach(self) -> None:
        """The span stops being the current one (after the log line, which names it)."""
        if self.token is not None:
            otel_context.detach(self.token)


def _mount(scope: Scope) -> str | None:
    """`/ui/{path}` for files a mounted app served: one label for all of them.

    A mount matched has moved its prefix into `root_path` (after whatever
    `root_path` the app itself was given, kept as `app_root_path`).
    """
    prefix = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return f"{prefix}/{{path}}" if prefix else None


async def refresh_queue_metrics(store: JobStore, catalog: Catalog) -> None:
    """Queue depth, latency and pause, read at scrape time (a few O(log n) commands a queue)."""
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
        # Workers export these too, from their claims; the api's are there while
        # a paused queue has no worker at all (scaled to zero), so the alerts
        # that a pause silences stay silenced, and a long pause still alerts.
        QUEUE_PAUSED.labels(s.name).set(1 if s.paused_at_ms else 0)
        paused_ms = max(now_ms() - s.paused_at_ms, 0) if s.paused_at_ms else 0
        QUEUE_PAUSED_SECONDS.labels(s.name).set(paused_ms / 1000)


async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with trace-id exemplars) when asked for."""
    await refresh_queue_metrics(request.app.state.store, request.app.state.catalog)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), headers={"Content-Type": content_type})


def setup_telemetry(app: FastAPI) -> None:
    """Call once, after `app.state.catalog` is set. The per-request part is done
    by the api's middleware (edge.Edge), with a `RequestRecord` per request."""
    # Each job type's enqueue counter exists at 0 from the start, so rate() sees
    # the first job after a restart.
    for job_type in app.state.catalog:
        JOBS_ENQUEUED.labels(job_type.name, job_type.queue)
    app.add_api_route("/metrics", metrics, include_in_schema=False)
