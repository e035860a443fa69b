import json
import logging
from datetime import UTC, datetime

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from conveyor_core.logging import JsonFormatter, log_context


def record(message: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("conveyor.test", logging.INFO, __file__, 1, message, (), None)
    if fields:
        rec.fields = fields
    return rec


def test_every_line_has_one_shape() -> None:
    line = json.loads(JsonFormatter("api").format(record("hello %s")))
    assert line["service"] == "api"
    assert line["level"] == "info"
    assert line["message"] == "hello %s"
    assert line["logger"] == "conveyor.test"
    assert line["timestamp"].endswith("+00:00")
    assert (line["trace_id"], line["span_id"], line["request_id"]) == (None, None, None)


def test_bound_fields_and_extra_fields_join_the_line() -> None:
    formatter = JsonFormatter("worker")
    with log_context(request_id="r-1", job_id="j-1"):
        line = json.loads(formatter.format(record("job end", outcome="complete")))
    assert (line["request_id"], line["job_id"], line["outcome"]) == ("r-1", "j-1", "complete")
    after = json.loads(formatter.format(record("later")))
    assert after["request_id"] is None
    assert "job_id" not in after


def test_lines_inside_a_span_carry_its_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonFormatter("worker").format(record("inside")))
    context = span.get_span_context()
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)


def test_timestamps_are_utc_iso_to_the_millisecond_as_datetime_writes_them() -> None:
    formatter = JsonFormatter("test")
    # Within one second, across seconds, and where rounding carries into the next one.
    for created in (
        1732460000.0,
        1732460000.1234,
        1732460000.9994,
        1732460000.9999996,
        173805951.581,
    ):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert formatter.timestamp(created) == expected


def test_any_value_makes_a_line() -> None:
    """What orjson refuses (an int beyond 64 bits, a key that is not a string)
    and what JSON cannot hold (a set, an object) still make one line."""
    huge = 2**70
    line = JsonFormatter("worker").format(
        record("odd", huge=huge, by_number={1: "one"}, tags={"a"}, when=datetime(2026, 1, 2))
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["huge"], entry["by_number"], entry["tags"]) == (huge, {"1": "one"}, "{'a'}")
    assert entry["when"].startswith("2026-01-02")
