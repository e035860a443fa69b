"""The documentation site: it builds with --strict, a broken link or a page left
out of the nav fails that build, and `make check` runs it with the staleness
check of the generated reference pages."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT

MKDOCS = REPO_ROOT / ".venv" / "bin" / "mkdocs"


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # Not --quiet: it hides the warnings that --strict counts.
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "docs", root / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", root / "mkdocs.yml")
    return root


def test_the_site_builds_strictly(docs_copy: Path, tmp_path: Path) -> None:
    result = build(docs_copy, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").exists()
    assert (tmp_path / "site" / "runbooks" / "conveyor-queue-stalled" / "index.html").exists()


def test_a_broken_link_fails_the_build(docs_copy: Path, tmp_path: Path) -> None:
    page = docs_copy / "docs" / "tutorial.md"
    page.write_text(page.read_text() + "\nSee [the missing page](how-to/missing.md).\n")
    result = build(docs_copy, tmp_path / "site")
    assert result.returncode != 0
    assert "how-to/missing.md" in result.stderr


def test_a_page_left_out_of_the_nav_fails_the_build(docs_copy: Path, tmp_path: Path) -> None:
    (docs_copy / "docs" / "how-to" / "orphan.md").write_text("# Orphan\n")
    result = build(docs_copy, tmp_path / "site")
    assert result.returncode != 0
    assert "orphan.md" in result.stderr


def test_make_check_runs_the_reference_check_and_the_strict_build() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = re.search(r"^check:.*?\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    assert "-m tools.docs_reference --check" in recipe.group(1)
    assert "mkdocs build --strict --site-dir" in recipe.group(1)
    assert "--quiet" not in recipe.group(1)


def test_every_runbook_the_alerts_name_is_in_the_site() -> None:
    rules = (REPO_ROOT / "charts/conveyor/files/prometheus/conveyor.rules.yaml").read_text()
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    urls = set(re.findall(r"runbook_url: docs/(runbooks/\S+\.md)", rules))
    assert urls
    assert {url for url in urls if url not in nav} == set()
