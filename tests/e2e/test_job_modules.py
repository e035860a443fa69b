"""Job modules at the services' start, as real processes: a bad one stops a
service with one line naming the module and the problem; the api starts with
a job module while the worker package cannot be imported; a resource that
never finishes closing does not hold the worker's shutdown."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import (
    REPO_ROOT,
    TEST_ENV,
    ServiceProcess,
    api_process,
    stop_all,
    worker_process,
)

pytestmark = pytest.mark.e2e
BROKEN = "tests.support.broken"


def refusal(service: ServiceProcess, timeout_s: float = 20) -> str:
    """Start a service that must not start; return its last line of output."""
    service.start(wait_ready=False)
    assert service.process is not None
    try:
        code = service.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_all(service)
        raise AssertionError(f"it started anyway:\n{service.output()}") from None
    output = service.output()
    assert code != 0, output
    assert "Traceback" not in output, output
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("module", "problem"),
    [
        ("import_error", "import failed: ModuleNotFoundError: No module named "),
        ("duplicate", "job type 'flaky' is declared twice (also in 'tests.support.jobs')"),
        ("bad_schedule", "import failed: InvalidScheduleError: hour must be in 0..23, not 25"),
    ],
)
@pytest.mark.parametrize("service", ["api", "worker"])
def test_a_bad_job_module_stops_the_service_with_one_line(
    redis_url: str, tmp_path: Path, service: str, module: str, problem: str
) -> None:
    modules = f"{TEST_ENV['CONVEYOR_JOB_MODULES']},{BROKEN}.{module}"
    start = api_process if service == "api" else worker_process
    line = refusal(start(redis_url, tmp_path, CONVEYOR_JOB_MODULES=modules))
    assert line.startswith(f"conveyor-{service}: cannot start: job module '{BROKEN}.{module}': ")
    assert problem in line


def test_a_resource_that_fails_to_open_stops_the_worker_with_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    modules = f"{TEST_ENV['CONVEYOR_JOB_MODULES']},{BROKEN}.bad_resource"
    line = refusal(worker_process(redis_url, tmp_path, CONVEYOR_JOB_MODULES=modules))
    assert line == (
        f"conveyor-worker: cannot start: job module '{BROKEN}.bad_resource': resource "
        "'orders_db' failed to open: ConnectionRefusedError: db.internal:5432 refused the "
        "connection"
    )


def test_a_resource_that_hangs_on_close_does_not_hold_shutdown(
    redis_url: str, tmp_path: Path
) -> None:
    modules = f"{TEST_ENV['CONVEYOR_JOB_MODULES']},{BROKEN}.hangs_on_close"
    worker = worker_process(
        redis_url, tmp_path, CONVEYOR_JOB_MODULES=modules, CONVEYOR_WORKER_SHUTDOWN_WAIT_S="2"
    )
    try:
        worker.start()
        # Ready: its resources are open, so there is something to close.
        worker.wait_for("/readyz")
        start_s = time.monotonic()
        assert worker.stop(timeout_s=15) == 0, worker.output()
        # No job ran, so closing gets the whole shutdown wait, and no more.
        budget = re.search(r"resources did not close within ([\d.]+) s", worker.output())
        assert budget is not None, worker.output()
        assert 0 < float(budget[1]) <= 2
        # A fault bound: the hang is an hour (and the default wait 20 s); the
        # 2 s wait and a busy machine's slack stay well short of either.
        assert time.monotonic() - start_s < 2 + 8, worker.output()
    finally:
        stop_all(worker)


# Run in a fresh interpreter: the worker package, and the seed's worker-only
# dependencies, made unimportable, as in the api image.
API_WITHOUT_WORKER = """
import sys
for name in ("conveyor_worker", "aiohttp", "aiosmtplib"):
    sys.modules[name] = None  # any import of it now raises ImportError
from conveyor_api.main import create_app
from conveyor_api.settings import Settings
from conveyor_core.settings import CatalogSettings
app = create_app(Settings(development=True, catalog=CatalogSettings(job_modules=sys.argv[1])))
paths = set(app.openapi()["paths"])
assert "/v1/jobs/flaky" in paths and "/v1/documents" in paths and "/task" in paths, paths
assert not [name for name in sys.modules if name.startswith("conveyor_worker.")]
print("ok")
"""


def test_the_api_loads_job_modules_without_the_worker_package() -> None:
    result = subprocess.run(
        [sys.executable, "-c", API_WITHOUT_WORKER, TEST_ENV["CONVEYOR_JOB_MODULES"]],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
