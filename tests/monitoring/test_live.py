"""A real Prometheus scrapes the real api and worker, with the repo's rules,
while jobs succeed, retry and die: every dashboard query then returns data,
and the failure-ratio and dead-letter alerts are pending or firing."""

import json
import math
import re
import time
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.monitoring.conftest import QUOTA_KEY
from tests.support.auth import bearer
from tests.support.prometheus import DASHBOARD_FILE, NAMESPACE, PrometheusProcess
from tests.support.promql import panel_queries, substitute

pytestmark = pytest.mark.e2e

EFFECTS = 12
FLAKY = 4  # one retry each, then success
OFFLOADED = 1  # a payload and a result in the blob store
DOOMED = 3  # out of tries: retry, then dead
PERMANENT = 2  # a permanent error: dead at once
DEAD = DOOMED + PERMANENT
# What Grafana's "All" and its rate interval would become; 1m spans the whole
# workload at a 1 s scrape interval.
RATE_INTERVAL = "1m"


def run_workload(stack: Stack) -> None:
    ids = [stack.submit("effect", {"work_s": 0.05})["id"] for _ in range(EFFECTS)]
    ids += [stack.submit("flaky", {"fail_times": 1})["id"] for _ in range(FLAKY)]
    dead = [stack.submit("doomed", {})["id"] for _ in range(DOOMED)]
    dead += [stack.submit("permanent", {})["id"] for _ in range(PERMANENT)]
    # An offloaded payload and result by a key with a quota: the blob store's panels.
    ids += [
        stack.submit("bulky", {"data": "o" * 4096, "echo": True}, headers=bearer(QUOTA_KEY))["id"]
        for _ in range(OFFLOADED)
    ]
    # Client mistakes, so the errors panel has something to show.
    assert stack.http.get("/v1/jobs/no-such-job").status_code == 404
    assert stack.http.post("/v1/jobs/flaky", json={"fail_times": -1}).status_code == 422
    assert stack.http.get("/v1/queues").status_code == 200
    for job_id in ids:
        stack.wait_for_state(job_id, "complete")
    for job_id in dead:
        stack.wait_for_state(job_id, "dead")


def requests_answered(prometheus: PrometheusProcess) -> float:
    """The api's request count, as Prometheus last scraped it."""
    result = prometheus.query(f'sum(conveyor_http_requests_total{{namespace="{NAMESPACE}"}})')
    return float(result[0]["value"][1]) if result else 0.0


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number (histogram_quantile gives NaN on no data)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_panel_has_data_and_failure_alerts_go_off(
    stack: Stack, prometheus: PrometheusProcess
) -> None:
    started_s = time.time()
    # The first scrapes see the counters at 0, so rate() sees every job after them.
    prometheus.wait_until(
        "scraped both services",
        lambda: len(prometheus.query('up{job=~"conveyor-.*"} == 1')) == 2,
        timeout_s=30,
    )
    # Two waves, each scraped: a labelled series (a route, a histogram's outcome)
    # is born on its first use, and rate() needs it to grow after that.
    answered = 0.0  # requests the api's last scrape had counted
    for wave in (1, 2):
        run_workload(stack)
        dead = f'sum(conveyor_jobs_finished_total{{outcome="dead"}}) == {wave * DEAD}'
        prometheus.wait_until(
            f"scraped wave {wave}'s dead jobs",
            lambda query=dead: bool(prometheus.query(query)),
            timeout_s=30,
        )
        # The api's scrape too: when one scrape first shows both waves' requests,
        # the api's request series never grow where rate() can see them.
        prometheus.wait_until(
            f"scraped wave {wave}'s requests",
            lambda before=answered: requests_answered(prometheus) > before,
            timeout_s=30,
        )
        answered = requests_answered(prometheus)

    def failure_alerts() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for alert in prometheus.alerts():
            if alert["state"] in ("pending", "firing"):
                found.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"]["job"])
        return found

    wanted = {"ConveyorJobFailureRatioHigh", "ConveyorDeadLettersGrowing"}
    prometheus.wait_until(
        "saw the failure alerts pending or firing",
        lambda: wanted <= set(failure_alerts()),
        timeout_s=30,
    )
    alerts = failure_alerts()
    # Jobs that failed set them off; the job that always succeeds did not.
    assert alerts["ConveyorJobFailureRatioHigh"] == {"flaky", "doomed", "permanent"}
    assert alerts["ConveyorDeadLettersGrowing"] == {"doomed", "permanent"}
    for alert in prometheus.alerts():
        assert alert["labels"]["namespace"] == NAMESPACE
        assert alert["annotations"]["runbook_url"].startswith("docs/runbooks/")

    # No rule failed to evaluate against the live series.
    broken = [rule for rule in prometheus.rule_health() if rule[1] != "ok"]
    assert not broken, broken

    # The dashboard's variables find the live values...
    board = json.loads(DASHBOARD_FILE.read_text())
    namespaces = prometheus.label_values("namespace", "conveyor_redis_up")
    queues = prometheus.label_values("queue", "conveyor_queue_jobs")
    jobs = prometheus.label_values("job", "conveyor_jobs_enqueued_total")
    assert NAMESPACE in namespaces
    assert "arq:queue" in queues
    assert {"effect", "flaky", "doomed", "permanent"} <= set(jobs)

    # ...and every query of every panel, with them, returns data.
    variables = {
        "namespace": NAMESPACE,
        "queue": "arq:queue",
        "job": ".*",  # "All"
        "__rate_interval": RATE_INTERVAL,
    }
    queries = [(title, substitute(expr, variables)) for title, expr in panel_queries(board)]

    def empty_panels() -> list[tuple[str, str]]:
        return [(title, expr) for title, expr in queries if not has_data(prometheus.query(expr))]

    # Recorded series follow their rule group's next evaluation.
    try:
        prometheus.wait_until("had data for every panel", lambda: not empty_panels(), timeout_s=30)
    except AssertionError:
        raise AssertionError(f"panels without data: {empty_panels()}") from None

    # Histogram panels' exemplars carry the trace ids Grafana links to.
    for metric in (
        "conveyor_job_duration_seconds_bucket",
        "conveyor_http_request_duration_seconds_bucket",
    ):
        exemplars = prometheus.exemplars(
            f'{metric}{{namespace="{NAMESPACE}"}}', started_s, time.time() + 60
        )
        trace_ids = {e["labels"].get("trace_id", "") for e in exemplars}
        assert any(re.fullmatch(r"[0-9a-f]{32}", t) for t in trace_ids), (metric, exemplars)

    # The numbers on the dashboard are the workload's.
    success = prometheus.query(
        f'sum(conveyor_jobs_finished_total{{namespace="{NAMESPACE}", outcome="complete"}})'
    )
    assert float(success[0]["value"][1]) == 2 * (EFFECTS + FLAKY + OFFLOADED)
    # The api reads queue depths from Redis when scraped: wait for a scrape after
    # the last job died. A wrong count never matches, and the wait fails.
    dead_letters = f'max(conveyor_queue_jobs{{namespace="{NAMESPACE}", state="dead"}})'
    prometheus.wait_until(
        f"the dead-letter gauge showed {2 * DEAD}",
        lambda: any(float(s["value"][1]) == 2 * DEAD for s in prometheus.query(dead_letters)),
        timeout_s=10,
    )
