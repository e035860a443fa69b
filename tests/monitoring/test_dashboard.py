"""The dashboard is the generator's output, valid for current Grafana, and asks
only for metrics the services export (compared with their live /metrics)."""

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.monitoring.conftest import QUOTA_KEY
from tests.support.auth import bearer
from tests.support.prometheus import DASHBOARD_FILE, load_rules
from tests.support.promql import metric_names, panel_queries
from tools import dashboard as generator

# Grafana 11.0 writes 39; older schemas are migrated on load, so a dashboard
# below this was written for an older Grafana.
MIN_SCHEMA_VERSION = 39
GRID_WIDTH = 24
VARIABLES = ("datasource", "namespace", "queue", "job")


@pytest.fixture
def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def test_the_checked_in_dashboard_is_the_generated_one() -> None:
    assert DASHBOARD_FILE.read_text() == generator.render(), (
        "conveyor.json differs from tools/dashboard.py: run `make dashboard`"
    )


def test_schema_version_is_current(board: dict[str, Any]) -> None:
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert board["uid"] == "conveyor"
    assert "id" not in board or board["id"] is None  # an id would clash on import


def test_variables_choose_datasource_namespace_queue_and_job(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert tuple(variables) == VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in VARIABLES[1:]:
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["includeAll"], name
        assert variable["multi"], name
        assert variable["query"]["query"].startswith("label_values(")


def test_panel_ids_are_unique_and_every_query_uses_the_datasource_variable(
    board: dict[str, Any],
) -> None:
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'namespace=~"$namespace"' in target["expr"] or "objective" in target["expr"]


def test_panels_sit_on_the_grid_without_overlapping(board: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_histogram_panels_show_exemplars(board: dict[str, Any]) -> None:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            if "_bucket" in target["expr"]:
                assert target["exemplar"] is True, panel["title"]


def test_the_dashboard_answers_the_on_call_questions(board: dict[str, Any]) -> None:
    """Each thing the on-call engineer looks for has a panel reading its metric."""
    exprs = " ".join(expr for _, expr in panel_queries(board))
    for metric in (
        "conveyor_http_requests_total",
        "conveyor_http_request_duration_seconds_bucket",
        "conveyor_jobs_enqueued_total",
        "conveyor_queue_jobs",
        "conveyor_queue_oldest_ready_age_seconds",
        "conveyor_jobs_finished_total",
        "conveyor_job_duration_seconds_bucket",
        "conveyor_job_queue_wait_seconds_bucket",
        "conveyor_jobs_in_progress",
        "conveyor_worker_heartbeat_timestamp_seconds",
        "conveyor_redis_up",
    ):
        assert metric in exprs, f"no panel shows {metric}"


def exported_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def recorded_names() -> dict[str, str]:
    return {
        rule["record"]: rule["expr"]
        for group in load_rules()["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


@pytest.mark.e2e
def test_every_query_uses_only_metrics_the_services_export(
    stack: Stack, board: dict[str, Any]
) -> None:
    """Dashboard and rules against the live /metrics of the api and the worker, after
    a job of each outcome has run (histograms and labelled series appear on use)."""
    done = stack.submit("effect", {"work_s": 0})["id"]
    retried = stack.submit("flaky", {"fail_times": 1})["id"]
    dead = stack.submit("permanent", {})["id"]
    # An offloaded payload and result, by a key with a quota of stored bytes.
    offloaded = stack.submit(
        "bulky", {"data": "o" * 4096, "echo": True}, headers=bearer(QUOTA_KEY)
    )["id"]
    stack.wait_for_state(offloaded, "complete")
    stack.wait_for_state(done, "complete")
    stack.wait_for_state(retried, "complete")
    stack.wait_for_state(dead, "dead")
    exported = exported_names(stack.http.get("/metrics").text) | exported_names(
        httpx.get(f"{stack.workers[0].base_url}/metrics").text
    )
    recorded = recorded_names()

    def check(where: str, expr: str) -> None:
        for name in metric_names(expr):
            assert name in exported or name in recorded, f"{where}: {name} is not exported"

    for title, expr in panel_queries(board):
        check(f"panel {title!r}", expr)
    for variable in board["templating"]["list"][1:]:
        check(f"variable {variable['name']}", variable["query"]["query"])
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            check(rule.get("alert") or rule["record"], rule["expr"])


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


@pytest.mark.e2e
def test_outcome_counters_start_at_zero_before_any_job(stack: Stack) -> None:
    """rate() cannot see a counter born at 1, so every outcome is exported at 0 first."""
    worker = samples(
        httpx.get(f"{stack.workers[0].base_url}/metrics").text, "conveyor_jobs_finished_total"
    )
    for outcome in ("complete", "retrying", "dead", "cancelled", "interrupted"):
        labels = (("job", "doomed"), ("outcome", outcome), ("queue", "arq:queue"))
        assert worker.get(labels) == 0, (outcome, worker)
    api = samples(stack.http.get("/metrics").text, "conveyor_jobs_enqueued_total")
    assert api.get((("job", "doomed"), ("queue", "arq:queue"))) == 0, api
