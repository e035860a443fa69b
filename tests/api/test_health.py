"""Liveness and readiness probes with Redis up; outages are in test_redis_outage."""

import time

import httpx

from tests.api.conftest import make_app, serve


async def test_healthz_says_the_process_is_alive(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_when_redis_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["redis"]["maxmemory_policy"] == "noeviction"


async def test_the_api_stops_promptly_right_after_it_starts(redis_url: str) -> None:
    """The memory check's task must end at shutdown even when the stop lands mid-check."""
    for _ in range(5):
        app = make_app(redis_url)
        async with serve(app) as client:
            assert (await client.get("/ui/no-such-file.js")).status_code == 404
            stopping_s = time.monotonic()
        # A check that outlives the stop costs the whole wait for it (the socket
        # timeout and a second: 3 s here); a prompt stop takes milliseconds.
        assert time.monotonic() - stopping_s < app.state.settings.redis.socket_timeout_s + 1
