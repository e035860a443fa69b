"""OpenTelemetry tracing, set up once per process from the standard OTEL_* variables,
and the trace context that travels inside a job's kwargs.

Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise trace ids are still
made, and logged, but go nowhere. OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES work as everywhere else.
"""

import os
from typing import TYPE_CHECKING

from opentelemetry import context, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from conveyor_core.otlp import SpanBatcher

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("conveyor")
# Where setup_tracing sends spans over OTLP (None: nowhere). Makers of spans
# written as bytes (job_span.py) hand them to it directly.
_batcher: "SpanBatcher | None" = None

# Semantic conventions for messaging spans (the names, as the spec spells them).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
SYSTEM = "arq"


def messaging_attributes(operation: str, queue: str, job_id: str, job_name: str) -> dict[str, str]:
    """The messaging semantic conventions for a `send` or `process` span of one job."""
    return {
        MESSAGING_SYSTEM: SYSTEM,
        MESSAGING_OPERATION_TYPE: operation,
        MESSAGING_OPERATION_NAME: operation,
        MESSAGING_DESTINATION: queue,
        MESSAGING_MESSAGE_ID: job_id,
        "conveyor.job.name": job_name,
    }


class HashedOnceResource(Resource):
    """A Resource whose hash is worked out once. The OTLP exporter groups every
    span it sends by its resource, and Resource hashes by writing its
    attributes as JSON each time: a share of every span's cost. A Resource
    never changes, so once is enough."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def setup_tracing(service_name: str) -> TracerProvider:
    """Install the global tracer provider; OTEL_SERVICE_NAME wins over `service_name`."""
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=HashedOnceResource(Resource.create(attributes)))
    global _batcher
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from conveyor_core.otlp import CompactOTLPSpanExporter, SpanBatcher

        # Scrubbed and bounded on the way out, as log lines are (span_redaction.py),
        # and written at a fraction of OpenTelemetry's encoder's cost (otlp.py).
        _batcher = SpanBatcher(CompactOTLPSpanExporter())
        provider.add_span_processor(_batcher)
    trace.set_tracer_provider(provider)
    return provider


def span_sink() -> "SpanBatcher | None":
    """Where spans go over OTLP, if anywhere (setup_tracing decides)."""
    return _batcher


def inject(carrier: dict[str, str]) -> None:
    """Write the current span's W3C traceparent/tracestate into `carrier`."""
    _propagator.inject(carrier)


def extract(carrier: dict[str, str]) -> context.Context:
    return _propagator.extract(carrier)


def current_trace_id() -> str | None:
    span = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span.trace_id) if span.is_valid else None


def sampled_trace_id(span: trace.Span) -> str | None:
    """The span's trace id (32 hex digits), if the span is sampled; else None."""
    context = span.get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return f"{context.trace_id:032x}"
