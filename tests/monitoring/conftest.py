"""Fixtures for the monitoring tests: the services as real processes, and a real
Prometheus scraping them with the repo's rules."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, running
from tests.support.prometheus import PrometheusProcess


@pytest.fixture
def stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api and one worker, started."""
    with running(Stack(redis_url, log_dir), workers=1) as stack:
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
