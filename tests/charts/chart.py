"""Render the chart with the real Helm engine, in-process, and read the objects back."""

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import helm_python as helm
import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "conveyor"
VALUES_DIR = CHART_DIR / "ci"
CRD_SCHEMAS = Path(__file__).parent / "crds"
RELEASE = "conveyor"
NAMESPACE = "conveyor"

Manifest = dict[str, Any]


def values_file(name: str) -> dict[str, Any]:
    """A values file from the chart's `ci/` folder; "defaults" means no overrides."""
    if name == "defaults":
        return {}
    loaded = yaml.safe_load((VALUES_DIR / f"{name}-values.yaml").read_text())
    return cast(dict[str, Any], loaded or {})


def matrix() -> list[str]:
    """Every values set the chart is rendered with: the defaults and each ci/ file."""
    return [
        "defaults",
        *sorted(p.name.removesuffix("-values.yaml") for p in VALUES_DIR.glob("*-values.yaml")),
    ]


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: its objects, by template, and NOTES.txt."""

    objects: list[tuple[str, Manifest]]
    notes: str

    def all(self, kind: str | None = None) -> list[Manifest]:
        return [obj for _, obj in self.objects if kind is None or obj["kind"] == kind]

    def one(self, kind: str, name: str) -> Manifest:
        found = [obj for obj in self.all(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.all()]

    def workloads(self) -> list[Manifest]:
        return [obj for obj in self.all() if obj["kind"] in ("Deployment", "StatefulSet")]

    def hooks(self) -> list[Manifest]:
        return [obj for obj in self.all() if "helm.sh/hook" in annotations(obj)]


def annotations(obj: Manifest) -> dict[str, str]:
    return cast(dict[str, str], obj["metadata"].get("annotations") or {})


def render(values: Mapping[str, Any] | None = None) -> Rendered:
    """Validate `values` against values.schema.json, then render as an install would."""
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(dict(values or {}))
        manifests = chart.render(
            dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects: list[tuple[str, Manifest]] = []
    notes = ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append((template, document))
    return Rendered(objects, notes)


@cache
def render_named(name: str) -> Rendered:
    return render(values_file(name))


def lint(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return helm.lint(CHART_DIR, dict(values or {}), strict=True, namespace=NAMESPACE)


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    group, version = api_version.split("/")
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return cast(dict[str, Any], json.loads(path.read_text()))


def validate_crd(obj: Manifest) -> None:
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    # No check_schema: the CRDs carry Go regexes (such as "^(?i)...") that are
    # not valid Python patterns; they are only compiled when a value uses them.
    jsonschema.validators.validator_for(schema)(schema).validate(obj)


def containers(workload: Manifest) -> Iterator[Manifest]:
    spec = (
        workload["spec"]["template"]["spec"] if "template" in workload["spec"] else workload["spec"]
    )
    yield from spec["containers"]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def to_yaml_stream(objects: list[Manifest]) -> str:
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, width=4096) for obj in objects)
