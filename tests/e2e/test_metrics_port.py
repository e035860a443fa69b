"""`CONVEYOR_API_METRICS_PORT`: /metrics there and only there; the api on its own port."""

from pathlib import Path

import httpx
import pytest

from conveyor_core.local.redis_server import free_port
from tests.support.auth import AUTH_HEADERS
from tests.support.processes import api_process, stop_all

pytestmark = pytest.mark.e2e


def test_metrics_move_to_their_own_port(redis_url: str, log_dir: Path) -> None:
    metrics_port = free_port()
    api = api_process(redis_url, log_dir, CONVEYOR_API_METRICS_PORT=str(metrics_port))
    try:
        api.start()
        metrics = f"http://127.0.0.1:{metrics_port}"
        assert httpx.get(f"{api.base_url}/v1/jobs", headers=AUTH_HEADERS).status_code == 200
        assert httpx.get(f"{api.base_url}/metrics").status_code == 404
        scraped = httpx.get(f"{metrics}/metrics")
        assert scraped.status_code == 200
        assert "conveyor_http_requests_total" in scraped.text
        assert httpx.get(f"{metrics}/v1/jobs", headers=AUTH_HEADERS).status_code == 404
        assert httpx.get(f"{metrics}/readyz").status_code == 404
    finally:
        stop_all(api)
