"""The seam job modules build on: core's public surface, and a platform that
names none of the seed app's jobs."""

import ast
import re
from pathlib import Path

import pytest

import conveyor_core
import conveyor_seed

REPO_ROOT = Path(__file__).resolve().parents[2]
PLATFORM = [REPO_ROOT / "services" / name for name in ("core", "api", "worker")]
TEXT_SUFFIXES = {".py", ".lua", ".js", ".html", ".css", ".toml", ".txt", ".md", ""}


def _platform_files() -> list[Path]:
    return [
        path
        for root in PLATFORM
        for path in root.rglob("*")
        if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts
    ]


@pytest.mark.parametrize("name", [job_type.name for job_type in conveyor_seed.JOB_TYPES])
def test_the_platform_names_none_of_the_seed_jobs(name: str) -> None:
    # A name used as itself: `asyncio.create_task` is not the tutorial's job.
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
    found = [
        f"{path.relative_to(REPO_ROOT)}:{n}"
        for path in _platform_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_the_platform_imports_nothing_of_the_seed_app() -> None:
    """It only names the seed's module as the default of CONVEYOR_JOB_MODULES."""
    found = [
        str(path.relative_to(REPO_ROOT))
        for path in _platform_files()
        if path.suffix == ".py"
        and any(m.startswith("conveyor_seed") for m in _imported_modules(path))
    ]
    assert found == []


def test_the_public_surface_is_importable_and_typed() -> None:
    for name in conveyor_core.__all__:
        assert getattr(conveyor_core, name) is not None, name
    assert (Path(conveyor_core.__file__).parent / "py.typed").exists()


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


JOB_MODULE_FILES = [
    *(REPO_ROOT / "services/seed/src/conveyor_seed").rglob("*.py"),
    *(REPO_ROOT / "examples/acme-jobs/src/acme_jobs").rglob("*.py"),
    REPO_ROOT / "tests/support/jobs.py",
    *(REPO_ROOT / "tests/support/broken").rglob("*.py"),
    REPO_ROOT / "tests/charts/jobs.py",
]


def test_job_modules_import_no_service_code_but_their_api_routes() -> None:
    """The api loads job modules and has no worker code; the worker has no api
    code. Only a module's API_ROUTERS (imported by the api alone) use the api's."""
    for path in JOB_MODULE_FILES:
        imported = _imported_modules(path)
        assert not [m for m in imported if m.startswith("conveyor_worker")], path
        if not path.name.startswith("routes"):
            assert not [m for m in imported if m.startswith("conveyor_api")], path
