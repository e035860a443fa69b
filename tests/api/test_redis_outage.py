"""Redis stops while the api runs: quick 503s with Retry-After, then recovery by itself.

The client's timeout is the bound: a request that hangs fails the test.
"""

from collections.abc import AsyncIterator

import httpx
import pytest

from conveyor_core.local.redis_server import RedisProcess
from tests.api.conftest import make_app, serve

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
