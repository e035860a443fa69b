"""`/v1/jobs` against a real Redis, without a worker: submit, read, list, cancel, errors."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix

from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.checkpoint import new_checkpoint
from conveyor_core.enqueue import enqueue
from conveyor_core.store import JobStore, encode_cursor
from conveyor_seed import CREATE_TASK
from tests.api.conftest import make_app, serve
from tests.support import jobs


async def submit(
    client: httpx.AsyncClient, job_type: str = "create_task", payload: Any = None, **kwargs: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/jobs/{job_type}", json={"sleep_s": 0.1} if payload is None else payload, **kwargs
    )


async def conveyor_keys(redis: ArqRedis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match="conveyor:job:*")]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


async def test_a_job_id_names_its_queue_and_reads_raw_or_percent_encoded(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    """A job id starts with its queue's hash tag (`{queue}`, keys.job_id_for), so
    every key of the job shares the queue's slot on a cluster; a path takes the
    braces as they are or percent-encoded, and an id with a broken tag is a 422."""
    job = (await submit(client)).json()
    assert job["id"].startswith(f"{{{CREATE_TASK.queue}}}")
    assert await redis.zscore(CREATE_TASK.queue, job["id"]) is not None
    encoded = quote(job["id"], safe="")
    assert "%7B" in encoded
    for path in (f"/v1/jobs/{encoded}", f"/v1/jobs/{job['id']}"):
        read = await client.get(path)
        assert read.status_code == 200, path
        assert read.json()["id"] == job["id"]
    unknown = await client.get(f"/v1/jobs/{encoded}x")
    assert unknown.status_code == 404
    assert_problem(await client.get("/v1/jobs/%7Bunclosed"), 422)
    # A shard's tag (keys.shard_name) is an id's tag too; only a number follows its `~`.
    on_a_shard = keys.job_id_for(keys.shard_name(CREATE_TASK.queue, 2))
    assert (await client.get(f"/v1/jobs/{quote(on_a_shard, safe='')}")).status_code == 404
    assert_problem(await client.get("/v1/jobs/%7Barq:queue~x%7Dabc"), 422)


async def test_submit_answers_201_with_the_job_and_its_location(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    response = await submit(client)

    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["job_type"] == "create_task"
    assert job["queue"] == CREATE_TASK.queue
    assert job["payload"] == {"sleep_s": 0.1}
    assert job["tries"] == 0
    assert job["max_tries"] == CREATE_TASK.retry.max_tries
    assert job["progress"] == {"percent": 0, "message": ""}
    # arq's own layout holds it too, so a bare arq worker could run it.
    assert await redis.zscore(CREATE_TASK.queue, job["id"]) is not None
    assert await redis.exists(job_key_prefix + job["id"])

    read = await client.get(response.headers["location"])
    assert read.status_code == 200
    assert read.json() == job


async def test_unknown_job_type_is_a_404_problem_and_enqueues_nothing(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    problem = assert_problem(await submit(client, "no_such_type"), 404)
    assert "no_such_type" in problem["detail"]
    assert "create_task" in problem["detail"]  # names the known ones
    assert await conveyor_keys(redis) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"sleep_s": -1}, "sleep_s"), ({}, "sleep_s"), ({"sleep_s": "long"}, "sleep_s")],
)
async def test_invalid_payload_is_a_422_naming_the_field(
    client: httpx.AsyncClient, redis: ArqRedis, payload: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await submit(client, payload=payload), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert await redis.zcard(CREATE_TASK.queue) == 0
    assert await conveyor_keys(redis) == []


async def test_body_over_the_limit_is_a_413_problem(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    big = {"sleep_s": 1, "padding": "x" * 2_000_000}
    assert_problem(await submit(client, payload=big), 413)
    assert await conveyor_keys(redis) == []


async def test_defer_by_s_makes_a_deferred_job(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    job = (await submit(client, params={"defer_by_s": 60})).json()
    assert job["state"] == "deferred"
    scheduled = datetime.fromisoformat(job["scheduled_at"])
    assert before + timedelta(seconds=59) < scheduled < before + timedelta(seconds=62)


async def test_run_at_makes_a_deferred_job_due_at_that_time(client: httpx.AsyncClient) -> None:
    run_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    job = (await submit(client, params={"run_at": run_at.isoformat()})).json()
    assert job["state"] == "deferred"
    assert datetime.fromisoformat(job["scheduled_at"]) == run_at


async def test_run_at_in_the_past_is_due_at_once(client: httpx.AsyncClient) -> None:
    run_at = datetime.now(UTC) - timedelta(minutes=5)
    job = (await submit(client, params={"run_at": run_at.isoformat()})).json()
    assert job["state"] == "queued"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"defer_by_s": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no offset: ambiguous
        ({"defer_by_s": -1}, "defer_by_s"),
    ],
)
async def test_bad_schedule_is_a_422_naming_the_field(
    client: httpx.AsyncClient, redis: ArqRedis, params: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await submit(client, params=params), 422)
    assert field in [e["field"] for e in problem["errors"]]
    assert await conveyor_keys(redis) == []


async def test_idempotency_key_gives_one_job_and_conflicts_on_another_payload(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await submit(client, headers=headers)
    again = await submit(client, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]

    conflict = assert_problem(await submit(client, payload={"sleep_s": 9}, headers=headers), 409)
    assert "order-42" in conflict["detail"]
    assert await redis.zcard(CREATE_TASK.queue) == 1


async def test_idempotency_keys_are_per_job_type(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "shared"}
    a = await submit(client, headers=headers)
    b = await submit(client, "effect", {"work_s": 0}, headers=headers)
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_listing_pages_through_every_job_once_with_a_stable_cursor(
    client: httpx.AsyncClient,
) -> None:
    created = {(await submit(client)).json()["id"] for _ in range(23)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params)).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # A job submitted mid-listing does not shift the pages already read.
        await submit(client, payload={"sleep_s": 5})
    assert pages == 3
    assert len(seen) == len(set(seen))
    assert created <= set(seen)


async def test_listing_filters_by_state_queue_and_type(client: httpx.AsyncClient) -> None:
    queued = (await submit(client)).json()["id"]
    deferred = (await submit(client, params={"defer_by_s": 60})).json()["id"]
    effect = (await submit(client, "effect", {"work_s": 0})).json()["id"]

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["items"]}

    assert await ids(state="deferred") == {deferred}
    assert await ids(state="queued") == {queued, effect}
    assert await ids(job_type="effect") == {effect}
    assert await ids(queue=CREATE_TASK.queue) == {queued, deferred, effect}
    assert await ids(state="dead") == set()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"queue": "elsewhere"}, "queue"),
        ({"job_type": "no_such_type"}, "job_type"),
        ({"state": "sleeping"}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
    ],
)
async def test_bad_listing_query_is_a_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await client.get("/v1/jobs", params=params), 422)
    assert field in [e["field"] for e in problem["errors"]]


async def test_a_cursor_the_api_did_not_issue_is_a_400_naming_the_cursor(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    for _ in range(3):
        await submit(client)
    cursor = (await client.get("/v1/jobs", params={"limit": 1})).json()["next_cursor"]
    assert (await client.get("/v1/jobs", params={"cursor": cursor})).status_code == 200
    position, _, signature = cursor.rpartition(".")
    other_position = encode_cursor(0, "0", "")  # a well-formed position of one's choosing
    other_deployment = make_app(redis_url, cursor_secret="another deployment's secret")
    async with serve(other_deployment) as other:
        foreign = (await other.get("/v1/jobs", params={"limit": 1})).json()["next_cursor"]
    for forged in (
        "not-a-cursor",
        position,
        f"{other_position}.{signature}",
        f"{position}.{signature[:-1]}A"
        if signature[-1] != "A"
        else f"{position}.{signature[:-1]}B",
        foreign,
    ):
        problem = assert_problem(await client.get("/v1/jobs", params={"cursor": forged}), 400)
        assert [e["field"] for e in problem["errors"]] == ["cursor"], forged


async def test_cancelling_a_queued_job_takes_it_out_of_arq(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    job_id = (await submit(client)).json()["id"]

    response = await client.delete(f"/v1/jobs/{job_id}")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert await redis.zscore(CREATE_TASK.queue, job_id) is None
    # arq's job key became its result key (the payload, and arq's answer for
    # the cancelled job), which stays exactly as long as the record.
    assert not await redis.exists(job_key_prefix + job_id)
    assert 0 < await redis.ttl(result_key_prefix + job_id) <= CREATE_TASK.keep_result_s
    assert await redis.ttl(result_key_prefix + job_id) == await redis.ttl(f"conveyor:job:{job_id}")
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["payload"] == response.json()["payload"]
    problem = assert_problem(await client.delete(f"/v1/jobs/{job_id}"), 409)
    assert "cancelled" in problem["detail"]


async def test_only_dead_jobs_can_be_requeued(client: httpx.AsyncClient) -> None:
    job_id = (await submit(client)).json()["id"]
    problem = assert_problem(await client.post(f"/v1/jobs/{job_id}/retry"), 409)
    assert "queued" in problem["detail"]


async def test_a_requeued_job_keeps_its_checkpoint_unless_it_is_to_start_over(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    iterating = store.catalog["iterating"]
    job_id = (await enqueue(store, iterating, jobs.Items(items=10))).job_id
    claim = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}
    for start_over, kept in ((None, {"cursor": 4, "done": 4, "total": 10}), ("true", None)):
        (claimed,) = (await store.claim(iterating.queue, 1, **claim)).jobs
        saved = new_checkpoint(4, done=4, total=10, job_try=claimed.job_try)
        await store.save_checkpoint(job_id, saved, token=claimed.token)
        assert await store.dead(iterating, job_id, '{"type": "E", "message": "m"}')
        params = {"start_over": start_over} if start_over else None

        response = await client.post(f"/v1/jobs/{job_id}/retry", params=params)

        assert response.status_code == 202, response.text
        checkpoint = response.json()["checkpoint"]
        assert (checkpoint and {k: checkpoint[k] for k in ("cursor", "done", "total")}) == kept
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["checkpoint"] == checkpoint
    # A cursor is the handler's data: secret-looking fields are masked, as a payload's are.
    (claimed,) = (await store.claim(iterating.queue, 1, **claim)).jobs
    secret = new_checkpoint({"page_token": "t-1", "page": 2}, done=None, total=None, job_try=1)
    await store.save_checkpoint(job_id, secret, token=claimed.token)
    shown = (await client.get(f"/v1/jobs/{job_id}")).json()["checkpoint"]
    assert shown["cursor"] == {"page_token": "***", "page": 2}
    bad = await client.post(f"/v1/jobs/{job_id}/retry", params={"start_over": "maybe"})
    assert [e["field"] for e in assert_problem(bad, 422)["errors"]] == ["start_over"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("DELETE", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/retry"),
        ("GET", "/v1/jobs/{id}/events"),
    ],
)
async def test_unknown_job_id_is_a_404_problem(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path.format(id="0123abc"))
    problem = assert_problem(response, 404)
    assert "0123abc" in problem["detail"]


async def test_queue_stats_count_ready_and_deferred_jobs_and_latency(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await submit(client)
    await submit(client, params={"defer_by_s": 60})

    response = await client.get("/v1/queues")

    assert response.status_code == 200
    (queue,) = response.json()["queues"]
    assert queue["name"] == CREATE_TASK.queue
    assert (queue["ready"], queue["deferred"], queue["in_progress"], queue["dead"]) == (3, 1, 0, 0)
    assert queue["oldest_ready_age_s"] >= 0


async def test_openapi_shows_each_job_types_payload(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/jobs/create_task"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/CreateTask")
    assert "/v1/jobs/effect" in schema["paths"]


async def test_submit_takes_a_priority_and_refuses_an_unknown_one(
    client: httpx.AsyncClient,
) -> None:
    default = (await submit(client)).json()
    assert default["priority"] == CREATE_TASK.priority == 5
    high = await submit(client, params={"priority": 0})
    assert high.status_code == 201
    assert high.json()["priority"] == 0
    for bad in ("10", "-1", "high"):
        problem = assert_problem(await submit(client, params={"priority": bad}), 422)
        assert "priority" in json.dumps(problem)


async def test_submit_without_the_key_field_of_a_keyed_type_is_a_422_naming_it(
    client: httpx.AsyncClient,
) -> None:
    response = await submit(client, "per_tenant", {"work_s": 0})
    problem = assert_problem(response, 422)
    assert "tenant_id" in json.dumps(problem)
