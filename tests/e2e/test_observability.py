"""One trace from request to job, JSON logs that carry it, metrics that count it."""

import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor_api.auth import KEY_NAME_ATTRIBUTE
from tests.e2e.conftest import Stack
from tests.support.auth import TEST_KEY, TEST_KEY_NAME
from tests.support.otlp import Collector, Span

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


def wait_for_spans(collector: Collector, timeout_s: float = 20, **match: Any) -> list[Span]:
    deadline = time.monotonic() + timeout_s
    while not (spans := collector.find(**match)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spans, f"no span with {match}; got {[(s.name, s.kind) for s in collector.spans]}"
    return spans


def only(spans: list[Span]) -> Span:
    assert len(spans) == 1, spans
    return spans[0]


def test_one_trace_from_the_request_through_a_job_and_the_job_it_enqueues(
    traced: tuple[Stack, Collector],
) -> None:
    stack, collector = traced
    response = stack.http.post(
        "/v1/jobs/parent",
        json={},
        headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01", "X-Request-ID": "req-7"},
    )
    assert response.status_code == 201
    assert response.headers["x-request-id"] == "req-7"
    parent_job = response.json()
    assert parent_job["trace_id"] == TRACE_ID
    child_id = stack.wait_for_state(parent_job["id"], "complete")["result"]
    stack.wait_for_state(child_id, "complete")

    consumer_child = only(wait_for_child_consumer(collector, child_id))
    # The api exports its spans in batches of its own: wait for its server span too.
    wait_for_server_span(collector)
    spans = collector.find(trace_id=TRACE_ID)
    assert {s.trace_id for s in spans} == {TRACE_ID}
    by_id = {s.span_id: s for s in spans}

    server = only([s for s in spans if s.kind == "SPAN_KIND_SERVER"])
    assert server.service == "conveyor-api"
    assert server.parent_span_id == CLIENT_SPAN_ID
    assert server.attributes["conveyor.request_id"] == "req-7"

    producer = only(
        [
            s
            for s in spans
            if s.attributes.get("messaging.message.id") == parent_job["id"]
            and s.kind == "SPAN_KIND_PRODUCER"
        ]
    )
    assert producer.name == "send arq:queue"
    assert producer.attributes["messaging.system"] == "arq"
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.destination.name"] == "arq:queue"
    assert descends_from(producer, server, by_id)

    consumer = only(
        [
            s
            for s in spans
            if s.attributes.get("messaging.message.id") == parent_job["id"]
            and s.kind == "SPAN_KIND_CONSUMER"
        ]
    )
    assert consumer.service == "conveyor-worker"
    assert consumer.name == "process arq:queue"
    assert consumer.parent_span_id == producer.span_id
    assert consumer.attributes["conveyor.job.name"] == "parent"
    assert consumer.attributes["conveyor.job.outcome"] == "complete"
    assert consumer.attributes["conveyor.request_id"] == "req-7"
    assert consumer.attributes["conveyor.queue_wait_s"] >= 0

    child_producer = by_id[consumer_child.parent_span_id]
    assert child_producer.kind == "SPAN_KIND_PRODUCER"
    assert child_producer.service == "conveyor-worker"
    assert descends_from(child_producer, consumer, by_id)

    # Both processes' log lines for the request and the jobs carry the trace id.
    api_lines = [e for e in stack.log_lines(stack.api) if e.get("request_id") == "req-7"]
    assert api_lines
    assert {e["trace_id"] for e in api_lines} == {TRACE_ID}
    request_line = only_line(api_lines, message="request")
    assert request_line["route"] == "/v1/jobs/parent"
    assert request_line["status"] == 201
    job_lines = [
        e
        for e in stack.log_lines(stack.workers[0])
        if e.get("job_id") in (parent_job["id"], child_id)
    ]
    # One line per try at INFO: its end, which tells its queue wait too.
    tries = [(e["job_id"], e["message"]) for e in job_lines if e["message"].startswith("job ")]
    assert sorted(tries) == sorted([(parent_job["id"], "job end"), (child_id, "job end")])
    assert {e["trace_id"] for e in job_lines} == {TRACE_ID}
    assert {e["request_id"] for e in job_lines} == {"req-7"}
    end = only_line(job_lines, message="job end", job_id=child_id)
    assert end["outcome"] == "complete"
    assert end["job_name"] == "effect"
    assert end["args"] == {"work_s": 0.0}
    assert end["elapsed_s"] >= 0
    assert end["queue_wait_s"] >= 0
    for entry in api_lines + job_lines:
        assert {"timestamp", "level", "service", "message", "span_id"} <= entry.keys()


def wait_for_child_consumer(collector: Collector, child_id: str) -> list[Span]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [
            s
            for s in collector.find(kind="SPAN_KIND_CONSUMER")
            if s.attributes.get("messaging.message.id") == child_id
        ]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("the child job's consumer span never arrived")


def wait_for_server_span(collector: Collector) -> None:
    deadline = time.monotonic() + 20
    while not collector.find(trace_id=TRACE_ID, kind="SPAN_KIND_SERVER"):
        assert time.monotonic() < deadline, "the api's server span never arrived"
        time.sleep(0.05)


def descends_from(span: Span, ancestor: Span, by_id: dict[str, Span]) -> bool:
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        if span.span_id == ancestor.span_id:
            return True
    return False


def only_line(lines: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [e for e in lines if all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


def test_secrets_in_a_payload_never_reach_logs_or_spans(
    traced: tuple[Stack, Collector],
) -> None:
    stack, collector = traced
    secrets = {"email": "ada@example.com", "password": "hunter2-correct-horse"}
    job = stack.submit("welcome", {**secrets, "name": "Ada"})
    assert stack.wait_for_state(job["id"], "complete")["result"] == "welcome, Ada"
    wait_for_spans(collector, kind="SPAN_KIND_CONSUMER")

    masked = {"email": "***", "password": "***", "name": "Ada"}
    # The job api masks them: on submit, read, listing and the event stream.
    assert job["payload"] == masked
    assert stack.job(job["id"])["payload"] == masked
    listed = stack.http.get("/v1/jobs", params={"job_type": "welcome"}).json()["items"]
    assert [j["payload"] for j in listed] == [masked]
    assert [data["payload"] for _, data in stack.events(job["id"])] == [masked]

    logs = stack.api.output() + "".join(w.output() for w in stack.workers)
    spans = repr([(s.attributes, s.events) for s in collector.spans])
    for value in [*secrets.values(), TEST_KEY]:
        assert value not in logs
        assert value not in spans
    end = only_line(stack.log_lines(stack.workers[0]), message="job end", job_id=job["id"])
    assert end["args"] == masked
    # The caller is named by its key's name, in the request's log line and span.
    submitted = only_line(stack.log_lines(stack.api), route="/v1/jobs/welcome")
    assert submitted["api_key"] == TEST_KEY_NAME
    server = only(wait_for_spans(collector, name="POST /v1/jobs/welcome", kind="SPAN_KIND_SERVER"))
    assert server.attributes[KEY_NAME_ATTRIBUTE] == TEST_KEY_NAME


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_what_happened_with_trace_exemplars(
    traced: tuple[Stack, Collector],
) -> None:
    stack, _ = traced
    ids = [stack.submit("effect", {"work_s": 0})["id"] for _ in range(3)]
    ids.append(stack.submit("flaky", {"fail_times": 1})["id"])
    doomed = stack.submit("doomed", {})["id"]
    permanent = stack.submit("permanent", {})["id"]
    for job_id in ids:
        stack.wait_for_state(job_id, "complete")
    stack.wait_for_state(doomed, "dead")
    stack.wait_for_state(permanent, "dead")

    worker = metric_samples(httpx.get(f"{stack.workers[0].base_url}/metrics").text)
    q = {"queue": "arq:queue"}
    assert value(worker, "conveyor_jobs_started_total", job="effect", **q) == 3
    assert value(worker, "conveyor_jobs_started_total", job="flaky", **q) == 2
    assert value(worker, "conveyor_jobs_started_total", job="doomed", **q) == 2
    finished = "conveyor_jobs_finished_total"
    assert value(worker, finished, job="effect", outcome="complete", **q) == 3
    assert value(worker, finished, job="flaky", outcome="retrying", **q) == 1
    assert value(worker, finished, job="flaky", outcome="complete", **q) == 1
    assert value(worker, finished, job="doomed", outcome="retrying", **q) == 1
    assert value(worker, finished, job="doomed", outcome="dead", **q) == 1
    assert value(worker, finished, job="permanent", outcome="dead", **q) == 1
    assert (
        value(worker, "conveyor_job_duration_seconds_count", job="effect", outcome="complete", **q)
        == 3
    )
    assert value(worker, "conveyor_job_queue_wait_seconds_count", job="flaky", **q) == 2
    assert value(worker, "conveyor_jobs_in_progress", job="effect", **q) == 0
    assert value(worker, "conveyor_worker_heartbeat_timestamp_seconds", **q) > time.time() - 60

    api = metric_samples(stack.http.get("/metrics").text)
    assert value(api, "conveyor_jobs_enqueued_total", job="effect", **q) == 3
    assert value(api, "conveyor_jobs_enqueued_total", job="doomed", **q) == 1
    assert (
        value(
            api,
            "conveyor_http_requests_total",
            method="POST",
            route="/v1/jobs/effect",
            status="201",
        )
        == 3
    )
    assert value(api, "conveyor_queue_jobs", state="dead", **q) == 2
    assert value(api, "conveyor_queue_jobs", state="ready", **q) == 0
    assert value(api, "conveyor_redis_up") == 1

    openmetrics = httpx.get(
        f"{stack.workers[0].base_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        line
        for line in openmetrics.text.splitlines()
        if line.startswith("conveyor_job_duration_seconds_bucket") and "# {trace_id=" in line
    ]
    assert exemplars, "no exemplar on the job duration histogram"
    trace_ids = {stack.job(j)["trace_id"] for j in ids}
    assert any(any(t in line for t in trace_ids) for line in exemplars)
