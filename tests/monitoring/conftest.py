"""Fixtures for the monitoring tests: the services as real processes, and a real
Prometheus scraping them with the repo's rules."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, running
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, keys_env
from tests.support.prometheus import PrometheusProcess

# A key with a quota of stored bytes, so the per-key quota series appear.
QUOTA_KEY = "cvk_monitoring_quota"


@pytest.fixture
def stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api (the test key, and one with a quota of stored bytes) and one worker, started."""
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY),
        api_key("quota", QUOTA_KEY, max_stored_bytes=10 * 1024 * 1024),
    )
    with running(Stack(redis_url, log_dir, CONVEYOR_API_KEYS=keys), workers=1) as stack:
        yield stack


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[PrometheusProcess]:
    """Prometheus scraping the api and the worker every second."""
    hosts = {
        "conveyor-api": [stack.api.base_url.removeprefix("http://")],
        "conveyor-worker": [w.base_url.removeprefix("http://") for w in stack.workers],
    }
    server = PrometheusProcess(tmp_path, hosts)
    try:
        yield server.start()
    finally:
        (stack.log_dir / "prometheus.log").write_text(server.output())
        server.stop()
