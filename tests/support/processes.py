"""Start Conveyor's services as real processes, the way a container would."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from conveyor_core.local.redis_server import free_port
from tests.support import jobs
from tests.support.auth import RATE_LIMIT_ENV, keys_env

REPO_ROOT = Path(__file__).resolve().parents[2]
# Both services load the test job types, as a deployment would load its own.
# No cron unless a test asks for it: a run at the default times (hh:30, 09:00)
# would add jobs to tests that count exactly what they submitted.
TEST_ENV = {
    "CONVEYOR_JOB_MODULES": jobs.MODULES,
    "PYTHONPATH": str(REPO_ROOT),
    "CONVEYOR_DIGEST_SCHEDULE": "null",
    "CONVEYOR_CLEANUP_SCHEDULE": "null",
    # Where test mail may go (the seed refuses other domains).
    "CONVEYOR_MAIL_ALLOWED_DOMAINS": "example.com",
    # The name workers give themselves (as a pod's is): pages and logs show it.
    "HOSTNAME": "conveyor-worker-0",
}


class ServiceProcess:
    """`python -m <module>` with its output in a log file the test can read."""

    def __init__(
        self, module: str, env: Mapping[str, str], port: int, log_path: Path, ready_path: str
    ) -> None:
        self.module = module
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.port = port
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout_s: float = 30) -> "ServiceProcess":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_for(self.ready_path, timeout_s=timeout_s)
        return self

    def wait_for(self, path: str, *, status: int = 200, timeout_s: float = 30) -> httpx.Response:
        """Poll `path` until it answers `status`; fail with the log if it never does."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.module} exited early:\n{self.output()}")
            try:
                response = httpx.get(self.base_url + path, timeout=1)
                if response.status_code == status:
                    return response
                last = response.status_code
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(
            f"{self.module} {path} never answered {status} (last: {last}):\n{self.output()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Send `sig` and wait; return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"{self.module} ignored {sig.name}:\n{self.output()}"
                ) from None
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# The api accepts the test key (tests/support/auth.py); clients send it by default.
API_TEST_ENV = {"CONVEYOR_API_KEYS": keys_env(), **RATE_LIMIT_ENV}


def api_process(redis_url: str, log_dir: Path, **env: str) -> ServiceProcess:
    port = free_port()
    settings = {
        **TEST_ENV,
        **API_TEST_ENV,
        "REDIS_URL": redis_url,
        "CONVEYOR_API_PORT": str(port),
        **env,
    }
    return ServiceProcess("conveyor_api", settings, port, log_dir / "api.log", "/readyz")


def worker_process(redis_url: str, log_dir: Path, **env: str) -> ServiceProcess:
    port = free_port()
    settings = {**TEST_ENV, "REDIS_URL": redis_url, "CONVEYOR_WORKER_HEALTH_PORT": str(port), **env}
    log_path = log_dir / f"worker-{port}.log"
    return ServiceProcess("conveyor_worker", settings, port, log_path, "/healthz")


def stop_all(*services: ServiceProcess) -> None:
    """Teardown: SIGTERM whatever still runs (stop() kills what ignores it)."""
    for service in services:
        if service.alive():
            service.stop()
