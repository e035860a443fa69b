"""skaffold.yaml parses, names both images and the chart, and sets values the chart has."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.chart import CHART_DIR, REPO_ROOT, render

pytestmark = pytest.mark.xdist_group("charts")

SKAFFOLD = REPO_ROOT / "skaffold.yaml"
# The newest config schema (Skaffold 2.15 and later).
SCHEMA = "skaffold/v4beta13"
IMAGES = {
    "conveyor-api": "services/api/Dockerfile",
    "conveyor-worker": "services/worker/Dockerfile",
}


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return config


def _builds(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [config["build"], *(p["build"] for p in config["profiles"] if "build" in p)]


def _releases(config: dict[str, Any]) -> list[dict[str, Any]]:
    deploys = [config["deploy"], *(p["deploy"] for p in config["profiles"] if "deploy" in p)]
    return [release for deploy in deploys for release in deploy["helm"]["releases"]]


def _has_value(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_schema_and_profiles() -> None:
    config = _config()
    assert config["apiVersion"] == SCHEMA
    assert config["kind"] == "Config"
    assert {p["name"] for p in config["profiles"]} == {"dev", "prod"}


def test_builds_name_both_images_and_their_dockerfiles() -> None:
    for build in _builds(_config()):
        artifacts = {a["image"]: a for a in build["artifacts"]}
        assert set(artifacts) == set(IMAGES)
        for image, dockerfile in IMAGES.items():
            assert artifacts[image]["context"] == "."
            assert artifacts[image]["docker"]["dockerfile"] == dockerfile
            assert (REPO_ROOT / dockerfile).is_file()


def test_releases_deploy_the_chart_with_the_built_images() -> None:
    chart_values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for release in _releases(_config()):
        assert (REPO_ROOT / release["chartPath"]).resolve() == CHART_DIR
        templates: dict[str, str] = release["setValueTemplates"]
        for key, template in templates.items():
            assert _has_value(chart_values, key), f"{key} is not a value of the chart"
            (image,) = re.findall(r"\{\{\.IMAGE_[A-Z]+_(\w+)\}\}", template)
            # Skaffold names the template variables after the image, "-" as "_".
            assert image.replace("_", "-") in IMAGES
            assert key.split(".")[0] == image.removeprefix("conveyor_")
        assert {
            "api.image.repository",
            "api.image.tag",
            "worker.image.repository",
            "worker.image.tag",
        } <= set(templates)


def test_values_files_render_with_images_set_as_skaffold_would() -> None:
    for release in _releases(_config()):
        for values_file in release["valuesFiles"]:
            values = yaml.safe_load((REPO_ROOT / values_file).read_text())
            values.setdefault("api", {})["image"] = {
                "repository": "registry.local/conveyor-api",
                "tag": "abc123",
            }
            values.setdefault("worker", {})["image"] = {
                "repository": "registry.local/conveyor-worker",
                "tag": "abc123",
            }
            rendered = render(values)
            images = {
                c["image"]
                for w in rendered.all("Deployment")
                for c in w["spec"]["template"]["spec"]["containers"]
            }
            assert images == {
                "registry.local/conveyor-api:abc123",
                "registry.local/conveyor-worker:abc123",
            }
    assert Path(REPO_ROOT / "k8s/dev-values.yaml").is_file()
