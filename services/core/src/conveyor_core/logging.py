"""One log format for every Conveyor process: JSON lines on stdout.

Every line carries the service, the current trace and span ids, and whatever
`log_context` bound (request id; job id, name, try and queue in a job).
"""

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson
from opentelemetry import trace

from conveyor_core.logstream import TurnFlushingHandler

_bound: ContextVar[dict[str, Any]] = ContextVar("conveyor_log_context", default={})  # noqa: B039

# Always present, null when unknown, so every line has one shape.
ALWAYS = ("trace_id", "span_id", "request_id")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields to every log line written inside this block (task-local)."""
    token = _bound.set({**_bound.get(), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


def bind(**fields: Any) -> None:
    """Bind fields for the rest of the current `log_context` block, which resets them.

    For code that learns something mid-request (a dependency that knows the
    caller): the request's own log line, written inside that block, shows it.
    """
    _bound.set({**_bound.get(), **fields})


def bound(name: str) -> Any:
    return _bound.get().get(name)


# For what orjson refuses (an int beyond 64 bits, a key that is not a string).
_encoder = json.JSONEncoder(default=str)


def encode(entry: dict[str, Any]) -> str:
    """One compact JSON line; orjson writes one several times faster than json."""
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return _encoder.encode(entry)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # The timestamp's second, formatted once per second (the worker writes
        # a line per job: formatting a datetime for each costs a no-op job).
        self._second = -1
        self._second_text = ""

    def timestamp(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond, as datetime.isoformat writes it."""
        second = int(created)
        micros = round((created - second) * 1e6)  # rounded as datetime rounds it
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            **dict.fromkeys(ALWAYS),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        entry.update(_bound.get())
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return encode(entry)


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines to stdout, where container runtimes collect them."""
    handler = TurnFlushingHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Fields no Conveyor line shows, which the logging module would gather for
    # every record (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor where each call was made from (a walk up the stack per line).
    logging._srcfile = None
    # Conveyor logs each request and each job itself; these would repeat them.
    for noisy in ("uvicorn.access", "arq.worker", "arq.jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
