"""`GET /` and `POST /task`: the tutorial's endpoints, against a real Redis."""

from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_seed import CREATE_TASK


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
