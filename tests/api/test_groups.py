"""Groups and batches over HTTP against a real Redis: one request starts them,
a read shows counts and a page of members, bad input is a problem naming its
field, tenants read only their own, and cancel acts on the whole group."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Reads, Scope
from conveyor_core.catalog import load_catalog
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.store import JobStore
from tests.api.conftest import make_app, serve
from tests.api.test_redis_outage import QUICK_S, assert_redis_unavailable, tight
from tests.support import jobs
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer

QUEUE = "arq:queue"
CATALOG = load_catalog(jobs.MODULES.split(","))
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 1000}


def effects(n: int) -> list[dict[str, Any]]:
    return [{"job_type": "effect", "payload": {"work_s": i}} for i in range(n)]


async def test_a_group_is_started_in_one_request_and_read_with_its_members(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    body = {"children": effects(3), "then": {"job_type": "effect", "payload": {"work_s": 9}}}
    response = await client.post("/v1/groups", json=body)

    assert response.status_code == 201, response.text
    group = response.json()
    assert response.headers["location"] == f"/v1/groups/{group['id']}"
    assert (group["state"], group["total"], group["on_child_failure"]) == ("running", 3, "fail")
    assert group["counts"] == {"pending": 3, "complete": 0, "dead": 0, "cancelled": 0}
    assert group["continuations"] == [
        {"id": f"{group['id']}.then", "job_type": "effect", "when": "success"}
    ]
    assert group["submitted_by"] == TEST_KEY_NAME
    assert await redis.zcard(QUEUE) == 3

    store = JobStore(redis, CATALOG)
    (first,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert (await store.complete(CATALOG["effect"], first.job_id, '"ok"')).moved

    page = (await client.get(f"/v1/groups/{group['id']}", params={"limit": 2})).json()
    assert page["counts"]["complete"] == 1
    assert [m["index"] for m in page["members"]] == [0, 1]
    assert page["members"][0] == {
        "id": f"{group['id']}.0",
        "index": 0,
        "job_type": "effect",
        "state": "complete",
    }
    assert page["next_offset"] == 2
    rest = (await client.get(f"/v1/groups/{group['id']}", params={"offset": 2})).json()
    assert [m["state"] for m in rest["members"]] == ["queued"]
    assert rest["next_offset"] is None


async def test_a_batch_has_callbacks_and_is_read_as_a_batch(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    body = {
        "jobs": effects(4),
        "on_complete": {"job_type": "effect", "payload": {"work_s": 1}},
        "on_success": {"job_type": "effect", "payload": {"work_s": 2}},
    }
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 201, response.text
    batch = response.json()
    assert (batch["kind"], batch["on_child_failure"]) == ("batch", "run")
    assert [c["when"] for c in batch["continuations"]] == ["always", "success"]
    read = await client.get(f"/v1/batches/{batch['id']}")
    assert read.status_code == 200
    assert read.json()["total"] == 4


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/groups",
            {"children": [*effects(2), {"job_type": "effect", "payload": {"work_s": -1}}]},
            "children.2.payload",
        ),
        ("/v1/groups", {"children": [{"job_type": "nope", "payload": {}}]}, "children.0.job_type"),
        (
            "/v1/groups",
            {"children": effects(1), "then": {"job_type": "effect", "payload": {}}},
            "then.payload",
        ),
        ("/v1/groups", {"children": effects(1), "on_child_failure": "maybe"}, "on_child_failure"),
        ("/v1/groups", {"children": []}, "children"),
        (
            "/v1/batches",
            {"jobs": [{"job_type": "effect", "payload": {"work_s": "x"}}]},
            "jobs.0.payload",
        ),
        (
            "/v1/batches",
            {"jobs": effects(1), "on_complete": {"job_type": "nope"}},
            "on_complete.job_type",
        ),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, redis: ArqRedis, path: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post(path, json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert await redis.zcard(QUEUE) == 0


async def test_an_unknown_group_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/groups/g{'0' * 32}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/groups/not-a-group")).status_code == 422


@pytest.fixture
async def tenants(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    keys = [
        api_key(TEST_KEY_NAME, TEST_KEY),
        api_key("own", "own-key-secret-0123456789", reads=Reads.OWN),
        api_key("mailer", "mailer-key-secret-0123456789", job_types={"quick_mail"}),
        api_key("reader", "reader-key-secret-0123456789", scopes={Scope.JOBS_READ}),
        api_key(
            "quota",
            "quota-key-secret-0123456789",
            scopes={Scope.JOBS_SUBMIT, Scope.JOBS_READ},
            max_outstanding_jobs=5,
        ),
    ]
    async with serve(make_app(redis_url, keys=keys)) as c:
        yield c


async def test_tenants_submit_what_their_key_allows_and_read_their_own(
    tenants: httpx.AsyncClient, redis: ArqRedis
) -> None:
    refused = await tenants.post(
        "/v1/groups", json={"children": effects(2)}, headers=bearer("mailer-key-secret-0123456789")
    )
    assert refused.status_code == 403
    assert refused.json()["field"] == "job_type"
    no_scope = await tenants.post(
        "/v1/groups", json={"children": effects(2)}, headers=bearer("reader-key-secret-0123456789")
    )
    assert no_scope.status_code == 403
    assert await redis.zcard(QUEUE) == 0

    theirs = (await tenants.post("/v1/groups", json={"children": effects(1)})).json()
    own = bearer("own-key-secret-0123456789")
    assert (await tenants.get(f"/v1/groups/{theirs['id']}", headers=own)).status_code == 404
    mine = (await tenants.post("/v1/groups", json={"children": effects(1)}, headers=own)).json()
    assert (await tenants.get(f"/v1/groups/{mine['id']}", headers=own)).status_code == 200


async def test_cancel_and_requeue_act_on_the_whole_group(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    body = {"children": effects(3), "then": {"job_type": "effect", "payload": {"work_s": 9}}}
    group = (await client.post("/v1/groups", json=body)).json()

    cancelled = await client.post(f"/v1/groups/{group['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["done"] == 3
    assert cancelled.json()["group"]["state"] == "cancelled"
    assert cancelled.json()["group"]["counts"]["cancelled"] == 3
    assert await redis.zcard(QUEUE) == 0
    again = await client.post(f"/v1/groups/{group['id']}/cancel")
    assert again.status_code == 409

    requeued = await client.post(f"/v1/groups/{group['id']}/requeue")
    assert requeued.status_code == 200
    assert requeued.json()["done"] == 0  # cancelled jobs are not dead ones
    audit = (await client.get("/v1/audit")).json()
    assert {"cancel_group", "requeue_group"} <= {e["action"] for e in audit["items"]}


async def test_a_batch_over_the_keys_quota_of_outstanding_jobs_is_refused_whole(
    tenants: httpx.AsyncClient, redis: ArqRedis
) -> None:
    quota = bearer("quota-key-secret-0123456789")
    within = await tenants.post("/v1/batches", json={"jobs": effects(4)}, headers=quota)
    assert within.status_code == 201, within.text
    over = await tenants.post("/v1/batches", json={"jobs": effects(2)}, headers=quota)
    assert over.status_code == 429
    assert over.json()["field"] == "max_outstanding_jobs"
    assert "retry-after" in over.headers
    assert await redis.zcard(QUEUE) == 4  # the batch's jobs count among its outstanding ones


async def test_a_payload_over_the_size_limit_is_a_413(redis_url: str, redis: ArqRedis) -> None:
    async with serve(make_app(redis_url, max_payload_bytes=256)) as client:
        big = {"job_type": "effect", "payload": {"work_s": 1, "pad": "x" * 300}}
        response = await client.post("/v1/batches", json={"jobs": [*effects(2), big]})
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].startswith("jobs.2.payload: over the limit")
    assert await redis.zcard(QUEUE) == 0


async def test_a_resubmit_under_an_idempotency_key_finds_the_same_group(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    body = {"jobs": effects(3), "on_complete": {"job_type": "effect", "payload": {"work_s": 1}}}
    headers = {"Idempotency-Key": "run-2026-12"}
    first = await client.post("/v1/batches", json=body, headers=headers)
    again = await client.post("/v1/batches", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert await redis.zcard(QUEUE) == 3  # nothing submitted twice

    other = await client.post("/v1/batches", json={"jobs": effects(2)}, headers=headers)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    # The key is per route: a group under it is another one.
    group = await client.post("/v1/groups", json={"children": effects(1)}, headers=headers)
    assert group.status_code == 201
    assert group.json()["id"] != first.json()["id"]


@pytest.fixture
async def outage_client(own_redis: RedisProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app(own_redis.url, redis=tight(own_redis.url))) as client:
        client.timeout = httpx.Timeout(QUICK_S)
        yield client


async def test_a_redis_outage_is_a_quick_503_on_every_group_route(
    outage_client: httpx.AsyncClient, own_redis: RedisProcess
) -> None:
    started = await outage_client.post("/v1/groups", json={"children": effects(2)})
    assert started.status_code == 201
    group_id = started.json()["id"]

    own_redis.stop()
    for method, path, body in [
        ("POST", "/v1/groups", {"children": effects(2)}),
        ("POST", "/v1/batches", {"jobs": effects(2)}),
        ("GET", f"/v1/groups/{group_id}", None),
        ("GET", f"/v1/groups/{group_id}/events", None),
        ("POST", f"/v1/groups/{group_id}/cancel", None),
        ("POST", f"/v1/groups/{group_id}/requeue", None),
    ]:
        assert_redis_unavailable(await outage_client.request(method, path, json=body))

    own_redis.start()  # an empty Redis again: the api recovers by itself
    assert (
        await outage_client.post("/v1/groups", json={"children": effects(1)})
    ).status_code == 201
