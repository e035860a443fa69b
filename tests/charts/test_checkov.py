"""checkov scans every render of the chart and both Dockerfiles: no failed check.

A finding the chart accepts is skipped in the chart itself, as a
`checkov.io/skipN: CHECK=reason` annotation, where a reader sees it too.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.charts.chart import REPO_ROOT, annotations, matrix, render_named, to_yaml_stream

pytestmark = pytest.mark.xdist_group("charts")

DOCKERFILES = {
    "api": REPO_ROOT / "services/api/Dockerfile",
    "worker": REPO_ROOT / "services/worker/Dockerfile",
}


def _scan(directory: Path) -> list[dict[str, Any]]:
    checkov = Path(sys.executable).parent / "checkov"
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--output",
            "json",
            "--compact",
            "--quiet",
            "--skip-download",  # offline: the built-in checks only
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # checkov exits 1 when a check fails; anything else (or no JSON) is a broken run.
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


@pytest.mark.timeout(300)
def test_checkov_finds_no_failed_check(tmp_path: Path) -> None:
    # One scan over every render set and both Dockerfiles: checkov's start-up dominates.
    for name in matrix():
        (tmp_path / f"{name}.yaml").write_text(to_yaml_stream(render_named(name).all()))
    for service, dockerfile in DOCKERFILES.items():
        (tmp_path / service).mkdir()
        shutil.copy(dockerfile, tmp_path / service / "Dockerfile")
    reports = {report["check_type"]: report for report in _scan(tmp_path)}

    assert set(reports) == {"kubernetes", "dockerfile"}
    kubernetes = reports["kubernetes"]["summary"]
    rendered_objects = sum(len(render_named(name).all()) for name in matrix())
    assert kubernetes["resource_count"] >= rendered_objects * 0.9  # it read the renders
    assert kubernetes["parsing_errors"] == 0
    assert reports["dockerfile"]["summary"]["resource_count"] == len(DOCKERFILES)
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} in {check['file_path']}"
        for report in reports.values()
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []


def test_every_skip_gives_its_reason() -> None:
    skips = {
        value
        for name in matrix()
        for obj in render_named(name).all()
        for key, value in annotations(obj).items()
        if key.startswith("checkov.io/skip")
    }
    assert skips
    for skip in skips:
        check, _, reason = skip.partition("=")
        assert check.startswith(("CKV_", "CKV2_"))
        assert len(reason.split()) >= 5, f"{check} needs a reason"
