"""Spans are exported scrubbed and bounded: attributes, exception events, status.

`scrubbed` is what the OTLP exporter's request must hold (tests/core/test_otlp.py
compares the two)."""

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from conveyor_core.span_redaction import STACKTRACE, scrubbed


def test_an_exported_span_carries_no_address_and_no_huge_text() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("process mail") as span:
        span.set_attribute("conveyor.note", "to ada@example.com " + "n" * 10_000)
        span.set_attribute("conveyor.recipients", ["bob@example.org", "x"])
        span.set_attribute("conveyor.job.try", 2)
        try:
            raise ValueError("refused ada@example.com: " + "z" * 100_000)
        except ValueError as exc:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, "Bearer abcdefghijklmnop rejected"))

    (finished,) = exported.get_finished_spans()
    sent = scrubbed(finished)
    assert sent.attributes is not None
    note = sent.attributes["conveyor.note"]
    assert isinstance(note, str)
    assert note.startswith("to *** nnn")
    assert note.endswith("more characters cut]")
    assert len(note) < 1100
    assert sent.attributes["conveyor.recipients"] == ("***", "x")
    assert sent.attributes["conveyor.job.try"] == 2
    (event,) = sent.events
    assert event.attributes is not None
    message = str(event.attributes["exception.message"])
    assert message.startswith("refused ***: zzz")
    assert len(message) < 1100
    stacktrace = str(event.attributes[STACKTRACE])
    assert "ada@example.com" not in stacktrace
    assert "test_span_redaction.py" in stacktrace  # the frames are kept
    assert len(stacktrace) < 4200
    assert sent.status.description == "Bearer *** rejected"
    assert sent.name == "process mail"
    assert sent.context == span.get_span_context()
