"""Connections: REDIS_PASSWORD over the URL's, and Redis Sentinel, against real servers."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from conveyor_core.local.redis_server import free_port
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from tests.charts.pods import image_binary

PASSWORD = "s3cret-for-tests"


def _wait_for_ping(port: int, password: str | None = None) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis_sync.Redis(port=port, password=password, socket_timeout=0.5) as client:
                client.ping()
                return
        except redis_sync.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def master(tmp_path: Path) -> Iterator[int]:
    """A password-protected server, as the chart's StatefulSet runs it."""
    port = free_port()
    process = subprocess.Popen(
        [
            image_binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for_ping(port, PASSWORD)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def sentinel(master: int, tmp_path: Path) -> Iterator[int]:
    """A real Sentinel watching `master` under the name "conveyor"."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor conveyor 127.0.0.1 {master} 1\n"
        f"sentinel auth-pass conveyor {PASSWORD}\n"
    )
    process = subprocess.Popen(
        [image_binary("redis-server"), str(config), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        _wait_for_ping(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_redis_password_wins_over_the_urls(master: int) -> None:
    url = f"redis://:wrong-password@127.0.0.1:{master}/2"
    client = create_redis(RedisSettings(url=url, password=PASSWORD))
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    without = create_redis(RedisSettings(url=url))
    try:
        with pytest.raises(redis_sync.AuthenticationError):
            await without.ping()
    finally:
        await without.aclose()


async def test_sentinel_names_the_master(master: int, sentinel: int) -> None:
    settings = RedisSettings(
        url="redis://ignored-host:1/3",
        password=PASSWORD,
        sentinel_hosts=f"127.0.0.1:{sentinel}",
        sentinel_master="conveyor",
    )
    client = create_redis(settings)
    try:
        await client.set("conveyor:sentinel-test", "ok")
    finally:
        await client.aclose()
        # The sentinels' own connections belong to the pool's manager, not the client.
        for sentinel_client in client.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel_client.aclose()
    with redis_sync.Redis(port=master, password=PASSWORD, db=3) as direct:
        assert direct.get("conveyor:sentinel-test") == b"ok"


def test_sentinel_hosts_must_be_host_and_port() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        _ = RedisSettings(sentinel_hosts="sentinel-0").sentinels
    assert RedisSettings(sentinel_hosts="a:26379, b:26380").sentinels == [
        ("a", 26379),
        ("b", 26380),
    ]
