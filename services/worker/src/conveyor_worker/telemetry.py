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
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from conveyor_core.catalog import JobType
from conveyor_core.jobs import now_ms
from conveyor_core.logging import log_context
from conveyor_core.metrics import (
    JOB_DURATION,
    JOB_QUEUE_WAIT,
    JOBS_FINISHED,
    JOBS_IN_PROGRESS,
    JOBS_STARTED,
)
from conveyor_core.redaction import Redactor
from conveyor_core.tracing import exemplar, extract, messaging_attributes, tracer

logger = logging.getLogger("conveyor.jobs")


class Outcome:
    """How a try ended; the `outcome` label of conveyor_jobs_finished_total."""

    SUCCESS = "success"  # the job is complete
    RETRY = "retry"  # failed; the job is retrying: another try is due later
    DEAD = "dead"  # a permanent error or no tries left: to the dead letters
    CANCELLED = "cancelled"  # a client's cancel stopped it
    INTERRUPTED = "interrupted"  # cut short by a shutdown; runs again, the try not counted
    SNOOZED = "snoozed"  # asked to run later (Snooze, RateLimited); the try not counted

    ALL = (SUCCESS, RETRY, DEAD, CANCELLED, INTERRUPTED, SNOOZED)


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


@dataclass(frozen=True, slots=True)
class JobSeries:
    """One job type's metric series, looked up once: `labels()` costs a lock and a
    dict lookup per call, which a no-op job feels."""

    queue_wait: Histogram
    started: Counter
    in_progress: Gauge
    finished: dict[str, Counter]
    duration: dict[str, Histogram]

    @staticmethod
    @functools.cache
    def of(job: str, queue: str) -> "JobSeries":
        return JobSeries(
            queue_wait=JOB_QUEUE_WAIT.labels(job, queue),
            started=JOBS_STARTED.labels(job, queue),
            in_progress=JOBS_IN_PROGRESS.labels(job, queue),
            finished={o: JOBS_FINISHED.labels(job, queue, o) for o in Outcome.ALL},
            duration={o: JOB_DURATION.labels(job, queue, o) for o in Outcome.ALL},
        )


class JobObservation:
    """A context manager around one try: set `outcome` (and `error`) before it exits."""

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
        self.outcome = Outcome.DEAD  # until told otherwise: an unexpected error
        self.error: BaseException | None = None
        self._series = JobSeries.of(job_type.name, job_type.queue)

    def __enter__(self) -> "JobObservation":
        queue = self.job_type.queue
        self._span = tracer.start_span(
            f"process {queue}",
            context=extract(self.meta),
            kind=SpanKind.CONSUMER,
            attributes=self._attributes(queue),
        )
        self._context_token = context.attach(trace.set_span_in_context(self._span))
        self._log_context = log_context(
            job_id=self.job_id,
            job_name=self.job_type.name,
            job_try=self.job_try,
            queue=queue,
            request_id=self.meta.get("request_id"),
        )
        self._log_context.__enter__()
        self._started_s = time.monotonic()
        # From when this try was due: a deliberate deferral or backoff is not waiting.
        wait_s = max(0.0, (now_ms() - self.due_ms) / 1000)
        self._span.set_attribute("conveyor.queue_wait_s", wait_s)
        self._series.queue_wait.observe(wait_s, exemplar())
        self._series.started.inc()
        self._series.in_progress.inc()
        logger.info(
            "job start",
            extra={"fields": {"args": self.redact(self.args), "queue_wait_s": round(wait_s, 4)}},
        )
        return self

    def _attributes(self, queue: str) -> dict[str, Any]:
        """The span's attributes; a request id only when the job has one (each
        attribute is encoded per span, in the export thread)."""
        attributes: dict[str, Any] = {
            **messaging_attributes("process", queue, self.job_id, self.job_type.name),
            "messaging.message.delivery_count": self.job_try - 1,
            "conveyor.job.try": self.job_try,
        }
        if request_id := self.meta.get("request_id"):
            attributes["conveyor.request_id"] = request_id
        return attributes

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_s = time.monotonic() - self._started_s
        error = self.error or (exc if self.outcome != Outcome.SUCCESS else None)
        fields: dict[str, Any] = {
            "outcome": self.outcome,
            "elapsed_s": round(elapsed_s, 4),
            "args": self.redact(self.args),
        }
        self._span.set_attribute("conveyor.job.outcome", self.outcome)
        if error is not None and self.outcome not in (Outcome.CANCELLED, Outcome.INTERRUPTED):
            fields["error"] = f"{type(error).__name__}: {error}"
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        trace_exemplar = exemplar()
        self._series.finished[self.outcome].inc(exemplar=trace_exemplar)
        self._series.duration[self.outcome].observe(elapsed_s, trace_exemplar)
        self._series.in_progress.dec()
        calm = self.outcome in (Outcome.SUCCESS, Outcome.CANCELLED, Outcome.SNOOZED)
        logger.log(logging.INFO if calm else logging.WARNING, "job end", extra={"fields": fields})
        self._log_context.__exit__(None, None, None)
        context.detach(self._context_token)
        self._span.end()


class Unobserved(JobObservation):
    """Instrumentation off (`CONVEYOR_WORKER_INSTRUMENT_JOBS=false`): no span, logs or metrics."""

    def __enter__(self) -> "JobObservation":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
