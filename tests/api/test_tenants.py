"""Tenants: job types that are not public, and each api key's policy (job types,
queues, highest priority, quota of outstanding jobs, own-jobs reads, scoped
Idempotency-Keys), against a real Redis."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Reads, Scope
from conveyor_api.tenants import PolicyRefusal, check_policies, submit_priority
from conveyor_core.catalog import Catalog, JobType, load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.keys import outstanding_key
from conveyor_core.store import JobStore
from conveyor_seed import CREATE_TASK, SEND_EMAIL, CreateTask
from tests.api.conftest import make_app, serve
from tests.support import jobs
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer
from tests.support.dead import CLAIM

SUBMIT_AND_READ = [Scope.JOBS_SUBMIT, Scope.JOBS_READ]
ADMIN = bearer(TEST_KEY)
# Only create_task, at priority 4 or lower (4..9).
NARROW = "cvk_narrow"
# Two jobs outstanding at most.
QUOTA = "cvk_quota"
# Reads only the jobs it submitted.
OWN_A, OWN_B = "cvk_own_a", "cvk_own_b"
KEYS = [
    api_key(TEST_KEY_NAME, TEST_KEY),
    api_key("submitter", "cvk_submitter", [Scope.JOBS_SUBMIT]),
    api_key("narrow", NARROW, SUBMIT_AND_READ, job_types={"create_task"}, highest_priority=4),
    api_key("quota", QUOTA, SUBMIT_AND_READ, max_outstanding_jobs=2),
    api_key("own-a", OWN_A, [*SUBMIT_AND_READ, Scope.JOBS_ADMIN], reads=Reads.OWN),
    api_key("own-b", OWN_B, SUBMIT_AND_READ, reads=Reads.OWN),
]
TASK = {"sleep_s": 0.1}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no key by default; the app knows KEYS."""
    async with serve(make_app(redis_url, keys=KEYS), authenticated=False) as c:
        yield c


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


async def submit(
    client: httpx.AsyncClient, key: str, job_type: str = "create_task", **kwargs: Any
) -> httpx.Response:
    payload = kwargs.pop("json", TASK)
    headers = {**bearer(key), **kwargs.pop("headers", {})}
    return await client.post(f"/v1/jobs/{job_type}", json=payload, headers=headers, **kwargs)


# -- job types that are not public -------------------------------------------


async def test_a_submit_key_cannot_send_mail(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    mail = {"to_email": "victim@elsewhere.example", "subject": "Hi", "body": "Click here"}
    for key in ("cvk_submitter", TEST_KEY):  # not even a key with every scope
        refused = await submit(client, key, "send_email", json=mail)
        assert "internal" in assert_problem(refused, 404)["detail"]
    assert await redis.zcard(SEND_EMAIL.queue) == 0  # nothing enqueued


async def test_internal_types_are_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/v1/jobs/create_task" in paths
    for name in ("send_email", "send_digest", "cleanup_temp_uploads", "process_document"):
        assert f"/v1/jobs/{name}" not in paths
    assert "/v1/jobs/email_user" not in paths
    unknown = await submit(client, TEST_KEY, "no_such_type")
    assert "send_email" not in assert_problem(unknown, 404)["detail"]


async def test_jobs_still_enqueue_internal_types(redis: ArqRedis) -> None:
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    mail = {"to_email": "a@example.com", "subject": "Hi", "body": "Hello"}
    submitted = await enqueue(store, SEND_EMAIL, mail)
    assert submitted.created
    assert await redis.zscore(SEND_EMAIL.queue, submitted.job_id) is not None


# -- what a key may submit ----------------------------------------------------


async def test_a_key_limited_to_a_type_cannot_submit_another(client: httpx.AsyncClient) -> None:
    assert (await submit(client, NARROW)).status_code == 201
    refused = await submit(client, NARROW, "flaky", json={"fail_times": 0})
    problem = assert_problem(refused, 403)
    assert problem["field"] == "job_type"
    assert "'flaky'" in problem["detail"]
    assert "create_task" in problem["detail"]


async def test_a_key_cannot_exceed_its_highest_priority(client: httpx.AsyncClient) -> None:
    refused = await submit(client, NARROW, params={"priority": 3})
    problem = assert_problem(refused, 403)
    assert problem["field"] == "priority"
    assert "its highest is 4" in problem["detail"]
    allowed = await submit(client, NARROW, params={"priority": 4})
    assert allowed.json()["priority"] == 4
    # The type's own priority (5) is within the cap; the admin key has no cap.
    assert (await submit(client, NARROW)).json()["priority"] == 5
    assert (await submit(client, TEST_KEY, params={"priority": 0})).json()["priority"] == 0


def test_a_type_above_the_cap_is_lowered_to_it_and_queues_are_checked() -> None:
    key = api_key("k", "k", highest_priority=7, queues={"a"})
    urgent = JobType("urgent", CreateTask, "x:y", queue="a", priority=1)
    assert submit_priority(key, urgent, None) == 7
    assert submit_priority(key, urgent, 8) == 8
    elsewhere = JobType("elsewhere", CreateTask, "x:y", queue="b")
    with pytest.raises(PolicyRefusal) as refused:
        submit_priority(key, elsewhere, None)
    assert refused.value.extensions == {"field": "queue"}
    assert "'b'" in str(refused.value.detail)


def test_a_policy_naming_an_unknown_or_internal_type_or_queue_stops_the_api() -> None:
    catalog = Catalog([JobType("open", CreateTask, "x:y"), SEND_EMAIL])
    check_policies([api_key("k", "k", job_types={"open"})], catalog)
    with pytest.raises(ValueError, match="unknown type 'opne'"):
        check_policies([api_key("k", "k", job_types={"opne"})], catalog)
    with pytest.raises(ValueError, match="'send_email', which is internal"):
        check_policies([api_key("k", "k", job_types={"send_email"})], catalog)
    with pytest.raises(ValueError, match="unknown queue 'nope'"):
        check_policies([api_key("k", "k", queues={"nope"})], catalog)


async def test_a_key_cannot_exceed_its_quota_of_outstanding_jobs(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    once = {"Idempotency-Key": "once"}
    first = (await submit(client, QUOTA, headers=once)).json()["id"]
    second = (await submit(client, QUOTA)).json()["id"]
    refused = await submit(client, QUOTA)
    problem = assert_problem(refused, 429)
    assert problem["field"] == "max_outstanding_jobs"
    assert int(refused.headers["retry-after"]) >= 1
    # An Idempotency-Key's job is found, not counted again, at the quota too.
    again = await submit(client, QUOTA, headers=once)
    assert (again.status_code, again.json()["id"]) == (200, first)
    # Other keys are not held back by it.
    assert (await submit(client, TEST_KEY)).status_code == 201

    # Once a job ends (cancelled here), its place is free again.
    assert (await client.delete(f"/v1/jobs/{first}", headers=ADMIN)).status_code == 200
    third = await submit(client, QUOTA)
    assert third.status_code == 201, third.text
    outstanding = await redis.zrange(outstanding_key("quota"), 0, -1)
    assert {i.decode() for i in outstanding} == {second, third.json()["id"]}
    assert await redis.pttl(outstanding_key("quota")) > 0  # it expires
    assert (await submit(client, QUOTA)).status_code == 429


async def test_a_job_an_operator_requeues_is_not_counted_again(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    first = (await submit(client, QUOTA)).json()["id"]
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    (claimed,) = (await store.claim(CREATE_TASK.queue, 1, **CLAIM)).jobs
    assert claimed.job_id == first
    await store.dead(CREATE_TASK, first, json.dumps({"type": "E", "message": "x"}))
    # Full at the second; the third finds the dead one and takes its place.
    later = [(await submit(client, QUOTA)).json()["id"] for _ in range(2)]

    requeued = await client.post(f"/v1/jobs/{first}/retry", headers=ADMIN)
    assert requeued.status_code == 202, requeued.text
    assert (await client.get(f"/v1/jobs/{first}", headers=ADMIN)).json()["state"] == "queued"
    outstanding = await redis.zrange(outstanding_key("quota"), 0, -1)
    assert {i.decode() for i in outstanding} == set(later)  # the operator's, not the key's


# -- what a key reads ---------------------------------------------------------


async def test_each_job_names_the_key_that_submitted_it(client: httpx.AsyncClient) -> None:
    job = (await submit(client, NARROW)).json()
    assert job["submitted_by"] == "narrow"
    read = await client.get(f"/v1/jobs/{job['id']}", headers=ADMIN)
    assert read.json()["submitted_by"] == "narrow"


async def test_an_own_jobs_key_reads_only_its_own_jobs(client: httpx.AsyncClient) -> None:
    mine = (await submit(client, OWN_A)).json()["id"]
    theirs = (await submit(client, OWN_B)).json()["id"]
    admins = (await submit(client, TEST_KEY)).json()["id"]

    assert (await client.get(f"/v1/jobs/{mine}", headers=bearer(OWN_A))).status_code == 200
    for other in (theirs, admins):
        assert_problem(await client.get(f"/v1/jobs/{other}", headers=bearer(OWN_A)), 404)
        events = await client.get(f"/v1/jobs/{other}/events", headers=bearer(OWN_A))
        assert_problem(events, 404)
        assert_problem(await client.delete(f"/v1/jobs/{other}", headers=bearer(OWN_A)), 404)
    listed = (await client.get("/v1/jobs", headers=bearer(OWN_A))).json()["items"]
    assert [j["id"] for j in listed] == [mine]
    # A key that reads every job still does.
    everything = (await client.get("/v1/jobs", headers=ADMIN)).json()["items"]
    assert {mine, theirs, admins} <= {j["id"] for j in everything}
    # Cancelling its own job works; the other key's job is untouched.
    assert (await client.delete(f"/v1/jobs/{mine}", headers=bearer(OWN_A))).status_code == 200
    assert (await client.get(f"/v1/jobs/{theirs}", headers=ADMIN)).json()["state"] == "queued"


async def test_the_many_jobs_stream_hides_another_keys_jobs(client: httpx.AsyncClient) -> None:
    theirs = (await submit(client, OWN_B)).json()["id"]
    async with client.stream(
        "GET", "/v1/events", params={"job_id": theirs}, headers=bearer(OWN_A)
    ) as stream:
        body = (await stream.aread()).decode()
    assert "event: missing" in body
    assert "event: job" not in body


# -- Idempotency-Keys ---------------------------------------------------------


async def test_idempotency_keys_of_two_api_keys_do_not_collide(client: httpx.AsyncClient) -> None:
    same = {"Idempotency-Key": "order-42"}
    a = await submit(client, OWN_A, headers=same)
    b = await client.post(
        "/v1/jobs/create_task", json={"sleep_s": 2.0}, headers={**bearer(OWN_B), **same}
    )
    # B neither gets A's job nor learns that the key was used (no 200, no 409).
    assert (a.status_code, b.status_code) == (201, 201), b.text
    assert a.json()["id"] != b.json()["id"]
    again = await submit(client, OWN_A, headers=same)
    assert (again.status_code, again.json()["id"]) == (200, a.json()["id"])


async def test_an_own_jobs_admin_key_acts_in_bulk_on_its_own_jobs_only(
    client: httpx.AsyncClient,
) -> None:
    mine = (await submit(client, OWN_A)).json()["id"]
    theirs = (await submit(client, OWN_B)).json()["id"]
    counted = await client.post("/v1/bulk/preview", json={}, headers=bearer(OWN_A))
    assert counted.status_code == 200, counted.text
    assert (counted.json()["count"], counted.json()["exact"]) == (1, True)  # its own only
    started = await client.post(
        "/v1/bulk", json={"action": "cancel", "filter": {}}, headers=bearer(OWN_A)
    )
    assert started.status_code == 202, started.text
    assert started.json()["filter"] == {"submitted_by": "own-a"}
    async with asyncio.timeout(10):
        while (
            status := (await client.get(f"/v1/bulk/{started.json()['id']}", headers=ADMIN)).json()
        )["state"] == "running":
            await asyncio.sleep(0.05)
    assert (status["state"], status["done"]) == ("done", 1)
    assert (await client.get(f"/v1/jobs/{mine}", headers=ADMIN)).json()["state"] == "cancelled"
    assert (await client.get(f"/v1/jobs/{theirs}", headers=ADMIN)).json()["state"] == "queued"
