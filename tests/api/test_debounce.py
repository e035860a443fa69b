"""Debounce over HTTP against a real Redis: the query's key and window, the
answer's `Conveyor-Debounce` header, and a 422 naming the field at fault."""

from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

QUEUE = "arq:queue"


async def submit(client: httpx.AsyncClient, work_s: float, **params: Any) -> httpx.Response:
    return await client.post("/v1/jobs/effect", json={"work_s": work_s}, params=params)


async def test_keep_first_answers_with_the_first_job(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    params = {"debounce_key": "order-7", "debounce_window_s": 30}
    first = await submit(client, 1, **params)
    again = await submit(client, 2, **params)

    assert first.status_code == 201
    assert "conveyor-debounce" not in first.headers
    assert again.status_code == 200
    assert again.headers["conveyor-debounce"] == "kept"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["payload"] == {"work_s": 1.0}
    assert await redis.zcard(QUEUE) == 1


async def test_replace_answers_with_the_job_and_its_new_payload(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    params = {"debounce_key": "k", "debounce_window_s": 30, "debounce_mode": "replace"}
    first = await submit(client, 1, **params)
    again = await submit(client, 2, **params, debounce_delay="true")

    assert again.status_code == 200
    assert again.headers["conveyor-debounce"] == "replaced"
    assert (again.json()["id"], again.json()["payload"]) == (first.json()["id"], {"work_s": 2.0})
    assert again.json()["state"] == "deferred"  # its start pushed back by the window
    assert await redis.zcard(QUEUE) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"debounce_key": "k"}, "debounce_window_s"),
        ({"debounce_window_s": 5}, "debounce_key"),
        ({"debounce_key": "k", "debounce_window_s": 0}, "debounce_window_s"),
        ({"debounce_key": "k", "debounce_window_s": 5, "debounce_mode": "x"}, "debounce_mode"),
        ({"debounce_key": "k", "debounce_window_s": 5, "debounce_delay": "true"}, "debounce_delay"),
    ],
)
async def test_a_debounce_that_cannot_be_is_a_422_naming_its_field(
    client: httpx.AsyncClient, redis: ArqRedis, params: dict[str, Any], field: str
) -> None:
    response = await submit(client, 1, **params)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await redis.zcard(QUEUE) == 0
