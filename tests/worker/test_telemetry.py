"""What the worker observes of one try (telemetry.JobObservation): its span is
the current span, under the request's trace, its metrics count the try, and
its one end line says how it went."""

import logging

import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY

from conveyor_core.catalog import load_catalog
from conveyor_core.jobs import now_ms
from conveyor_core.redaction import Redactor
from conveyor_worker.telemetry import JobObservation, Outcome
from tests.support import jobs

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
META = {"traceparent": f"00-{TRACE_HEX}-00f067aa0ba902b7-01", "request_id": "req-7"}


def sample(name: str, job: str, queue: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"job": job, "queue": queue, **labels}) or 0.0


def test_a_try_is_counted_and_runs_under_the_requests_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_type = load_catalog(jobs.MODULES.split(","))["effect"]
    name, queue = job_type.name, job_type.queue
    before = {
        "started": sample("conveyor_jobs_started_total", name, queue),
        "running": sample("conveyor_jobs_in_progress", name, queue),
        "done": sample("conveyor_jobs_finished_total", name, queue, outcome=Outcome.SUCCESS),
    }
    observed = JobObservation(
        job_type, "{arq:queue}ab12", 1, now_ms(), META, {"work_s": 0.0}, Redactor()
    )
    with caplog.at_level(logging.INFO, logger="conveyor.jobs"), observed:
        current = trace.get_current_span().get_span_context()
        assert f"{current.trace_id:032x}" == TRACE_HEX
        assert current.trace_flags.sampled
        assert sample("conveyor_jobs_in_progress", name, queue) == before["running"] + 1
        with trace.get_tracer("handler").start_as_current_span("charge") as child:
            assert child.parent is not None  # type: ignore[attr-defined]
            assert child.parent.span_id == current.span_id  # type: ignore[attr-defined]
        observed.outcome = Outcome.SUCCESS
    assert not trace.get_current_span().get_span_context().is_valid  # detached
    assert sample("conveyor_jobs_started_total", name, queue) == before["started"] + 1
    assert sample("conveyor_jobs_in_progress", name, queue) == before["running"]
    finished = sample("conveyor_jobs_finished_total", name, queue, outcome=Outcome.SUCCESS)
    assert finished == before["done"] + 1
    (line,) = [r for r in caplog.records if r.getMessage() == "job end"]
    assert line.levelno == logging.INFO
    assert line.fields["outcome"] == Outcome.SUCCESS  # type: ignore[attr-defined]
    assert line.fields["args"] == {"work_s": 0.0}  # type: ignore[attr-defined]
