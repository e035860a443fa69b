"""A job's span written as bytes (job_span.py): the span OpenTelemetry's SDK
would export for the same job, its parent and sampling as the SDK decides
them, the current span for the handler's own spans, and exported in batches
to a real receiver (otlp.SpanBatcher)."""

import time
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from conveyor_core.job_span import JobSpan, JobSpanKind, parent_of
from conveyor_core.otlp import (
    CompactOTLPSpanExporter,
    SpanBatcher,
    SpanEncoder,
    WrittenSpan,
    span_attribute,
)
from conveyor_core.span_redaction import scrubbed
from conveyor_core.tracing import extract
from tests.support.otlp import otlp_collector

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_HEX = "00f067aa0ba902b7"
META = {
    "traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-01",
    "tracestate": "vendor=one,other=two",
    "request_id": "req-7",
}
NAME = "process arq:queue"
FIXED = {
    "messaging.system": "arq",
    "messaging.operation.type": "process",
    "messaging.operation.name": "process",
    "messaging.destination.name": "arq:queue",
    "conveyor.job.name": "welcome",
}
START_NS, END_NS, EVENT_NS = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000, 1_700_000_000_1


class FixedIds(IdGenerator):
    """The same ids for the SDK's span and ours."""

    def generate_span_id(self) -> int:
        return 0x1111_2222_3333_4444

    def generate_trace_id(self) -> int:
        return 0x5555_6666_7777_8888_9999_AAAA_BBBB_CCCC


class Kept:
    def __init__(self) -> None:
        self.spans: list[WrittenSpan] = []

    def add(self, span: WrittenSpan) -> None:
        self.spans.append(span)


def provider(**settings: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    kept = InMemorySpanExporter()
    made = TracerProvider(
        resource=Resource.create({"service.name": "worker"}), id_generator=FixedIds(), **settings
    )
    made.add_span_processor(SimpleSpanProcessor(kept))
    return made, kept


def try_attributes(job_id: str, wait_s: float) -> dict[str, Any]:
    return {
        "messaging.message.id": job_id,
        "conveyor.job.try": 2,
        "conveyor.queue_wait_s": wait_s,
        "conveyor.request_id": "req-7",
    }


def written(attributes: dict[str, Any]) -> bytes:
    return b"".join(span_attribute(k, v) for k, v in attributes.items())


def run_both(meta: dict[str, str], *, fail: bool) -> tuple[ReadableSpan, JobSpan]:
    """One try's span made by the SDK's tracer and by a JobSpanKind, alike."""
    sdk, kept = provider()
    tracer = sdk.get_tracer("conveyor")
    per_try = try_attributes("{arq:queue}ab12 mail ada@example.com", 0.125)
    error = ValueError("refused ada@example.com")
    try:
        raise error
    except ValueError:
        pass

    reference = tracer.start_span(
        NAME,
        context=extract(meta),
        kind=SpanKind.CONSUMER,
        attributes={**FIXED, **per_try},
        start_time=START_NS,
    )
    sink = Kept()
    ours = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=tracer, sink=sink).start(
        parent_of(meta), written(per_try), start_ns=START_NS
    )
    assert isinstance(ours, JobSpan)
    for span in (reference, ours):  # what a handler may do with the current span
        span.set_attribute("order.note", "call ada@example.com")
        span.set_attribute("order.lines", [1, 2])
        span.add_event("checked", {"token": "token=abcdef123456"}, timestamp=EVENT_NS)
        if fail:
            span.record_exception(error, timestamp=EVENT_NS + 1)
            span.set_status(Status(StatusCode.ERROR, "ValueError for ada@example.com"))
    outcome = "dead" if fail else "complete"
    reference.set_attribute("conveyor.job.outcome", outcome)
    reference.end(end_time=END_NS)
    ours.finish(span_attribute("conveyor.job.outcome", outcome), end_ns=END_NS)
    (sdk_span,) = kept.get_finished_spans()
    assert sink.spans == [ours]  # handed over as it is: the export thread writes it
    return sdk_span, ours


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("meta", [META, {}], ids=["remote parent", "root"])
def test_a_job_span_is_the_span_the_sdk_exports_for_the_job(
    meta: dict[str, str], fail: bool
) -> None:
    sdk_span, encoded = run_both(meta, fail=fail)
    expected = encode_spans([scrubbed(sdk_span)])
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().request([encoded]))
    assert ours == expected
    (span,) = ours.resource_spans[0].scope_spans[0].spans
    assert span.name == NAME
    assert ours.resource_spans[0].scope_spans[0].scope.name == "conveyor"
    if meta:
        assert span.trace_id.hex() == TRACE_HEX
        assert span.parent_span_id.hex() == PARENT_HEX
        assert span.trace_state == "vendor=one,other=two"
    else:
        assert not span.parent_span_id
    text = str(ours)
    assert "ada@example.com" not in text
    assert "abcdef123456" not in text
    assert (span.status.code == 2) is fail


def test_a_batch_mixes_written_spans_and_the_sdks() -> None:
    sdk_span, encoded = run_both(META, fail=False)
    request = ExportTraceServiceRequest.FromString(SpanEncoder().request([sdk_span, encoded]))
    # One resource, one scope: the two spans side by side, the same message.
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    first, second = scope_spans.spans
    assert first == second


def test_a_span_that_cannot_be_written_costs_itself_not_its_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spans are written in the export thread, a batch at a time."""
    _, encoded = run_both(META, fail=False)
    broken = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, sink=Kept()).start(parent_of(META))
    assert isinstance(broken, JobSpan)
    broken.finish(b"")
    broken._status = "not a Status"  # type: ignore[assignment]  # what a bug would leave
    request = ExportTraceServiceRequest.FromString(SpanEncoder().request([broken, encoded]))
    (kept,) = [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert kept.span_id == encoded.get_span_context().span_id.to_bytes(8, "big")
    assert "could not write a span" in caplog.text


def test_a_span_ended_is_written_as_it_ended() -> None:
    """What the handler does after the end does not reach the export thread's write."""
    sink = Kept()
    span = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, sink=sink).start(parent_of(META))
    assert isinstance(span, JobSpan)
    span.finish(b"")
    before = span.framed()
    span.set_attribute("late", "x")
    span.add_event("late")
    span.set_status(Status(StatusCode.ERROR, "late"))
    span.update_name("late")
    assert span.framed() == before
    assert sink.spans == [span]


def test_the_handlers_spans_are_children_of_the_job_span() -> None:
    sdk, kept = provider()
    tracer = sdk.get_tracer("conveyor")
    span = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=tracer, sink=Kept()).start(
        parent_of(META)
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        with trace.get_tracer("handler", tracer_provider=sdk).start_as_current_span("charge"):
            pass
    finally:
        context.detach(token)
    (child,) = kept.get_finished_spans()
    assert child.parent is not None
    assert child.parent.span_id == span.get_span_context().span_id
    assert child.context is not None
    assert child.context.trace_id == int(TRACE_HEX, 16)


def test_the_job_spans_own_attributes_stay_the_workers() -> None:
    sink = Kept()
    sdk, _ = provider()
    kind = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=sdk.get_tracer("conveyor"), sink=sink)
    span = kind.start(parent_of(META))
    span.set_attribute("conveyor.job.name", "forged")
    span.update_name("renamed")
    span.end()
    span.set_attribute("late", 1)  # after its end: nothing
    (encoded,) = sink.spans
    (written_span,) = (
        ExportTraceServiceRequest.FromString(SpanEncoder().request([encoded]))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    attributes = {a.key: a.value.string_value for a in written_span.attributes}
    assert attributes == FIXED
    assert written_span.name == "renamed"
    assert not span.is_recording()


@pytest.mark.parametrize(
    ("meta", "settings"),
    [
        ({"traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-00"}, {}),  # the caller did not sample
        ({}, {"sampler": ParentBased(ALWAYS_OFF)}),  # the provider's sampler says no
    ],
    ids=["unsampled parent", "sampler"],
)
def test_an_unsampled_job_span_is_ids_only(meta: dict[str, str], settings: Any) -> None:
    sink = Kept()
    sdk, _ = provider(**settings)
    kind = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=sdk.get_tracer("conveyor"), sink=sink)
    span = kind.start(parent_of(meta))
    assert not isinstance(span, JobSpan)
    ids = span.get_span_context()
    assert ids.is_valid
    assert not ids.trace_flags.sampled
    if meta:
        assert ids.trace_id == int(TRACE_HEX, 16)
    span.end()
    assert sink.spans == []


def test_with_the_sdk_disabled_the_parents_context_passes_through() -> None:
    sink = Kept()
    kind = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=trace.NoOpTracer(), sink=sink)
    span = kind.start(parent_of(META))
    ids = span.get_span_context()
    assert (ids.trace_id, ids.span_id) == (int(TRACE_HEX, 16), int(PARENT_HEX, 16))
    span.end()
    assert sink.spans == []


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE_HEX}-{PARENT_HEX}-01",
        f"00-{TRACE_HEX.upper()}-{PARENT_HEX}-01",
        f"00-{'0' * 32}-{PARENT_HEX}-01",
        f"00-{TRACE_HEX}-{'0' * 16}-01",
        f"ff-{TRACE_HEX}-{PARENT_HEX}-01",
        f"00-{TRACE_HEX}-{PARENT_HEX}-01-extra",
        f"01-{TRACE_HEX}-{PARENT_HEX}-01-extra",
        f" 00-{TRACE_HEX}-{PARENT_HEX}-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
    ],
)
def test_a_traceparent_is_read_as_the_propagator_reads_it(traceparent: str) -> None:
    carrier = {"traceparent": traceparent, "tracestate": "vendor=one"}
    expected = trace.get_current_span(extract(carrier)).get_span_context()
    parent = parent_of(carrier)
    if not expected.is_valid:
        assert parent is None
        return
    assert parent == expected
    assert parent.trace_state == expected.trace_state


def test_the_batcher_sends_both_kinds_to_a_real_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    sdk_span, encoded = run_both(META, fail=True)
    with otlp_collector() as (collector, endpoint):
        batcher = SpanBatcher(CompactOTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        for _ in range(3):
            batcher.on_end(sdk_span)
            batcher.add(encoded)
        assert batcher.force_flush()
        assert len(collector.spans) == 6
        batcher.add(encoded)
        batcher.shutdown()  # what is queued still goes
        assert len(collector.spans) == 7
        batcher.add(encoded)  # after shutdown: nothing
        assert not batcher.force_flush()
    assert len(collector.spans) == 7
    assert {s.trace_id for s in collector.spans} == {TRACE_HEX}
    assert {s.name for s in collector.spans} == {NAME}
    (event,) = [e for e in collector.spans[-1].events if "exception.message" in e]
    assert event["exception.message"] == "refused ***"


def test_a_full_queue_drops_spans_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "3")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    _, encoded = run_both(META, fail=False)
    with otlp_collector() as (collector, endpoint):
        batcher = SpanBatcher(CompactOTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        for _ in range(5):
            batcher.add(encoded)
        batcher.force_flush()
        batcher.shutdown()
    assert len(collector.spans) == 3
    assert "dropped 2 spans: the export queue was full" in caplog.text


def test_a_value_no_span_may_hold_is_dropped_and_the_span_still_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Kept()
    sdk, _ = provider()
    kind = JobSpanKind(NAME, SpanKind.CONSUMER, FIXED, tracer=sdk.get_tracer("conveyor"), sink=sink)
    span = kind.start(parent_of(META))
    span.set_attribute("order", object())  # type: ignore[arg-type]
    span.set_attribute("mixed", [1, "a"])
    span.set_attribute("kept", [1, 2])
    span.add_event("checked", {"what": {1, 2}, "fine": "yes"})  # type: ignore[dict-item]
    span.end()
    (encoded,) = sink.spans
    (written_span,) = (
        ExportTraceServiceRequest.FromString(SpanEncoder().request([encoded]))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    added = {a.key for a in written_span.attributes} - FIXED.keys()
    assert added == {"kept"}
    (event,) = written_span.events
    assert [a.key for a in event.attributes] == ["fine"]
    assert "not a valid value" in caplog.text


def test_a_full_batch_is_sent_without_waiting_for_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    _, encoded = run_both(META, fail=False)
    with otlp_collector() as (collector, endpoint):
        batcher = SpanBatcher(CompactOTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
        for _ in range(9):
            batcher.add(encoded)
        deadline = time.monotonic() + 10
        while len(collector.spans) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(collector.spans) >= 8  # two full batches, long before the schedule
        batcher.shutdown()
    assert len(collector.spans) == 9


@pytest.mark.parametrize(
    "carrier",
    [
        META,
        {"traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-01"},
        {"traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-00"},  # unsampled
        {"traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-03"},  # sampled, random trace id
        {"traceparent": f"00-{TRACE_HEX}-{PARENT_HEX}-ff"},  # flags no child inherits
        {"traceparent": f"00-{'0' * 32}-{PARENT_HEX}-01"},  # not valid: a root
        {"traceparent": f"00-{TRACE_HEX.upper()}-{PARENT_HEX}-01"},
        {"traceparent": f"01-{TRACE_HEX}-{PARENT_HEX}-01-extra"},  # another version
        {"traceparent": "garbage"},
        {},
    ],
)
def test_a_span_started_from_the_jobs_carrier_is_the_one_from_its_parent(
    carrier: dict[str, str],
) -> None:
    """start_under (the worker's one step) makes the span start(parent_of(...)) makes."""
    made: list[tuple[Any, Any]] = []
    for under in (False, True):
        sdk, _ = provider()  # the same ids each time (FixedIds)
        sink = Kept()
        kind = JobSpanKind(
            NAME, SpanKind.CONSUMER, FIXED, tracer=sdk.get_tracer("conveyor"), sink=sink
        )
        span = (
            kind.start_under(carrier, b"")
            if under
            else kind.start(parent_of(carrier), b"", start_ns=START_NS)
        )
        if isinstance(span, JobSpan):
            span._start_ns = START_NS  # start_under reads the clock
            span.finish(end_ns=END_NS)
        written_spans = [
            s
            for r in ExportTraceServiceRequest.FromString(
                SpanEncoder().request(sink.spans)
            ).resource_spans
            for ss in r.scope_spans
            for s in ss.spans
        ]
        made.append((span.get_span_context(), written_spans))
    (ids, written_spans), (ids_under, written_under) = made
    assert ids_under == ids
    assert ids_under.trace_flags == ids.trace_flags
    assert ids_under.trace_state == ids.trace_state
    assert written_under == written_spans
    if carrier.get("traceparent", "").startswith(f"00-{TRACE_HEX}-{PARENT_HEX}-0"):
        assert ids.trace_id == int(TRACE_HEX, 16)
        if ids.trace_flags.sampled:
            (span,) = written_under
            assert span.parent_span_id.hex() == PARENT_HEX
            assert span.flags == 0x300  # its parent is remote
