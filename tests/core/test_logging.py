import io
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from conveyor_core.logging import JsonFormatter, configure_logging, log_context, log_line
from conveyor_core.logstream import TurnFlushingHandler


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


def test_every_text_in_a_line_is_scrubbed_and_bounded() -> None:
    formatter = JsonFormatter("api")
    rec = record(
        "mail to %s refused: %s",
        error="SMTPRecipientsRefused: ada@example.com",
        args={"to": ["ada@example.com"], "note": "n" * 5000, "count": 3},
    )
    rec.args = ("ada@example.com", "x" * 5000)
    line = formatter.format(rec)
    entry = json.loads(line)
    assert "ada@example.com" not in line
    assert entry["message"].startswith("mail to *** refused: xxx")
    assert entry["message"].endswith("more characters cut]")
    assert entry["error"] == "SMTPRecipientsRefused: ***"
    assert entry["args"]["to"] == ["***"]
    assert entry["args"]["count"] == 3
    assert len(entry["args"]["note"]) < 1100
    assert len(line) < 4 * 1024


def test_an_exception_in_a_line_is_scrubbed_and_bounded() -> None:
    try:
        raise ValueError("password=hunter2 " + "z" * 100_000)
    except ValueError:
        rec = logging.LogRecord(
            "conveyor.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter("worker").format(rec)
    exception = json.loads(line)["exception"]
    assert "hunter2" not in exception
    assert "ValueError: password=***" in exception
    assert len(line) < 8 * 1024


def test_a_large_structure_in_a_line_is_cut_as_text() -> None:
    line = JsonFormatter("worker").format(record("job start", args={"ids": list(range(10_000))}))
    entry = json.loads(line)
    assert entry["args"].startswith('{"ids":[0,1,2')  # compact JSON (orjson), as every line
    assert entry["args"].endswith("more characters cut]")
    assert len(line) < 4 * 1024


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


def test_a_line_written_directly_is_the_line_logging_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logger = logging.getLogger("conveyor.jobs")
    fields = {"outcome": "dead", "args": {"to": "ada@example.com"}, "error": "x" * 5000}
    try:
        configure_logging("worker")
        with (
            TracerProvider().get_tracer("test").start_as_current_span("work") as span,
            log_context(job_id="j-1", request_id="r-1"),
        ):
            context = span.get_span_context()
            ids = (trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id))
            logger.log(logging.WARNING, "job end", extra={"fields": dict(fields)})
            records: list[logging.LogRecord] = []
            make_record = logging.getLogRecordFactory()

            def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
                records.append(made := make_record(*args, **kwargs))
                return made

            logging.setLogRecordFactory(counted)
            try:
                log_line(logger, logging.WARNING, "job end", dict(fields), ids)
            finally:
                logging.setLogRecordFactory(make_record)
            assert records == []  # written without a LogRecord
            log_line(logger, logging.DEBUG, "job start", {}, ids)  # below the level: nothing
        (handler,) = root.handlers
        assert isinstance(handler, TurnFlushingHandler)
        handler.flush_now()
    finally:
        root.handlers[:], root.level = saved
    by_logging, direct = (json.loads(line) for line in out.getvalue().splitlines())
    assert direct.pop("timestamp").endswith("+00:00")
    del by_logging["timestamp"]
    assert direct == by_logging
    assert (direct["trace_id"], direct["span_id"]) == ids
    assert (direct["level"], direct["job_id"], direct["request_id"]) == ("warning", "j-1", "r-1")
    assert direct["args"] == {"to": "***"}
    assert len(direct["error"]) < 5000


def test_with_other_handlers_a_direct_line_goes_through_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="conveyor.jobs"):
        log_line(logging.getLogger("conveyor.jobs"), logging.INFO, "job end", {"n": 1}, None)
    (captured,) = caplog.records
    assert captured.getMessage() == "job end"
    assert captured.fields == {"n": 1}  # type: ignore[attr-defined]
