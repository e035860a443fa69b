"""`GET /` and `POST /task`: the tutorial's endpoints, against a real Redis."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Scope
from conveyor_seed import CREATE_TASK
from tests.api.conftest import make_app, serve
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer


async def test_index_greets(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.json() == {"message": "Hello, world!"}


async def test_post_task_enqueues_count_create_task_jobs(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    response = await client.post("/task", json={"count": 3})

    assert response.status_code == 201
    body = response.json()
    assert body["queued"] == 3
    assert len(set(body["job_ids"])) == 3
    queued = await redis.queued_jobs(queue_name=CREATE_TASK.queue)
    assert {job.job_id for job in queued} == set(body["job_ids"])
    for job in queued:
        assert job.function == "create_task"
        assert 0.01 <= job.kwargs["sleep_s"] <= 0.05  # the configured range


@pytest.mark.parametrize("count", [1, 100])
async def test_post_task_accepts_the_bounds(
    client: httpx.AsyncClient, redis: ArqRedis, count: int
) -> None:
    response = await client.post("/task", json={"count": count})
    assert response.status_code == 201
    assert await redis.zcard(CREATE_TASK.queue) == count


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"json": {"count": 0}}, "count"),
        ({"json": {"count": 101}}, "count"),
        ({"json": {"count": -1}}, "count"),
        ({"json": {"count": "abc"}}, "count"),
        ({"json": {"count": 2.5}}, "count"),
        ({"json": {}}, "count"),
        ({"json": [1]}, "body"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, "body"),
        ({}, "body"),
    ],
    ids=["zero", "101", "negative", "string", "fraction", "missing", "array", "not-json", "empty"],
)
async def test_bad_task_input_is_a_422_problem_naming_the_field(
    client: httpx.AsyncClient, redis: ArqRedis, request_kwargs: dict[str, Any], field: str
) -> None:
    response = await client.post("/task", **request_kwargs)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["instance"] == "/task"
    assert field in {error["field"] for error in problem["errors"]}
    assert field in problem["detail"]
    assert await redis.zcard(CREATE_TASK.queue) == 0  # nothing enqueued


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Not Found"


async def test_openapi_docs_describe_the_task_endpoint(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    schema = (await client.get("/openapi.json")).json()
    task_body = schema["components"]["schemas"]["TaskCreate"]["properties"]["count"]
    assert (task_body["minimum"], task_body["maximum"]) == (1, 100)


@pytest.fixture
async def paced(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A key with a burst of 60 requests that hardly refills, and a key that
    may submit only `flaky` jobs, and one with a quota of 3 outstanding jobs."""
    monkeypatch.setenv("CONVEYOR_API_TASK_SLEEP_MAX_S", "0.05")
    monkeypatch.setenv("CONVEYOR_API_TASK_SLEEP_MIN_S", "0.01")
    keys = [
        api_key(TEST_KEY_NAME, TEST_KEY),
        api_key("flaky-only", "cvk_flaky_only", [Scope.JOBS_SUBMIT], job_types={"flaky"}),
        api_key("three", "cvk_three", [Scope.JOBS_SUBMIT], max_outstanding_jobs=3),
    ]
    app = make_app(redis_url, keys=keys, rate_limit_per_s=0.001, rate_limit_burst=60)
    async with serve(app) as c:
        yield c


async def test_post_task_spends_one_rate_token_per_job(
    paced: httpx.AsyncClient, redis: ArqRedis
) -> None:
    assert (await paced.post("/task", json={"count": 50})).status_code == 201
    # 10 of the 60 are left: 50 more are refused whole, 10 pass, then none.
    refused = await paced.post("/task", json={"count": 50})
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await paced.post("/task", json={"count": 10})).status_code == 201
    assert (await paced.post("/task", json={"count": 1})).status_code == 429
    assert await redis.zcard(CREATE_TASK.queue) == 60
    # More than a burst at once could never pass: a 422 naming the field.
    over = await paced.post("/task", json={"count": 61})
    assert over.status_code == 422
    assert over.json()["errors"][0]["field"] == "count"


async def test_post_task_keeps_the_keys_policy(paced: httpx.AsyncClient, redis: ArqRedis) -> None:
    refused = await paced.post("/task", json={"count": 1}, headers=bearer("cvk_flaky_only"))
    assert refused.status_code == 403
    assert refused.json()["field"] == "job_type"

    over = await paced.post("/task", json={"count": 5}, headers=bearer("cvk_three"))
    assert over.status_code == 429
    problem = over.json()
    assert problem["field"] == "max_outstanding_jobs"
    assert problem["queued"] == 3  # what was queued before the quota refused stays queued
    assert await redis.zcard(CREATE_TASK.queue) == 3
    queued = await redis.queued_jobs(queue_name=CREATE_TASK.queue)
    assert {job.kwargs["__conveyor__"]["submitted_by"] for job in queued} == {"three"}
