"""k8s/ is the chart rendered with k8s/values.yaml, and nothing else."""

import pytest
import yaml

from tests.charts.manifests import K8S_DIR, expected_files, generated_files

pytestmark = pytest.mark.xdist_group("charts")


def test_k8s_is_in_sync_with_the_chart() -> None:
    expected = expected_files()
    present = {p.name for p in generated_files()}
    assert present == set(expected), "run `make manifests`"
    for name, content in expected.items():
        assert (K8S_DIR / name).read_text() == content, f"k8s/{name} drifted: run `make manifests`"


def test_kustomization_lists_every_manifest_and_no_secret_value() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in generated_files()} - {"kustomization.yaml"}
    kinds = {
        doc["kind"]
        for name in listed
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text())
        if doc
    }
    assert "Secret" not in kinds, "a checked-in manifest must not carry a password"
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy"} <= kinds
