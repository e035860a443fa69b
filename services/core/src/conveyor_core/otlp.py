"""Spans to OTLP/HTTP, written as protobuf bytes directly, scrubbed on the way.

OpenTelemetry's exporter builds a protobuf object for every span, attribute
and value before it serializes them: about 35 µs a span, in the export
thread of the process whose jobs or requests made the span (it holds the
GIL meanwhile). The wire format is simple, and most of a span repeats (its
name and kind, the messaging attributes of its job type, the resource and the
scope): here each piece is written as bytes, and the pieces that repeat are
written once and reused. The request is the one OpenTelemetry's encoder
makes (tests/core/test_otlp.py decodes both and compares them); sending it
(endpoint, headers, compression, retries, TLS) stays the exporter's own.

Every string attribute (the span's and its events') and the status
description is cleaned on the way out, as log lines are (span_redaction.py).
"""

import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from opentelemetry import context as context_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

from conveyor_core.redaction import clean
from conveyor_core.span_redaction import cleaned_value

logger = logging.getLogger(__name__)

# Protobuf wire types.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
# SpanFlags: the span's parent (or a link's context) says whether it is remote.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
# Pieces that repeat (attributes, a span's name and kind, a resource), written
# once; cleared when full, so unique values (ids) cannot grow it for ever.
_CACHE_MAX = 4096

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack
_SMALL = [bytes([n]) for n in range(0x80)]
K = TypeVar("K")
V = TypeVar("V")


def _capped(cache: dict[K, V]) -> dict[K, V]:
    """`cache`, emptied when full: what it holds is cheap to write again."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    return cache


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if 0 < n < 0x4000:  # a span's length, most often: two bytes
        return bytes((n & 0x7F | 0x80, n >> 7))
    n &= 0xFFFF_FFFF_FFFF_FFFF  # a negative int64 is ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len(field: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _text(field: int, text: str) -> bytes:
    return _len(field, text.encode()) if text else b""


def _uint(field: int, n: int) -> bytes:
    return _tag(field, _VARINT) + _varint(n) if n else b""


def any_value(value: Any) -> bytes:
    """An AnyValue message, as OpenTelemetry's encoder makes one."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + _SMALL[int(value)]
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join(_len(1, any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _len(6, b"".join(_len(1, key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid attribute value of type {type(value).__name__}: {value!r}")


def key_value(key: str, value: Any) -> bytes:
    return _len(1, key.encode()) + _len(2, any_value(value))


def span_attribute(key: str, value: Any) -> bytes:
    """One of a Span's attributes (field 9), its strings cleaned."""
    return _len(9, key_value(key, cleaned_value(key, value)))


class StringAttribute:
    """A span attribute (field 9) with a fixed key and a string value, cleaned
    (by `cleaner`, redaction.clean or one that cleans alike):
    `span_attribute(key, value)` with the key written once."""

    def __init__(self, key: str, cleaner: Callable[[str], str] = clean) -> None:
        self._key = _len(1, key.encode()) + b"\x12"
        self._clean = cleaner
        # Everything before the value's bytes depends on their length only,
        # and a job's ids have a few lengths: written once per length.
        self._heads: dict[int, bytes] = {}

    def __call__(self, value: str) -> bytes:
        text = self._clean(value).encode()
        head = self._heads.get(len(text))
        if head is None:
            head = _capped(self._heads)[len(text)] = self._head(len(text))
        return head + text

    def _head(self, length: int) -> bytes:
        any_value = b"\x0a" + _varint(length)
        pair = self._key + _varint(len(any_value) + length) + any_value
        return b"\x4a" + _varint(len(pair) + length) + pair


def span_head(name: str, kind: int) -> bytes:
    """A Span's name and kind (fields 5 and 6); `kind` is the SpanKind's value."""
    return _text(5, name) + _uint(6, kind + 1)  # the protobuf enum counts from UNSPECIFIED


class WrittenSpan(Protocol):
    """A span that writes its own Span message (a job's span, job_span.py),
    with what the request groups it by. It is ended, so nothing changes it:
    the export thread calls `framed()`, not the thread that ended it."""

    @property
    def resource(self) -> Resource: ...

    @property
    def instrumentation_scope(self) -> InstrumentationScope | None: ...

    def framed(self) -> bytes:
        """The Span message as a field of its ScopeSpans (`as_scope_span`)."""
        ...


def as_scope_span(span: bytes) -> bytes:
    """A Span message as a ScopeSpans' `spans` field (2)."""
    return _len(2, span)


def span_ids(context: SpanContext, parent_span_id: int | None) -> list[bytes]:
    """A Span message's first fields: its trace and span ids, its trace state
    and its parent's span id (the job span's encoder and the SDK's share them)."""
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_text(3, context.trace_state.to_header()))
    if parent_span_id is not None:
        parts += (b"\x22\x08", parent_span_id.to_bytes(8, "big"))
    return parts


class SpanEncoder:
    """ExportTraceServiceRequest bytes for a batch of spans, grouped by resource
    and scope as OpenTelemetry's encoder groups them."""

    def __init__(self) -> None:
        # By key, value and its type (True == 1, and 1 == 1.0, are encoded apart).
        self._attributes: dict[tuple[str, Any, type], bytes] = {}
        self._heads: dict[tuple[str, int], bytes] = {}
        self._resources: dict[Resource, bytes] = {}
        self._scopes: dict[InstrumentationScope | None, bytes] = {}

    def request(self, spans: Sequence[ReadableSpan | WrittenSpan]) -> bytes:
        groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
        resource, scope, framed = None, None, []  # the group of the span before
        for span in spans:
            if span.resource is not resource or span.instrumentation_scope is not scope:
                resource, scope = span.resource, span.instrumentation_scope
                scopes = groups.setdefault(resource, {})
                framed = scopes.setdefault(scope or None, [])
            if isinstance(span, ReadableSpan):
                framed.append(_len(2, self.span(span)))
                continue
            try:
                framed.append(span.framed())
            except Exception:  # a bug in one span's writing costs that span, not the batch
                logger.exception("could not write a span")
        out = []
        for resource, scopes in groups.items():
            scope_spans = b"".join(
                _len(2, self._scope(scope) + b"".join(encoded)) for scope, encoded in scopes.items()
            )
            out.append(_len(1, self._resource(resource) + scope_spans))
        return b"".join(out)

    def span(self, span: ReadableSpan) -> bytes:
        """One Span message, its strings cleaned."""
        context = span.context
        assert context is not None  # a span the SDK ended has one
        parent = span.parent
        parts = span_ids(context, parent.span_id if parent is not None else None)
        kind = span.kind.value + 1  # the protobuf enum counts from UNSPECIFIED
        head = self._heads.get((span.name, kind))
        if head is None:
            head = _text(5, span.name) + _uint(6, kind)
            _capped(self._heads)[(span.name, kind)] = head
        parts += (head, b"\x39", _fixed64(span.start_time or 0), b"\x41")
        parts.append(_fixed64(span.end_time or 0))
        parts.append(self._attributes_of(span.attributes, 9, clean_strings=True))
        parts.append(_uint(10, span.dropped_attributes))
        for event in span.events:
            body = (
                b"\x09"
                + _fixed64(event.timestamp)
                + _text(2, event.name)
                + self._attributes_of(event.attributes, 3, clean_strings=True)
                + _uint(4, event.dropped_attributes)
            )
            parts.append(_len(11, body))
        parts.append(_uint(12, span.dropped_events))
        for link in span.links:
            body = (
                b"\x0a\x10"
                + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + link.context.span_id.to_bytes(8, "big")
                + self._attributes_of(link.attributes, 4, clean_strings=False)
                + _uint(5, link.dropped_attributes)
                + b"\x35"
                + _fixed32(_flags(link.context))
            )
            parts.append(_len(13, body))
        parts.append(_uint(14, span.dropped_links))
        status = span.status
        description = clean(status.description) if status.description else ""
        parts.append(_len(15, _text(2, description) + _uint(3, status.status_code.value)))
        parts += (b"\x85\x01", _fixed32(_flags(parent)))
        return b"".join(parts)

    def _attributes_of(
        self, attributes: Mapping[str, Any] | None, field: int, *, clean_strings: bool
    ) -> bytes:
        """Repeated KeyValue fields; a (key, value) pair met before is reused."""
        if not attributes:
            return b""
        cache, out = self._attributes, []
        # The SDK's BoundedAttributes is a Mapping over a dict: its items() reads
        # each key through __getitem__; the dict's own is a fraction of that.
        plain: Mapping[str, Any] = getattr(attributes, "_dict", attributes)
        for key, value in plain.items():
            try:
                encoded = cache.get((key, value, type(value)))
            except TypeError:  # an unhashable value (a list): encoded each time
                encoded = None
                hashable = False
            else:
                hashable = True
            if encoded is None:
                kept = cleaned_value(key, value) if clean_strings else value
                encoded = _len(field, key_value(key, kept))
                if hashable:
                    _capped(cache)[(key, value, type(value))] = encoded
            out.append(encoded)
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        """A ResourceSpans' resource and schema url (field 1 and 3)."""
        encoded = self._resources.get(resource)
        if encoded is None:
            attributes = b"".join(_len(1, key_value(k, v)) for k, v in resource.attributes.items())
            encoded = _len(1, attributes) + _text(3, resource.schema_url)
            _capped(self._resources)[resource] = encoded
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """A ScopeSpans' scope and schema url (fields 1 and 3)."""
        encoded = self._scopes.get(scope)
        if encoded is None:
            body = b""
            if scope is not None:
                attributes = scope.attributes or {}
                body = (
                    _text(1, scope.name)
                    + _text(2, scope.version or "")
                    + b"".join(_len(3, key_value(k, v)) for k, v in attributes.items())
                )
            encoded = _len(1, body) + _text(3, (scope.schema_url or "") if scope else "")
            _capped(self._scopes)[scope] = encoded
        return encoded


def _flags(context: SpanContext | None) -> int:
    if context is not None and context.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


class CompactOTLPSpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/HTTP exporter (its settings, transport and retries)
    with the request written by SpanEncoder, strings cleaned."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            data = self._encoder.request(spans)
        except Exception as exc:  # a value no span should hold: the batch is lost, not the thread
            logger.error("could not encode %d spans: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        return self.send(data)

    def send(self, data: bytes) -> SpanExportResult:
        """An ExportTraceServiceRequest already written."""
        if self._shutdown:
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        logger.warning("%s is not a whole number: using %d", name, default)
        return default
    return value if value > 0 else default


# Four times OpenTelemetry's defaults (2048 and 512): a request's cost is mostly
# per request (the HTTP client's, and the export thread holding the GIL while
# it runs), and a written span is a few hundred bytes.
MAX_QUEUED_SPANS = 8192
SPANS_PER_REQUEST = 2048


class SpanBatcher(SpanProcessor):
    """Spans to OTLP in batches, from one background thread: the SDK's spans
    (encoded there) and spans written as bytes by their makers (`add`).

    The thread that ends a span pays an append to a deque and, once per batch,
    an Event's set: no lock or condition per span. The export thread writes the
    request and sends it; the send's network I/O releases the GIL. Settings as
    OpenTelemetry's BatchSpanProcessor reads them: OTEL_BSP_SCHEDULE_DELAY (ms),
    OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, with larger
    defaults (MAX_QUEUED_SPANS, SPANS_PER_REQUEST). A span that finds the
    queue full is dropped (and counted in a warning), as there.
    """

    def __init__(self, exporter: CompactOTLPSpanExporter) -> None:
        self._exporter = exporter
        self._encoder = SpanEncoder()
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._max_queued = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUED_SPANS)
        self._batch_size = min(
            _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", SPANS_PER_REQUEST), self._max_queued
        )
        self._queue: deque[ReadableSpan | WrittenSpan] = deque()
        self._dropped = 0
        self._stopping = False
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        """The export thread (again in a forked child, which has none)."""
        self._queue.clear()
        self._wake = threading.Event()
        # One export at a time: the thread's, or a flush's.
        self._exporting = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="conveyor-span-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.add(span)

    def add(self, span: ReadableSpan | WrittenSpan) -> None:
        queue = self._queue
        if len(queue) >= self._max_queued:
            self._dropped += 1
            return
        queue.append(span)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._export_all()
        self._export_all()

    def _export_all(self) -> None:
        queue, size = self._queue, self._batch_size
        with self._exporting:
            # The export's own requests are not traced (an instrumented HTTP client).
            token = context_api.attach(
                context_api.set_value(context_api._SUPPRESS_INSTRUMENTATION_KEY, True)
            )
            try:
                while queue:
                    batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                    self._export(batch)
            finally:
                context_api.detach(token)
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                logger.warning("dropped %d spans: the export queue was full", dropped)

    def _export(self, batch: list[ReadableSpan | WrittenSpan]) -> None:
        try:
            data = self._encoder.request(batch)
        except Exception as exc:  # a value no span should hold: the batch is lost, not the thread
            logger.error("could not encode %d spans: %s", len(batch), exc)
            return
        try:
            self._exporter.send(data)
        except Exception:  # the transport's own failures are results; this is a bug
            logger.exception("could not export %d spans", len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._stopping:
            return False
        self._export_all()
        return True

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(30)
        self._exporter.shutdown()  # type: ignore[no-untyped-call]
