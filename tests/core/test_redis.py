"""Connections: REDIS_PASSWORD over the URL's, Redis Sentinel, and commands packed in C,
against real servers."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.exceptions import DataError

from conveyor_core.local.redis_server import free_port
from conveyor_core.redis import PackedInC, create_redis
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


# Every kind of value redis-py sends: text (not ASCII too), bytes, ints beyond
# 64 bits, floats as repr writes them, memoryviews, and a subcommand in the name.
PACKED_COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),
    (b"EVALSHA", "abc", 1, "q", "é ü", b"\x00\xff", 0, -5, 2**70, "", b""),
    ("ZADD", "z", 1.5, "m", 0.1, "n", 1e20, "o", -0.0, "p"),
    ("SET", "k", memoryview(b"abc")),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT LIST",),
]


@pytest.mark.parametrize("command", PACKED_COMMANDS)
async def test_commands_are_packed_in_c_to_the_bytes_redis_py_writes(
    command: tuple[Any, ...], redis_url: str
) -> None:
    from redis.asyncio.connection import Connection

    client = create_redis(RedisSettings(url=redis_url))
    try:
        connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        assert isinstance(connection, PackedInC)
        ours = b"".join(connection.pack_command(*command))
        assert ours == b"".join(Connection().pack_command(*command))
    finally:
        await client.aclose()


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
async def test_a_value_redis_py_refuses_is_refused_as_it_refuses_it(
    value: object, redis_url: str
) -> None:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        with pytest.raises(DataError):
            await client.set("conveyor:packing-test", value)  # type: ignore[arg-type]
        # The connection is fine afterwards: nothing half-written reached Redis.
        await client.set("conveyor:packing-test", "ok")
        assert await client.get("conveyor:packing-test") == b"ok"
    finally:
        await client.delete("conveyor:packing-test")
        await client.aclose()


async def test_a_pipeline_and_a_script_go_through_packed_connections(redis_url: str) -> None:
    client = create_redis(RedisSettings(url=redis_url))
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("conveyor:packing-a", "é")
            pipe.incrby("conveyor:packing-b", 2**40)
            pipe.get("conveyor:packing-a")
            assert await pipe.execute() == [True, 2**40, "é".encode()]
        script = client.register_script("return {ARGV[1], ARGV[2], ARGV[3]}")
        assert await script(args=["ü", 1.25, b"\x00"]) == ["ü".encode(), b"1.25", b"\x00"]
    finally:
        await client.delete("conveyor:packing-a", "conveyor:packing-b")
        await client.aclose()
