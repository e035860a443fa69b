"""The api's one middleware: the busiest routes answered from it (fast routes),
and every other request left to its FastAPI route, which answers as before."""

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.logging import bound
from tests.api.conftest import make_app, serve
from tests.support.auth import TEST_KEY_NAME


class RouteCalls:
    """Counts the requests that reached FastAPI's handling of one route."""

    def __init__(self, app: FastAPI, method: str, path: str) -> None:
        self.count = 0
        route = next(
            r
            for r in app.routes
            if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ())
        )
        handle = route.app

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            self.count += 1
            await handle(scope, receive, send)

        route.app = counted


@pytest.fixture
def app(redis_url: str) -> FastAPI:
    return make_app(redis_url)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as c:
        yield c


@pytest.fixture
def request_lines() -> Iterator[list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # The caller's key name is bound to the request's log lines.
            lines.append({**getattr(record, "fields", {}), "api_key": bound("api_key")})

    handler = Collect()
    logger = logging.getLogger("conveyor.requests")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


async def test_a_valid_submit_and_read_skip_fastapi(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    submits = RouteCalls(app, "POST", "/v1/jobs/create_task")
    reads = RouteCalls(app, "GET", "/v1/jobs/{job_id}")
    created = await client.post("/v1/jobs/create_task", json={"sleep_s": 0})
    assert created.status_code == 201
    assert created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    read = await client.get(created.headers["location"])
    assert read.status_code == 200
    assert read.json()["id"] == created.json()["id"]
    assert (submits.count, reads.count) == (0, 0)


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        ({"json": {"sleep_s": 0}, "params": {"priority": 1}}, 201),  # a query
        ({"json": {"sleep_s": "soon"}}, 422),  # the payload model refuses it
        ({"content": b"", "headers": {"content-type": "application/json"}}, 422),
        ({"content": b"sleep_s=0", "headers": {"content-type": "text/plain"}}, 422),
        ({"json": {"sleep_s": 0}, "headers": {"Idempotency-Key": "x" * 256}}, 422),
    ],
)
async def test_other_submits_reach_the_documented_route(
    app: FastAPI, client: httpx.AsyncClient, request_args: dict[str, Any], status: int
) -> None:
    submits = RouteCalls(app, "POST", "/v1/jobs/create_task")
    response = await client.post("/v1/jobs/create_task", **request_args)
    assert response.status_code == status, response.text
    assert submits.count == 1
    if status == 422:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"]


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic dGVzdHM6eA=="])
async def test_a_submit_without_a_valid_key_never_reaches_its_route(
    app: FastAPI, client: httpx.AsyncClient, authorization: str | None
) -> None:
    submits = RouteCalls(app, "POST", "/v1/jobs/create_task")
    client.headers.pop("Authorization")
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.post("/v1/jobs/create_task", json={"sleep_s": 0}, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith('Bearer realm="conveyor"')
    assert response.headers["connection"] == "close"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert submits.count == 0


async def test_a_bad_job_id_reaches_the_documented_route(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    reads = RouteCalls(app, "GET", "/v1/jobs/{job_id}")
    response = await client.get("/v1/jobs/not%20an%20id")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "job_id"
    assert reads.count == 1


async def test_fast_answers_keep_every_promise(
    client: httpx.AsyncClient, request_lines: list[dict[str, Any]]
) -> None:
    response = await client.post(
        "/v1/jobs/create_task", json={"sleep_s": 0}, headers={"X-Request-ID": "fast-1"}
    )
    assert response.status_code == 201
    assert response.headers["x-request-id"] == "fast-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["request_id"] == "fast-1"
    missing = await client.get("/v1/jobs/no-such-job")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["x-content-type-options"] == "nosniff"
    assert [(line["route"], line["status"], line["api_key"]) for line in request_lines] == [
        ("/v1/jobs/create_task", 201, TEST_KEY_NAME),
        ("/v1/jobs/{job_id}", 404, TEST_KEY_NAME),
    ]


async def test_a_redis_fault_on_a_fast_route_is_answered_as_on_any_route(
    own_redis: RedisProcess, request_lines: list[dict[str, Any]]
) -> None:
    async with serve(make_app(own_redis.url)) as client:
        client.timeout = httpx.Timeout(1.0)
        job = (await client.post("/v1/jobs/create_task", json={"sleep_s": 0})).json()
        own_redis.stop()
        submit = await client.post(
            "/v1/jobs/create_task", json={"sleep_s": 0}, headers={"X-Request-ID": "down-1"}
        )
        read = await client.get(f"/v1/jobs/{job['id']}")
    for response in (submit, read):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["type"] == "urn:conveyor:problem:redis-unavailable"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert submit.headers["x-request-id"] == "down-1"
    assert [line["status"] for line in request_lines] == [201, 503, 503]
