"""Liveness and readiness probes with Redis up; outages are in test_redis_outage."""

import httpx


async def test_healthz_says_the_process_is_alive(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ok_when_redis_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["redis"]["maxmemory_policy"] == "noeviction"
