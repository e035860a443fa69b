"""One log format for every Conveyor process: JSON lines on stdout.

Every line carries the service, the current trace and span ids, and whatever
`log_context` bound (request id; job id, name, try and queue in a job).
"""

import functools
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

import orjson
from opentelemetry import trace

from conveyor_core.logstream import TurnFlushingHandler, buffered
from conveyor_core.redaction import FIELD_MAX_CHARS, bounded, clean, clean_traceback

_bound: ContextVar[dict[str, Any]] = ContextVar("conveyor_log_context", default={})  # noqa: B039

# Always present, null when unknown, so every line has one shape.
ALWAYS = ("trace_id", "span_id", "request_id")
# Every text in a line is bounded (redaction.FIELD_MAX_CHARS); a line longer than
# this has a large structure in it (a payload), which is then cut as text too.
MAX_LINE_CHARS = 16 * FIELD_MAX_CHARS


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields to every log line written inside this block (task-local)."""
    token = enter_log_context(fields)
    try:
        yield
    finally:
        _bound.reset(token)


def enter_log_context(fields: dict[str, Any]) -> Token[dict[str, Any]]:
    """`log_context` without its generator, for a caller that runs per job and
    ends the block itself with `exit_log_context(token)`."""
    return _bound.set({**_bound.get(), **fields})


def exit_log_context(token: Token[dict[str, Any]]) -> None:
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


def encode(entry: Any) -> str:
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
        span = trace.get_current_span().get_span_context()
        ids = (
            (format(span.trace_id, "032x"), format(span.span_id, "016x")) if span.is_valid else None
        )
        exception = None
        if record.exc_info:
            exception = clean_traceback(self.formatException(record.exc_info))
        fields = getattr(record, "fields", {})
        message = clean(record.getMessage())
        return self.line(
            record.created, record.levelname, record.name, message, ids, fields, exception
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        ids: tuple[str, str] | None,
        fields: dict[str, Any],
        exception: str | None = None,
    ) -> str:
        """One line: `message` cleaned already, `ids` the trace's and the span's
        in hex, `fields` the line's own."""
        trace_id, span_id = ids or _NO_IDS
        entry: dict[str, Any] = {
            "timestamp": self.timestamp(created),
            "level": level.lower(),
            "service": self.service,
            "logger": logger,
            "message": message,
            "trace_id": trace_id,  # ALWAYS, in its order
            "span_id": span_id,
            "request_id": None,
        }
        _merge_cleaned(entry, _bound.get())
        _merge_cleaned(entry, fields)
        if exception is not None:
            entry["exception"] = exception
        line = encode(entry)
        if len(line) > MAX_LINE_CHARS:  # a large structure: each such field as bounded text
            for key, value in entry.items():
                if isinstance(value, dict | list | tuple):  # rare: the line is too long
                    entry[key] = bounded(encode(value))
            line = encode(entry)
        return line


_NO_IDS = (None, None)
# The handler configure_logging installed, which `log_line` writes to directly.
_direct: "TurnFlushingHandler | None" = None


def log_line(
    logger: logging.Logger,
    level: int,
    message: str,
    fields: dict[str, Any],
    ids: tuple[str, str] | None,
) -> None:
    """A line as `logger.log(level, message, extra={"fields": fields})` writes
    it inside the span whose hex ids are `ids`, for a line written per job: no
    LogRecord, no handler chain, the same line. Where logging is set up in
    another way (more handlers, filters: a test's capture), it is that call."""
    if not logger.isEnabledFor(level):
        return
    handler = _direct
    formatter = handler.formatter if handler is not None else None
    if (
        handler is None
        or not isinstance(formatter, JsonFormatter)
        or not _direct_only(logger, handler, level)
    ):
        logger.log(level, message, extra={"fields": fields})
        return
    line = formatter.line(
        time.time(),
        logging.getLevelName(level),
        logger.name,
        _cleaned_message(message),
        ids,
        fields,
    )
    handler.write_line(line)


# log_line's messages are a few constants ("job end"): each cleaned once.
_cleaned_message = functools.lru_cache(maxsize=256)(clean)


def _direct_only(logger: logging.Logger, handler: logging.Handler, level: int) -> bool:
    """Whether `handler` alone, unfiltered, would take the logger's line at `level`."""
    if level < handler.level or handler.filters:
        return False
    root = logging.root
    node: logging.Logger | None = logger
    while node is not root and node is not None:
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    handlers = root.handlers
    return len(handlers) == 1 and handlers[0] is handler and not root.filters


def _merge_cleaned(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    """`fields` into a line, every string in them (any depth) bounded and
    scrubbed: a field may carry a request's or a job's text (an error, a
    payload's values). Exact type tests, not isinstance: this runs for every line."""
    for key, value in fields.items():
        if key not in _CLEAN_ALREADY:
            kind = type(value)
            if kind is str:
                value = clean(value)
            elif kind is dict or kind is list or kind is tuple:
                value = _cleaned(value)
        entry[key] = value


def _cleaned(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return clean(value)
    if kind is dict:
        return {k: _cleaned(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_cleaned(v) for v in value]
    return value


# Cleaned where they are made, or Conveyor's own names and checked ids: the
# rest may carry outside text (each clean costs a few microseconds a line).
_CLEAN_ALREADY = frozenset(
    {
        *("message", "exception", "timestamp", "level", "service", "logger", *ALWAYS),
        *("job_id", "job_name", "job_try", "queue", "method", "route", "outcome"),
    }
)


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines to stdout, where container runtimes collect them."""
    global _direct
    handler = TurnFlushingHandler(buffered(sys.stdout))
    handler.setFormatter(JsonFormatter(service))
    _direct = handler
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
