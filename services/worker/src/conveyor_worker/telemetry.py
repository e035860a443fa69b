"""Everything the worker observes about one job try, in one place: its span, its
start and end log lines, its metrics. Job functions contain none of it.

The try's CONSUMER span is a child of the PRODUCER span that enqueued it, also
for deferred jobs and retries, so a request and all the work it caused are one
trace. A link (a new trace pointing back) is the better fit where a job has no
single cause, such as a batch consumer; Conveyor's only such jobs are cron
runs, which have no producer and start traces of their own.
"""

import functools
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import Gauge

from conveyor_core.catalog import JobType
from conveyor_core.job_span import JobSpan, JobSpanKind
from conveyor_core.jobs import TryOutcome, now_ms
from conveyor_core.logging import enter_log_context, exit_log_context, log_line
from conveyor_core.metrics import (
    JOB_DURATION,
    JOB_QUEUE_WAIT,
    JOBS_FINISHED,
    JOBS_IN_PROGRESS,
    JOBS_STARTED,
    Observer,
    increment,
)
from conveyor_core.otlp import StringAttribute, span_attribute
from conveyor_core.redaction import Redactor, clean_job_id
from conveyor_core.tracing import MESSAGING_MESSAGE_ID, messaging_attributes

logger = logging.getLogger("conveyor.jobs")


class Outcome:
    """How a try ended (conveyor_core.jobs.TryOutcome): the `outcome` label of
    conveyor_jobs_finished_total, the history's and the logs' name for it."""

    SUCCESS = TryOutcome.COMPLETE
    RETRY = TryOutcome.RETRYING  # failed; another try is due later
    DEAD = TryOutcome.DEAD  # a permanent error or no tries left: to the dead letters
    CANCELLED = TryOutcome.CANCELLED  # a client's cancel stopped it
    INTERRUPTED = TryOutcome.INTERRUPTED  # cut short by a shutdown; runs again, the try not counted
    SNOOZED = TryOutcome.SNOOZED  # asked to run later (Snooze, RateLimited); the try not counted

    ALL = tuple(TryOutcome)


def declare_job_series(job_types: Iterable[JobType]) -> None:
    """Export each job type's counters at 0 from the start. A series first seen at 1
    has no increase for rate() to find, so the first failure after a restart would
    never reach the failure-ratio and dead-letter alerts."""
    for job_type in job_types:
        labels = (job_type.name, job_type.queue)
        JOBS_STARTED.labels(*labels)
        JOBS_IN_PROGRESS.labels(*labels)
        for outcome in Outcome.ALL:
            JOBS_FINISHED.labels(*labels, outcome)


class Running:
    """A count of running tries, written by the event loop's thread only."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    @staticmethod
    def exported_as(gauge: Gauge) -> "Running":
        running = Running()
        gauge.set_function(lambda: running.count)
        return running


@dataclass(frozen=True, slots=True)
class JobSeries:
    """One job type's metric series and span constants, made once: `labels()`
    costs a lock and a dict lookup per call, which a no-op job feels. Each
    series is written through its value (metrics.increment, metrics.Observer),
    without the checks of what the worker never passes."""

    queue_wait: Observer
    started: Callable[[float], None]
    # Tries of the type running now, which conveyor_jobs_in_progress reads
    # when it is scraped: a plain count, not a locked gauge written twice a try.
    in_progress: "Running"
    finished: dict[str, Callable[[float], None]]
    duration: dict[str, Observer]
    # The span's name, kind and the attributes every try of the type has.
    span: JobSpanKind
    # The outcome attribute, written once per outcome.
    outcome_attributes: dict[str, bytes]

    @staticmethod
    @functools.cache
    def of(job: str, queue: str) -> "JobSeries":
        attributes = messaging_attributes("process", queue, "", job)
        del attributes[MESSAGING_MESSAGE_ID]
        return JobSeries(
            queue_wait=Observer(JOB_QUEUE_WAIT.labels(job, queue)),
            started=increment(JOBS_STARTED.labels(job, queue)),
            in_progress=Running.exported_as(JOBS_IN_PROGRESS.labels(job, queue)),
            finished={o: increment(JOBS_FINISHED.labels(job, queue, o)) for o in Outcome.ALL},
            duration={o: Observer(JOB_DURATION.labels(job, queue, o)) for o in Outcome.ALL},
            span=JobSpanKind(f"process {queue}", SpanKind.CONSUMER, attributes),
            outcome_attributes={o: span_attribute(OUTCOME, str(o)) for o in Outcome.ALL},
        )


OUTCOME = "conveyor.job.outcome"
# The try's attributes whose values repeat, written once each.
_try_attribute = functools.lru_cache(maxsize=64)(
    functools.partial(span_attribute, "conveyor.job.try")
)
_QUEUE_WAIT = span_attribute("conveyor.queue_wait_s", 0.0)[:-8]  # all but the double
_message_id_attribute = StringAttribute(MESSAGING_MESSAGE_ID, clean_job_id)
_request_id_attribute = StringAttribute("conveyor.request_id")
_double = struct.Struct("<d").pack


class JobObservation:
    """A context manager around one try: set `outcome` (and `error`) before it exits.

    What it costs is a share of every job's, so it does each thing once: the
    span (job_span.py) is written as bytes from pieces its job type shares,
    the arguments are redacted once, the trace's exemplar is made once, and
    one line at INFO tells the try's end (its start is at DEBUG), written
    without the logging module's record and handler chain (log_line).
    """

    __slots__ = (
        "_args",
        "_context_token",
        "_exemplar",
        "_ids",
        "_log_token",
        "_series",
        "_span",
        "_started_s",
        "_wait_s",
        "args",
        "due_ms",
        "error",
        "job_id",
        "job_try",
        "job_type",
        "meta",
        "outcome",
        "redact",
    )

    def __init__(
        self,
        job_type: JobType,
        job_id: str,
        job_try: int,
        due_ms: int,
        meta: dict[str, str],
        args: dict[str, Any],
        redact: Redactor,
    ) -> None:
        self.job_type = job_type
        self.job_id = job_id
        self.job_try = job_try
        self.due_ms = due_ms
        self.meta = meta
        self.args = args
        self.redact = redact
        self.outcome: str = Outcome.DEAD  # until told otherwise: an unexpected error
        self.error: BaseException | None = None
        self._series = JobSeries.of(job_type.name, job_type.queue)

    def __enter__(self) -> "JobObservation":
        series = self._series
        # From when this try was due: a deliberate deferral or backoff is not waiting.
        self._wait_s = wait_s = max(0.0, (now_ms() - self.due_ms) / 1000)
        request_id = self.meta.get("request_id")
        attributes = (
            _message_id_attribute(self.job_id)
            + _try_attribute(self.job_try)
            + _QUEUE_WAIT
            + _double(wait_s)
        )
        if request_id:
            attributes += _request_id_attribute(request_id)
        self._span = span = series.span.start_under(self.meta, attributes)
        self._context_token = context.attach(trace.set_span_in_context(span))
        # A SpanContext is a tuple: read at once, not through a property each.
        trace_int, span_int, _, flags, _, valid = span.get_span_context()
        if valid:
            trace_id = f"{trace_int:032x}"
            self._ids: tuple[str, str] | None = (trace_id, f"{span_int:016x}")
            self._exemplar = {"trace_id": trace_id} if flags & TraceFlags.SAMPLED else None
        else:
            self._ids = self._exemplar = None
        self._log_token = enter_log_context(
            {
                "job_id": self.job_id,
                "job_name": self.job_type.name,
                "job_try": self.job_try,
                "queue": self.job_type.queue,
                "request_id": request_id,
            }
        )
        self._started_s = time.monotonic()
        series.queue_wait.observe(wait_s, self._exemplar)
        series.started(1)
        series.in_progress.count += 1
        self._args = self.redact(self.args)
        if logger.isEnabledFor(logging.DEBUG):
            fields = {"args": self._args, "queue_wait_s": round(wait_s, 4)}
            logger.debug("job start", extra={"fields": fields})
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = time.monotonic() - self._started_s
        outcome = self.outcome
        error = self.error or (exc if outcome != Outcome.SUCCESS else None)
        fields: dict[str, Any] = {
            "outcome": outcome,
            "elapsed_s": round(elapsed_s, 4),
            "queue_wait_s": round(self._wait_s, 4),
            "args": self._args,
        }
        span = self._span
        if error is not None and outcome not in (Outcome.CANCELLED, Outcome.INTERRUPTED):
            fields["error"] = f"{type(error).__name__}: {error}"
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        series = self._series
        series.finished[outcome](1)
        series.duration[outcome].observe(elapsed_s, self._exemplar)
        series.in_progress.count -= 1
        calm = outcome in (Outcome.SUCCESS, Outcome.CANCELLED, Outcome.SNOOZED)
        log_line(logger, logging.INFO if calm else logging.WARNING, "job end", fields, self._ids)
        exit_log_context(self._log_token)
        context.detach(self._context_token)
        if isinstance(span, JobSpan):
            span.finish(series.outcome_attributes[outcome])


class Unobserved(JobObservation):
    """Instrumentation off (`CONVEYOR_WORKER_INSTRUMENT_JOBS=false`): no span, logs or metrics."""

    __slots__ = ()

    def __enter__(self) -> "JobObservation":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
