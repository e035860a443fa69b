"""A job's span without OpenTelemetry's SDK Span: ids, times and attributes
written straight to OTLP bytes.

The SDK's span costs a job more than the job's own bookkeeping: a lock, a
bounded attribute map, a status, an event list, its processors' calls, and
its encoding in the export thread. A job's span is one shape per job type:
the name, kind and the type's attributes are written once (`JobSpanKind`), a
try adds its id, try, wait and outcome. The ended span goes to the exporter
(otlp.SpanBatcher) as it is, and the export thread joins its Span message
from those bytes: the job's thread, which runs the next job, does not.

It is a `trace.Span` and the current span while the job runs, so the
handler's own spans are its children, its log lines carry its trace id, a job
it enqueues carries its traceparent, and the handler may still add attributes,
events and a status to it. Sampling is the provider's: its sampler decides
(the default, parent-based, without a call), and an unsampled span is only
ids. With the SDK disabled (OTEL_SDK_DISABLED) nothing is recorded and the
parent's context passes through, as the SDK's tracer does then.
"""

import logging
import re
import struct
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from conveyor_core import otlp
from conveyor_core.redaction import clean
from conveyor_core.span_redaction import cleaned_value
from conveyor_core.tracing import extract, span_sink

logger = logging.getLogger(__name__)

# W3C traceparent, version 00 exactly (others go through the propagator).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The SDK's default span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, ..._EVENT_COUNT_LIMIT).
MAX_ADDED_ATTRIBUTES = 128
MAX_EVENTS = 128
# What an attribute may hold: one of these, or a sequence of one of them.
_PRIMITIVES = (str, bool, int, float)
_PRIMITIVE_TYPES = frozenset(_PRIMITIVES)
_DEFAULT_SAMPLER = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]
# Every value of a traceparent's flags, made once.
_FLAGS = [TraceFlags(n) for n in range(256)]
_UNSET = otlp._len(15, b"")
# A child span keeps these of its parent's flags (sampled, random trace id).
_INHERITED_FLAGS = TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID
# Its start and end (fields 7 and 8, fixed64), written in one go.
_times = struct.Struct("<BQBQ").pack
_REMOTE_PARENT = b"\x85\x01" + otlp._fixed32(otlp._HAS_IS_REMOTE | otlp._IS_REMOTE)
_LOCAL_PARENT = b"\x85\x01" + otlp._fixed32(otlp._HAS_IS_REMOTE)


def _valid(key: str, value: object) -> Any:
    """The value as a span keeps it (a list as a tuple), or None where the
    spec allows no such attribute, which the SDK's span drops too."""
    if not key or not isinstance(key, str):
        logger.warning("a span attribute needs a name; dropped")
        return None
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        kinds = {type(v) for v in value if v is not None}
        if len(kinds) <= 1 and kinds <= _PRIMITIVE_TYPES:
            return tuple(value)
    logger.warning("span attribute %r: %s is not a valid value; dropped", key, type(value).__name__)
    return None


def parent_of(carrier: Mapping[str, str]) -> SpanContext | None:
    """The remote parent a job's kwargs carry (its traceparent), if valid."""
    traceparent = carrier.get("traceparent")
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:  # another version, or not valid: as the propagator reads it
        parent = trace.get_current_span(extract(dict(carrier))).get_span_context()
        return parent if parent.is_valid else None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not (trace_id and span_id):
        return None
    state = carrier.get("tracestate")
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=_FLAGS[int(match[3], 16)],
        trace_state=TraceState.from_header([state]) if state else None,
    )


class SpanSink(Protocol):
    """Where a written span goes (otlp.SpanBatcher)."""

    def add(self, span: otlp.WrittenSpan) -> None: ...


class JobSpanKind:
    """What every span of one job type shares, written once: name, kind, the
    type's attributes, and the provider's sampler, ids, resource and exporter."""

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        *,
        tracer: trace.Tracer | None = None,
        sink: SpanSink | None = None,
    ) -> None:
        """`tracer` (the provider's "conveyor" one) and `sink` (where
        setup_tracing exports spans) are those of the process unless given."""
        self.name = name
        self.kind = kind
        self.head = otlp.span_head(name, kind.value)
        self.attributes = b"".join(otlp.span_attribute(k, v) for k, v in attributes.items())
        self.keys = frozenset(attributes)
        tracer = tracer or trace.get_tracer("conveyor")
        # The SDK's tracer, unless the SDK is disabled (a no-op tracer then).
        self.recording = isinstance(tracer, Tracer)
        if isinstance(tracer, Tracer):
            self.sampler: Sampler = tracer.sampler
            self.new_span_id = tracer.id_generator.generate_span_id
            self.new_trace_id = tracer.id_generator.generate_trace_id
            self.random_trace_ids = tracer.id_generator.is_trace_id_random()
            self.resource: Resource = tracer.resource
            info = tracer.instrumentation_info  # the scope the SDK's spans are grouped by
            self.scope = InstrumentationScope(info.name, info.version, info.schema_url)
        self.default_sampler = self.recording and self.sampler.get_description() == _DEFAULT_SAMPLER
        self.sink = sink if sink is not None else span_sink()

    def start_under(
        self, carrier: Mapping[str, str], attributes: bytes = b""
    ) -> "JobSpan | trace.NonRecordingSpan":
        """`start(parent_of(carrier), attributes)`, made in one step where it
        is plain (a version 00 traceparent, the default sampler): the parent's
        ids go from the traceparent into the span without a SpanContext of
        their own. This runs for every job."""
        traceparent = carrier.get("traceparent")
        match = (
            _TRACEPARENT.fullmatch(traceparent)
            if traceparent is not None and self.default_sampler
            else None
        )
        if match is None:
            return self.start(parent_of(carrier), attributes)
        trace_id, parent_id = int(match[1], 16), int(match[2], 16)
        if not (trace_id and parent_id):  # not valid: as parent_of says
            return self.start(None, attributes)
        state = carrier.get("tracestate")
        # The parent's sampled and random-trace-id flags are the span's (ParentBased).
        flags = _FLAGS[int(match[3], 16) & _INHERITED_FLAGS]
        context = SpanContext(
            trace_id,
            self.new_span_id(),
            False,
            flags,
            TraceState.from_header([state]) if state else None,
        )
        if not flags & TraceFlags.SAMPLED:
            return trace.NonRecordingSpan(context)
        return JobSpan(self, context, parent_id, True, attributes, time.time_ns())

    def start(
        self,
        parent: SpanContext | None,
        attributes: bytes = b"",
        start_ns: int | None = None,
    ) -> "JobSpan | trace.NonRecordingSpan":
        """A span of this kind under `parent` (a remote one: a job's producer),
        with `attributes` written (span_attribute) after the kind's own."""
        if not self.recording:
            return trace.NonRecordingSpan(parent or trace.INVALID_SPAN_CONTEXT)
        if parent is None:
            trace_id = self.new_trace_id()
            random_id = self.random_trace_ids
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        trace_state = parent.trace_state if parent is not None else None
        if self.default_sampler:
            sampled = parent is None or parent.trace_flags.sampled
        else:
            parent_context = (
                trace.set_span_in_context(trace.NonRecordingSpan(parent), Context())
                if parent is not None
                else Context()
            )
            result = self.sampler.should_sample(parent_context, trace_id, self.name, self.kind)
            sampled, trace_state = result.decision is Decision.RECORD_AND_SAMPLE, result.trace_state
        flags = (TraceFlags.SAMPLED if sampled else 0) | (
            TraceFlags.RANDOM_TRACE_ID if random_id else 0
        )
        context = SpanContext(trace_id, self.new_span_id(), False, _FLAGS[flags], trace_state)
        if not sampled:
            return trace.NonRecordingSpan(context)
        parent_id = parent.span_id if parent is not None else None
        remote = parent is not None and parent.is_remote
        return JobSpan(self, context, parent_id, remote, attributes, start_ns or time.time_ns())


class JobSpan(trace.Span):
    """A sampled span of a JobSpanKind; `finish` (or `end`) writes and exports it."""

    __slots__ = (
        "_added",
        "_attributes",
        "_context",
        "_dropped_attributes",
        "_dropped_events",
        "_end_attributes",
        "_end_ns",
        "_ended",
        "_events",
        "_kind",
        "_name",
        "_parent_id",
        "_remote_parent",
        "_start_ns",
        "_status",
    )

    def __init__(
        self,
        kind: JobSpanKind,
        context: SpanContext,
        parent_id: int | None,
        remote_parent: bool,
        attributes: bytes,
        start_ns: int,
    ) -> None:
        """`parent_id`: the parent's span id (None: a root span), `remote_parent`
        whether it is another process's (a job's producer)."""
        self._kind = kind
        self._context = context
        self._parent_id = parent_id
        self._remote_parent = remote_parent
        self._attributes = attributes
        self._start_ns = start_ns
        # What the handler adds, written at the end (and cleaned then).
        self._added: dict[str, AttributeValue] | None = None
        self._events: list[tuple[str, Attributes, int]] | None = None
        self._status: Status | None = None
        self._name: str | None = None
        self._ended = False
        self._dropped_attributes = 0
        self._dropped_events = 0

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._ended or key in self._kind.keys:  # the job's own attributes are the worker's
            return
        kept = _valid(key, value)
        if kept is None:
            return
        added = self._added
        if added is None:
            added = self._added = {}
        if key not in added and len(added) >= MAX_ADDED_ATTRIBUTES:
            self._dropped_attributes += 1
            return
        added[key] = kept

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._ended:
            return
        events = self._events
        if events is None:
            events = self._events = []
        if len(events) >= MAX_EVENTS:
            self._dropped_events += 1
            return
        # As the span keeps them (lists as tuples): it is written after it ends.
        valid = ((k, _valid(k, v)) for k, v in (attributes or {}).items())
        kept = {k: v for k, v in valid if v is not None}
        events.append((name, kept, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Links are made when a span starts; a job's span has none."""

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's: an OK status is final, and UNSET changes nothing."""
        if self._ended or (self._status is not None and self._status.is_ok):
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The event OpenTelemetry's SDK records for an exception."""
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        self.finish(b"", end_time)

    def finish(self, attributes: bytes = b"", end_ns: int | None = None) -> None:
        """End the span with `attributes` (span_attribute) written last, and
        hand it to the exporter, whose thread writes it (`framed`)."""
        if self._ended:
            return
        self._ended = True
        sink = self._kind.sink
        if sink is None:
            return
        self._end_attributes = attributes
        self._end_ns = end_ns or time.time_ns()
        sink.add(self)

    # What the export groups it by (otlp.WrittenSpan).
    @property
    def resource(self) -> Resource:
        return self._kind.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._kind.scope

    def framed(self) -> bytes:
        """The Span message, as otlp.SpanEncoder writes the SDK's (strings
        cleaned), framed as its ScopeSpans' field. Once ended, nothing
        changes the span: the export thread writes it, not the job's."""
        kind = self._kind
        head = kind.head if self._name is None else otlp.span_head(self._name, kind.kind.value)
        parts = otlp.span_ids(self._context, self._parent_id)
        parts += (
            head,
            _times(0x39, self._start_ns, 0x41, self._end_ns),
            kind.attributes,
            self._attributes,
        )
        if self._added:
            parts += (otlp.span_attribute(k, v) for k, v in self._added.items())
        parts.append(self._end_attributes)
        if self._dropped_attributes:
            parts.append(otlp._uint(10, self._dropped_attributes))
        for name, event_attributes, timestamp in self._events or ():
            event = [b"\x09", otlp._fixed64(timestamp), otlp._text(2, name)]
            event += (
                otlp._len(3, otlp.key_value(k, cleaned_value(k, v)))
                for k, v in (event_attributes or {}).items()
            )
            parts.append(otlp._len(11, b"".join(event)))
        if self._dropped_events:
            parts.append(otlp._uint(12, self._dropped_events))
        status = self._status
        if status is None:
            parts.append(_UNSET)
        else:
            description = clean(status.description) if status.description else ""
            body = otlp._text(2, description) + otlp._uint(3, status.status_code.value)
            parts.append(otlp._len(15, body))
        parts.append(_REMOTE_PARENT if self._remote_parent else _LOCAL_PARENT)
        return otlp.as_scope_span(b"".join(parts))
