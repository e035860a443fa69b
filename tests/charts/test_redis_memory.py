"""The chart's own Redis never evicts and fills up before its container's memory
limit; an external Redis that evicts needs an explicit opt-in."""

import re
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from conveyor_core.local.redis_server import free_port
from tests.charts.chart import containers, env_of, render
from tests.charts.pods import image_binary

pytestmark = pytest.mark.xdist_group("charts")

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}
QUANTITIES = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 10**6, "G": 10**9}


def redis_bytes(value: str) -> int:
    """Redis' memory notation: `384mb`, `1gb`, `100000`."""
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", value).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit.lower()]


def kubernetes_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", value).groups()  # type: ignore[union-attr]
    return int(number) * QUANTITIES.get(unit, 1)


def redis_container() -> dict[str, object]:
    (container,) = containers(render().one("StatefulSet", "conveyor-redis"))
    return container


def option(args: list[str], name: str) -> str:
    return args[len(args) - 1 - args[::-1].index(name) + 1]  # the last one wins


def test_the_charts_redis_never_evicts_and_caps_memory_below_its_limit() -> None:
    container = redis_container()
    args: list[str] = container["args"]  # type: ignore[assignment]
    assert option(args, "--maxmemory-policy") == "noeviction"
    maxmemory = redis_bytes(option(args, "--maxmemory"))
    limit = kubernetes_bytes(container["resources"]["limits"]["memory"])  # type: ignore[index]
    # Room for the AOF rewrite, client buffers and the allocator's overhead.
    assert maxmemory <= 0.8 * limit, (maxmemory, limit)


def test_maxmemory_is_a_checked_value() -> None:
    args = redis_container()["args"]
    assert "384mb" in args  # type: ignore[operator]
    custom = render({"redis": {"maxmemory": "1gb", "resources": {"limits": {"memory": "2Gi"}}}})
    (container,) = containers(custom.one("StatefulSet", "conveyor-redis"))
    assert option(container["args"], "--maxmemory") == "1gb"
    with pytest.raises(Exception, match="maxmemory"):
        render({"redis": {"maxmemory": "lots"}})


def test_the_rendered_arguments_start_a_redis_that_never_evicts(tmp_path: Path) -> None:
    """The real server, given the container's own arguments (with a local port and dir)."""
    port = free_port()
    local = {"$(REDIS_PASSWORD)": "pw", "/data": str(tmp_path), "6379": str(port)}
    args = [local.get(a, a) for a in redis_container()["args"]]  # type: ignore[attr-defined]
    assert str(port) in args
    server = subprocess.Popen(
        [image_binary("redis-server"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        with redis_sync.Redis(port=port, password="pw", socket_timeout=1) as client:
            while True:
                try:
                    memory = client.info("memory")
                    break
                except redis_sync.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        assert memory["maxmemory_policy"] == "noeviction"
        assert memory["maxmemory"] == 384 * 1024**2
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_an_evicting_external_redis_needs_the_opt_in_in_both_services() -> None:
    for allow, expected in ((False, None), (True, "true")):
        external = {"url": "redis://cache:6379/0", "allowEviction": allow}
        rendered = render({"redis": {"enabled": False}, "externalRedis": external})
        for name in ("conveyor-api", "conveyor-worker-default"):
            env = env_of(next(containers(rendered.one("Deployment", name))))
            assert env.get("REDIS_ALLOW_EVICTION", {}).get("value") == expected
