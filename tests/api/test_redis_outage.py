"""Redis stops while the api runs: quick 503s with Retry-After, then recovery by itself.

The client's timeout is the bound: a request that hangs fails the test.
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from conveyor_core.local.redis_server import RedisProcess
from tests.api.conftest import make_app, serve
from tests.support.auth import AUTH_HEADERS
from tests.support.processes import api_process, stop_all

QUICK_S = 1.0


@pytest.fixture
async def outage_client(own_redis: RedisProcess) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serve(make_app(own_redis.url)):
        client.timeout = httpx.Timeout(QUICK_S)
        yield client


def assert_redis_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["type"] == "urn:conveyor:problem:redis-unavailable"


async def test_redis_outage_gives_503_then_recovers_without_restart(
    outage_client: httpx.AsyncClient, own_redis: RedisProcess
) -> None:
    assert (await outage_client.post("/task", json={"count": 1})).status_code == 201

    own_redis.stop()
    assert_redis_unavailable(await outage_client.get("/readyz"))
    assert_redis_unavailable(await outage_client.post("/task", json={"count": 2}))
    assert (await outage_client.get("/healthz")).status_code == 200  # alive all the same

    own_redis.start()
    assert (await outage_client.get("/readyz")).status_code == 200
    response = await outage_client.post("/task", json={"count": 2})
    assert response.status_code == 201
    assert response.json()["queued"] == 2


async def test_api_starts_while_redis_is_down(own_redis: RedisProcess) -> None:
    own_redis.stop()
    async for client in serve(make_app(own_redis.url)):
        client.timeout = httpx.Timeout(QUICK_S)
        assert_redis_unavailable(await client.get("/readyz"))
        own_redis.start()
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/jobs/create_task", {"sleep_s": 1}),
        ("GET", "/v1/jobs/abc", None),
        ("GET", "/v1/jobs", None),
        ("DELETE", "/v1/jobs/abc", None),
        ("POST", "/v1/jobs/abc/retry", None),
        ("GET", "/v1/jobs/abc/events", None),
        ("GET", "/v1/queues", None),
        ("GET", "/v1/events?job_id=abc", None),
    ],
)
async def test_every_v1_endpoint_answers_503_while_redis_is_down(
    outage_client: httpx.AsyncClient,
    own_redis: RedisProcess,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    own_redis.stop()
    assert_redis_unavailable(await outage_client.request(method, path, json=body))


@pytest.mark.e2e
def test_an_sse_stream_ends_with_an_error_event_when_redis_goes(
    own_redis: RedisProcess, log_dir: Path
) -> None:
    # A real server: the in-process transport would buffer the whole stream.
    api = api_process(own_redis.url, log_dir).start()
    try:
        job = httpx.post(
            f"{api.base_url}/v1/jobs/create_task", json={"sleep_s": 1}, headers=AUTH_HEADERS
        ).json()
        lines: list[str] = []
        url = f"{api.base_url}/v1/jobs/{job['id']}/events"
        with httpx.stream("GET", url, timeout=10, headers=AUTH_HEADERS) as stream:
            for line in stream.iter_lines():
                lines.append(line)
                if line.startswith("data:") and own_redis_running(own_redis):
                    own_redis.stop()  # after the first event
        assert lines[:2] == ["event: job", lines[1]]
        assert json.loads(lines[1].removeprefix("data:"))["state"] == "queued"
        assert "event: error" in lines
        error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data:"))
        assert error["status"] == 503
    finally:
        stop_all(api)


def own_redis_running(server: RedisProcess) -> bool:
    try:
        with redis_sync.Redis.from_url(server.url, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except redis_sync.ConnectionError:
        return False
