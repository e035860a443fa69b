"""The example team package, built and installed as a team would: a wheel in an
environment with Conveyor's core and one service, nothing from this repository
on the path.

- With core and api only (no worker code at all), the api starts with the
  package as its job module and validates its payloads.
- With core and worker, two worker processes run its jobs: the scheduled one
  once per tick across both, the resource opened once per process and closed
  at shutdown.
"""

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis as redis_sync

from conveyor_core.local.redis_server import free_port
from tests.support.auth import AUTH_HEADERS, TEST_KEY, TEST_KEY_NAME, api_key, keys_env

pytestmark = [pytest.mark.xdist_group("examples"), pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
UV = REPO_ROOT / ".tools/bin/uv"
PACKAGES = {
    "core": REPO_ROOT / "services/core",
    "api": REPO_ROOT / "services/api",
    "worker": REPO_ROOT / "services/worker",
    "acme": REPO_ROOT / "examples/acme-jobs",
}
# The scheduled job's tick in the worker test: every 2 seconds.
TICK_S = 2


def _uv(*args: str | Path, timeout_s: float = 180) -> str:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [str(UV), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each package built as a wheel, as a registry would hold it."""
    dist = tmp_path_factory.mktemp("dist")
    built = {}
    for name, source in PACKAGES.items():
        before = set(dist.glob("*.whl"))
        _uv("build", "--wheel", "--out-dir", dist, source)
        (wheel,) = set(dist.glob("*.whl")) - before
        built[name] = wheel
    return built


def environment(tmp_path: Path, wheels: dict[str, Path], *names: str) -> Path:
    """A fresh virtualenv with just these wheels (and their dependencies, at the
    versions of the lock, from the package cache `make install` filled)."""
    venv = tmp_path / "venv"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        _uv(
            "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-workspace", "--all-packages"
        )
    )
    _uv("venv", "--quiet", "--python", "python3.11", venv)
    python = venv / "bin" / "python"
    _uv("pip", "install", "--python", python, "-c", constraints, *(wheels[n] for n in names))
    return python


def imports(python: Path, module: str) -> bool:
    result = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, check=False, cwd="/"
    )
    return result.returncode == 0


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def wait_healthy(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(python: Path, module: str, env: dict[str, str], log: Path, port: int) -> Service:
    """`python -m module` in a clean environment: no repository on the path."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "-m", module],
            env={"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **env},
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Service(process, log, port)


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis_sync.Redis]:
    """A plain client of the test's database, closed even when the test fails."""
    with redis_sync.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


def _strings(client: "redis_sync.Redis", key: str) -> list[str]:
    items = cast(list[bytes], client.lrange(key, 0, -1))
    return [item.decode() for item in items]


def test_the_api_with_core_and_api_only_validates_the_package_payloads(
    tmp_path: Path, wheels: dict[str, Path], redis_url: str, services: list[Service]
) -> None:
    python = environment(tmp_path, wheels, "core", "api", "acme")
    assert imports(python, "acme_jobs")
    assert not imports(python, "conveyor_worker"), "the api's environment has no worker code"
    assert not imports(python, "conveyor_seed")
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "CONVEYOR_API_PORT": str(port),
        "CONVEYOR_JOB_MODULES": "acme_jobs",
        "CONVEYOR_API_KEYS": keys_env(api_key(TEST_KEY_NAME, TEST_KEY)),
    }
    api = start(python, "conveyor_api", env, tmp_path / "api.log", port)
    services.append(api)
    api.wait_healthy()
    base = f"http://127.0.0.1:{port}"

    bad = httpx.post(
        f"{base}/v1/jobs/acme_invoice",
        json={"order_id": "A-1", "amount_cents": 0},
        headers=AUTH_HEADERS,
    )
    assert bad.status_code == 422, bad.text
    assert "amount_cents" in bad.text
    good = httpx.post(
        f"{base}/v1/jobs/acme_invoice",
        json={"order_id": "A-1", "amount_cents": 1250},
        headers=AUTH_HEADERS,
    )
    assert good.status_code in (201, 202), good.text
    job = httpx.get(f"{base}/v1/jobs/{good.json()['id']}", headers=AUTH_HEADERS).json()
    assert (job["job_type"], job["state"]) == ("acme_invoice", "queued")
    # The seed app is not loaded: only what CONVEYOR_JOB_MODULES names.
    assert httpx.post(f"{base}/task", json={"count": 1}, headers=AUTH_HEADERS).status_code == 404
    api.stop()


def test_two_workers_run_the_package_jobs_with_its_resource_and_schedule(
    tmp_path: Path,
    wheels: dict[str, Path],
    redis_url: str,
    services: list[Service],
    direct: redis_sync.Redis,
) -> None:
    python = environment(tmp_path, wheels, "core", "worker", "acme")
    assert not imports(python, "conveyor_api")
    client = direct
    client.hset("acme:orders:open", mapping={"A-1": 1250, "A-2": 990})
    every_tick = list(range(0, 60, TICK_S))
    env = {
        "REDIS_URL": redis_url,
        "CONVEYOR_JOB_MODULES": "acme_jobs",
        # Moves the hourly schedule the package declares to every TICK_S seconds.
        "CONVEYOR_SCHEDULES": json.dumps({"acme_reconcile": {"second": every_tick}}),
        "CONVEYOR_WORKER_SHUTDOWN_WAIT_S": "5",
    }
    workers = []
    for n in range(2):
        port = free_port()
        worker_env = {**env, "CONVEYOR_WORKER_HEALTH_PORT": str(port)}
        workers.append(start(python, "conveyor_worker", worker_env, tmp_path / f"w{n}.log", port))
    services.extend(workers)
    for worker in workers:
        worker.wait_healthy()

    deadline = time.monotonic() + 6 * TICK_S + 10
    while len(_strings(client, "acme:reconcile:runs")) < 4:
        assert time.monotonic() < deadline, [w.output() for w in workers]
        time.sleep(0.2)
    for worker in workers:
        assert worker.stop() == 0, worker.output()

    runs = _strings(client, "acme:reconcile:runs")
    ticks_ms = sorted(int(run.rpartition(":")[2]) for run in runs)
    # Once per tick: no tick ran twice, and none was skipped between the first and the last.
    assert len(set(ticks_ms)) == len(ticks_ms), runs
    gaps_ms = [later - earlier for earlier, later in itertools.pairwise(ticks_ms)]
    assert gaps_ms == [TICK_S * 1000] * (len(ticks_ms) - 1), runs
    # The scheduled job enqueued the invoices, which booked each order once.
    assert client.hgetall("acme:invoices") == {b"A-1": b"1250", b"A-2": b"990"}
    # The ledger: opened once per worker process, closed once at its shutdown.
    lifecycle = _strings(client, "acme:ledger:lifecycle")
    pids = {str(worker.process.pid) for worker in workers}
    assert sorted(lifecycle) == sorted(
        [f"opened {pid}" for pid in pids] + [f"closed {pid}" for pid in pids]
    ), lifecycle
