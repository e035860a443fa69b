"""Spans leave the process scrubbed and bounded, as log lines do.

A span's attributes and its events' (an exception's message and stack trace,
recorded whole by `record_exception`) may carry a request's or a job's text.
The OTLP exporter (otlp.py) cleans each string as `cleaned_value` says on the
way out, in the export thread, so the request or the job pays nothing for it;
`scrubbed` is the span that request describes.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Status

from conveyor_core.redaction import clean, clean_traceback

# OpenTelemetry's name for a recorded exception's stack trace: kept from its end.
STACKTRACE = "exception.stacktrace"


def cleaned_value(key: str, value: Any) -> Any:
    """An attribute's value as it leaves the process: each string in it cleaned
    (a stack trace kept from its end)."""
    if isinstance(value, str):
        return clean_traceback(value) if key == STACKTRACE else clean(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return tuple(clean(v) if isinstance(v, str) else v for v in value)
    return value


def cleaned_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: cleaned_value(key, value) for key, value in (attributes or {}).items()}


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with every string attribute (its own and its events')
    bounded and scrubbed (redaction.clean), and its status description too."""
    status = span.status
    if status.description:
        status = Status(status.status_code, clean(status.description))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=cleaned_attributes(span.attributes),
        events=[Event(e.name, cleaned_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
