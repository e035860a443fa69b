"""Spans written as OTLP bytes by hand: the request OpenTelemetry's own encoder
makes of the same spans, scrubbed, and accepted by a real receiver."""

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from conveyor_core.otlp import (
    CompactOTLPSpanExporter,
    SpanEncoder,
    StringAttribute,
    any_value,
    span_attribute,
)
from conveyor_core.span_redaction import scrubbed
from tests.support.otlp import otlp_collector

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def made_spans(service: str, scope: str = "test", version: str | None = None) -> list[ReadableSpan]:
    """Spans of every shape a process makes: remote and local parents, every
    attribute type, events, links, statuses, a trace state, dropped attributes."""
    kept = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "deployment": "test", "n": 3}),
        span_limits=SpanLimits(max_span_attributes=15),
    )
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer(scope, version, schema_url="https://example.com/schema")
    remote = TraceContextTextMapPropagator().extract(
        {"traceparent": TRACEPARENT, "tracestate": "vendor=one,other=two"}
    )
    for n in range(3):  # the same pieces again: written once, reused
        with tracer.start_as_current_span(
            "process bench:conveyor",
            context=remote,
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "arq", "conveyor.job.try": n, "wait_s": 0.25 * n},
        ) as consumer:
            consumer.set_attribute("conveyor.job.outcome", "complete")
            consumer.set_attribute("flag", n == 1)
            consumer.set_attribute("count", 1)  # an int equal to True, kept apart from it
            consumer.set_attribute("negative", -5 - n)
            consumer.set_attribute("big", 2**40 + n)
            consumer.set_attribute("note", "mail ada@example.com " + "n" * 3000)
            consumer.set_attribute("names", ["bob@example.org", "x"])
            consumer.set_attribute("numbers", [1, 2, 3])
            consumer.set_attribute("ratios", [0.5, 1.5])
            consumer.set_attribute("switches", [True, False])
            consumer.set_attribute("empty", "")
            consumer.set_attribute("over the limit", "dropped")
            consumer.set_attribute("also over", "dropped")
            with tracer.start_as_current_span(
                "child", links=[Link(consumer.get_span_context(), {"why": "because"})]
            ) as child:
                child.add_event("mark", {"at": n, "text": "token=abcdef123456"})
                try:
                    raise ValueError(f"refused ada@example.com, try {n}")
                except ValueError as exc:
                    child.record_exception(exc)
                child.set_status(Status(StatusCode.ERROR, "Bearer abcdefghijklmnop rejected"))
        with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
            root.set_status(Status(StatusCode.OK))
    return list(kept.get_finished_spans())


def reference(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    """OpenTelemetry's request of the spans, scrubbed (span_redaction.scrubbed),
    with each span's count of dropped attributes, which that copy loses."""
    expected = encode_spans([scrubbed(span) for span in spans])
    dropped = {span.context.span_id: span.dropped_attributes for span in spans if span.context}
    for resource_spans in expected.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.dropped_attributes_count = dropped[int.from_bytes(span.span_id, "big")]
    return expected


@pytest.fixture
def spans() -> list[ReadableSpan]:
    # Two resources, two scopes (one with no version): grouped as OpenTelemetry groups them.
    return [*made_spans("worker"), *made_spans("api", "other"), *made_spans("worker", "v", "1.0")]


def test_the_request_is_the_one_opentelemetry_makes_of_the_scrubbed_spans(
    spans: list[ReadableSpan],
) -> None:
    encoder = SpanEncoder()
    expected = reference(spans)
    for _ in range(2):  # the second time from the pieces written the first
        ours = ExportTraceServiceRequest.FromString(encoder.request(spans))
        assert ours == expected
    assert len(ours.resource_spans) == 2
    (consumer, *_) = (s for s in ours.resource_spans[0].scope_spans[0].spans if s.kind == 5)
    attributes = {a.key: a.value for a in consumer.attributes}
    assert attributes["note"].string_value.startswith("mail *** nnn")
    assert len(attributes["note"].string_value) < 1100
    assert [v.string_value for v in attributes["names"].array_value.values] == ["***", "x"]
    assert attributes["flag"].bool_value is False
    assert attributes["count"].WhichOneof("value") == "int_value"
    assert attributes["count"].int_value == 1
    assert consumer.dropped_attributes_count == 1  # the oldest, messaging.system


def test_one_span_at_a_time_too(spans: list[ReadableSpan]) -> None:
    encoder = SpanEncoder()
    for span in spans:
        ours = ExportTraceServiceRequest.FromString(encoder.request([span]))
        assert ours == reference([span])


@pytest.mark.parametrize(
    "value", [None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 1.5, -0.0, "", "é", b"\x00\x01"]
)
def test_each_kind_of_value_is_written_as_protobuf_writes_it(value: object) -> None:
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_value

    assert any_value(value) == _encode_value(value).SerializeToString()


def test_the_exporter_sends_them_to_a_real_receiver(spans: list[ReadableSpan]) -> None:
    with otlp_collector() as (collector, endpoint):
        exporter = CompactOTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()  # type: ignore[no-untyped-call]
        assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown, nothing
    assert len(collector.spans) == len(spans)
    consumers = collector.find(name="process bench:conveyor", service="worker")
    assert {s.trace_id for s in consumers} == {TRACEPARENT.split("-")[1]}
    assert all(s.parent_span_id == TRACEPARENT.split("-")[2] for s in consumers)
    (event,) = collector.find(name="child", service="api")[0].events[1:]
    assert "ada@example.com" not in str(event)
    assert "***" in event["exception.message"]


@pytest.mark.parametrize("value", ["", "req-7", "é" * 100, "mail ada@example.com", "n" * 5000])
def test_a_string_attribute_with_its_key_written_once_is_the_attribute(value: str) -> None:
    key = "messaging.message.id"
    assert StringAttribute(key)(value) == span_attribute(key, value)
