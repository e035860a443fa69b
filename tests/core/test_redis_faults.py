"""Redis faults are classified once (conveyor_core.redis), against real servers in each state."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY
from redis.exceptions import BusyLoadingError, ResponseError

import conveyor_core.redis
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.redis import (
    REDIS_FAULT_ERRORS,
    RedisFault,
    create_redis,
    describe_redis_error,
    record_redis_fault,
    redis_fault,
)
from conveyor_core.settings import RedisSettings
from tests.support.redis_faults import busy, configured, frozen, full, read_only_replica


@pytest.fixture
async def own_client(own_redis: RedisProcess) -> AsyncIterator[ArqRedis]:
    client = create_redis(RedisSettings(url=own_redis.url, socket_timeout_s=0.3))
    yield client
    await client.aclose()


async def fault_of_a_write(client: ArqRedis) -> RedisFault | None:
    with pytest.raises(REDIS_FAULT_ERRORS) as caught:
        await client.set("conveyor:test", "x")
    return redis_fault(caught.value)


async def test_a_full_redis_is_out_of_memory_and_reads_still_work(
    own_client: ArqRedis, own_redis: RedisProcess
) -> None:
    with full(own_redis.url):
        assert await fault_of_a_write(own_client) == RedisFault.OUT_OF_MEMORY
        # Inside a script too, as every job transition is.
        with pytest.raises(REDIS_FAULT_ERRORS) as caught:
            await own_client.eval(  # type: ignore[misc]
                "return redis.call('set', KEYS[1], 'x')", 1, "conveyor:test"
            )
        assert redis_fault(caught.value) == RedisFault.OUT_OF_MEMORY
        assert await own_client.get("conveyor:test") is None


async def test_a_replica_is_read_only(own_client: ArqRedis, own_redis: RedisProcess) -> None:
    with read_only_replica(own_redis.url):
        assert await fault_of_a_write(own_client) == RedisFault.READ_ONLY


async def test_a_stopped_redis_is_unreachable(
    own_client: ArqRedis, own_redis: RedisProcess
) -> None:
    own_redis.stop()
    assert await fault_of_a_write(own_client) == RedisFault.UNREACHABLE


async def test_a_server_that_is_not_redis_at_its_address_is_unreachable(
    own_redis: RedisProcess,
) -> None:
    """Another server took the port (here an HTTP one, as it once did in a test
    run while this Redis was stopped): a fault, never a crash of its caller."""

    async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    own_redis.stop()
    server = await asyncio.start_server(answer_http, "127.0.0.1", urlsplit(own_redis.url).port)
    client = create_redis(RedisSettings(url=own_redis.url, socket_timeout_s=1))
    try:
        assert await fault_of_a_write(client) == RedisFault.UNREACHABLE
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_frozen_redis_times_out_once_without_a_retry(own_redis: RedisProcess) -> None:
    # A whole second per wait: a retried timeout costs two, and a busy
    # machine's slack stays far short of the second one.
    timeout_s = 1.0
    client = create_redis(RedisSettings(url=own_redis.url, socket_timeout_s=timeout_s))
    try:
        await client.ping()
        with frozen(own_redis.url):
            started = time.monotonic()
            assert await fault_of_a_write(client) == RedisFault.TIMED_OUT
            elapsed_s = time.monotonic() - started
        assert elapsed_s < timeout_s * 1.9, "a timeout was retried"
        await client.set("conveyor:test", "x")  # and recovers
    finally:
        await client.aclose()


def test_loading_and_reply_errors_are_named_by_their_prefix() -> None:
    assert redis_fault(BusyLoadingError("Redis is loading the dataset in memory")) == (
        RedisFault.LOADING
    )
    assert redis_fault(ResponseError("LOADING Redis is loading")) == RedisFault.LOADING
    assert redis_fault(ResponseError("OOM command not allowed")) == RedisFault.OUT_OF_MEMORY
    assert redis_fault(ResponseError("READONLY You can't write")) == RedisFault.READ_ONLY
    demoted = "UNBLOCKED force unblock from blocking operation, instance state changed"
    assert redis_fault(ResponseError(demoted)) == RedisFault.READ_ONLY
    assert redis_fault(ResponseError("WRONGTYPE Operation against a key")) is None
    assert redis_fault(ValueError("a bug")) is None


def test_each_fault_is_counted_by_kind() -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value("conveyor_redis_errors_total", {"kind": "read_only"})
        assert value is not None, "each kind is exported from the start"
        return value

    before = count()
    record_redis_fault(RedisFault.READ_ONLY, ResponseError("READONLY"), "a test")
    assert count() == before + 1


def test_the_docs_state_the_default_hang_bound() -> None:
    docs = Path(__file__).parents[2] / "docs"
    default_s = RedisSettings().socket_timeout_s
    assert default_s <= 1.5
    settings = (docs / "reference" / "settings.md").read_text()
    assert f"| `REDIS_SOCKET_TIMEOUT_S` | `float` | `{default_s}` |" in settings
    design = (docs / "explanation" / "design.md").read_text()
    assert f"`REDIS_SOCKET_TIMEOUT_S` ({default_s:g} s" in design


async def test_a_refused_pipeline_is_logged_small_without_its_arguments(
    own_client: ArqRedis,
    own_redis: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py puts each failed pipeline command with its arguments in the
    # error's message: a refused upload's whole document.
    monkeypatch.setattr(conveyor_core.redis, "FAULT_LOG_INTERVAL_S", 0.0)
    document = b"ada@example.com wrote this. " * 200_000  # ~5.6 MB
    pipe = own_client.pipeline(transaction=True)
    pipe.set("conveyor:test:doc", document)
    pipe.expire("conveyor:test:doc", 60)
    with full(own_redis.url), pytest.raises(REDIS_FAULT_ERRORS) as caught:
        await pipe.execute()
    await pipe.reset()  # type: ignore[no-untyped-call]
    assert len(str(caught.value)) > len(document)  # what redis-py made of it
    fault = redis_fault(caught.value)
    assert fault == RedisFault.OUT_OF_MEMORY

    described = describe_redis_error(caught.value)
    assert described == (
        "OutOfMemoryError: command not allowed when used memory > 'maxmemory'. "
        "(pipeline command #1, SET)"
    )
    record_redis_fault(fault, caught.value, "POST /v1/documents")
    (line,) = [r.getMessage() for r in caplog.records if "redis fault" in r.getMessage()]
    assert line == f"redis fault out_of_memory in POST /v1/documents: {described}"


def test_a_long_error_is_described_bounded_and_scrubbed() -> None:
    error = ResponseError("ERR bad value for ada@example.com " + "v" * 10_000)
    described = describe_redis_error(error)
    assert described.startswith("ResponseError: ERR bad value for *** vvv")
    assert len(described) < 400


async def test_a_script_past_the_busy_threshold_is_a_busy_fault(
    own_client: ArqRedis, own_redis: RedisProcess
) -> None:
    with configured(own_redis.url, busy_reply_threshold=100), busy(own_redis.url, 1.5):
        with pytest.raises(REDIS_FAULT_ERRORS) as single:
            await own_client.set("conveyor:test", "x")
        assert redis_fault(single.value) == RedisFault.BUSY
        pipe = own_client.pipeline(transaction=True)
        pipe.set("conveyor:test", "x")
        pipe.expire("conveyor:test", 60)
        with pytest.raises(REDIS_FAULT_ERRORS) as piped:
            await pipe.execute()
        await pipe.reset()  # type: ignore[no-untyped-call]
        assert redis_fault(piped.value) == RedisFault.BUSY
    assert await own_client.set("conveyor:test", "x")


def test_busy_is_told_from_busykey_and_busygroup() -> None:
    assert redis_fault(ResponseError("BUSY Redis is busy running a script.")) == RedisFault.BUSY
    in_a_pipeline = "Command # 1 (SET k v) of pipeline caused error: ('BUSY Redis is busy',)"
    assert redis_fault(ResponseError(in_a_pipeline)) == RedisFault.BUSY
    assert redis_fault(ResponseError("BUSYKEY Target key name already exists.")) is None
    assert redis_fault(ResponseError("BUSYGROUP Consumer Group name already exists")) is None
