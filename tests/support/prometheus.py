"""A real Prometheus (Debian's `prometheus` package) for the monitoring tests."""

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from conveyor_core.local.redis_server import free_port
from tests.support.processes import REPO_ROOT

RULES_FILE = REPO_ROOT / "charts/conveyor/files/prometheus/conveyor.rules.yaml"
DASHBOARD_FILE = REPO_ROOT / "charts/conveyor/files/grafana/conveyor.json"
RUNBOOKS = REPO_ROOT / "docs/runbooks"
# The label Kubernetes service discovery adds; the live tests set it statically.
NAMESPACE = "conveyor-test"


def binary(name: str) -> str:
    """`promtool` or `prometheus` from Debian's package; fail loudly when it is missing."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        raise AssertionError(
            f"'{name}' is not installed: `make test-deps` installs Debian's prometheus package"
        )
    return found


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return rules


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"] if "alert" in rule]


class PrometheusProcess:
    """Prometheus on a free port, scraping the given targets every second."""

    def __init__(self, work_dir: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.work_dir = work_dir
        self.log_path = work_dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {
                    "job_name": name,
                    # Keep the metrics' own `job` label (the job type), as the
                    # chart's ServiceMonitor does with honorLabels.
                    "honor_labels": True,
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": hosts, "labels": {"namespace": NAMESPACE}}],
                }
                for name, hosts in targets.items()
            ],
        }
        self.config_path = work_dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def start(self, timeout_s: float = 30) -> "PrometheusProcess":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.work_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--enable-feature=exemplar-storage",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited early:\n{self.output()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus never became ready:\n{self.output()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (an error fails the test with Prometheus's words)."""
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def exemplars(self, expr: str, start_s: float, end_s: float) -> list[dict[str, Any]]:
        """The exemplars (with their labels, such as `trace_id`) of the series `expr` selects."""
        params = {"query": expr, "start": str(start_s), "end": str(end_s)}
        body = self.http.get("/api/v1/query_exemplars", params=params).json()
        assert body.get("status") == "success", f"{expr}: {body}"
        found: list[dict[str, Any]] = [e for s in body["data"] for e in s["exemplars"]]
        return found

    def label_values(self, label: str, metric: str) -> list[str]:
        """What Grafana's `label_values(metric, label)` lists."""
        response = self.http.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
        values: list[str] = response.json()["data"]
        return values

    def alerts(self) -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/alerts").json()
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(rule name, health, last error) for every loaded rule."""
        groups = self.http.get("/api/v1/rules").json()["data"]["groups"]
        return [
            (rule["name"], rule["health"], rule.get("lastError", ""))
            for group in groups
            for rule in group["rules"]
        ]

    def wait_until(self, what: str, check: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"never {what}:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
