"""The example team package's chart values deploy its images with its job module."""

import json
from typing import Any

import pytest
import yaml

from conveyor_core.settings import CatalogSettings
from tests.charts.chart import REPO_ROOT, containers, render

pytestmark = pytest.mark.xdist_group("charts")

VALUES = REPO_ROOT / "examples/acme-jobs/values.yaml"


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container["env"]}


def test_acme_values_deploy_acme_images_with_its_job_module() -> None:
    rendered = render(yaml.safe_load(VALUES.read_text()))
    (api,) = containers(rendered.one("Deployment", "conveyor-api"))
    (worker,) = containers(rendered.one("Deployment", "conveyor-worker-default"))
    assert api["image"] == "acme/acme-jobs-api:0.1.0"
    assert worker["image"] == "acme/acme-jobs-worker:0.1.0"
    for container in (api, worker):
        assert _env(container)["CONVEYOR_JOB_MODULES"] == "acme_jobs"
    raw = json.loads(_env(worker)["CONVEYOR_SCHEDULES"])
    schedules = CatalogSettings(schedules=raw).schedule_overrides()
    assert [s.minute for s in schedules["acme_reconcile"]] == [(0, 15, 30, 45)]
