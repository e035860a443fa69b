"""Finding jobs by filter, bulk actions, the audit log and read-only keys,
against a real Redis, without a worker."""

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Scope
from conveyor_api.bulk import BulkRunner
from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.jobs import JobPublic
from conveyor_core.store import SCAN_BUDGET_PER_ITEM, JobFilter, JobStore
from conveyor_seed import CREATE_TASK, SEND_EMAIL
from tests.api.conftest import make_app, serve
from tests.api.test_jobs import assert_problem, submit
from tests.support import jobs
from tests.support.auth import TEST_KEY_NAME, api_key, bearer
from tests.support.dead import CLAIM, make_dead

READER_KEY = "cvk_test_reader_0123456789abcdef0123456789"
EMAIL = {"to_email": "a@example.com", "subject": "hi", "body": "b"}


async def dead_jobs(redis: ArqRedis) -> tuple[list[str], list[str]]:
    """Dead create_task jobs (ValueError 'bad input') and send_email ones (SMTP timeout)."""
    tasks = await make_dead(
        redis, CREATE_TASK, {"sleep_s": 0}, 3, error_type="ValueError", message="bad input 42"
    )
    emails = await make_dead(
        redis, SEND_EMAIL, EMAIL, 4, error_type="TimeoutError", message="SMTP server timed out"
    )
    return tasks, emails


async def ids(client: httpx.AsyncClient, **params: Any) -> set[str]:
    response = await client.get("/v1/jobs", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return {j["id"] for j in response.json()["items"]}


async def wait_done(client: httpx.AsyncClient, bulk_id: str) -> dict[str, Any]:
    for _ in range(500):
        status: dict[str, Any] = (await client.get(f"/v1/bulk/{bulk_id}")).json()
        if status["state"] != "running":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"bulk action {bulk_id} never finished: {status}")


async def test_listing_filters_by_error_type_text_and_time(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    tasks, emails = await dead_jobs(redis)

    assert await ids(client, state="dead", error_type="TimeoutError") == set(emails)
    assert await ids(client, state="dead", job_type="create_task") == set(tasks)
    assert await ids(client, q="smtp SERVER") == set(emails)
    assert await ids(client, q=tasks[0][-10:]) == {tasks[0]}
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert await ids(client, state="dead", since=hour_ago) == set(tasks + emails)
    assert await ids(client, state="dead", since=soon) == set()
    assert await ids(client, state="dead", until=hour_ago) == set()


async def arq_job_reads(redis: ArqRedis) -> int:
    """GETs Redis has run: with no rate limit, the api GETs only arq's keys of a
    job (its job key and its result key, two per job read)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_a_search_reads_whole_jobs_only_for_its_likely_matches(
    redis_url: str, redis: ArqRedis
) -> None:
    tasks, emails = await dead_jobs(redis)
    async with serve(make_app(redis_url, rate_limit_per_s=0)) as client:
        before = await arq_job_reads(redis)
        assert await ids(client, q="smtp server") == set(emails)
        assert await arq_job_reads(redis) - before == 2 * len(emails)
        before = await arq_job_reads(redis)
        assert await ids(client, q="no such text") == set()
        assert await ids(client, error_type="NoSuchError") == set()
        assert await arq_job_reads(redis) == before  # no payload read at all
        assert await ids(client, q=tasks[1][-12:]) == {tasks[1]}  # in the id, not the error


async def test_a_filter_that_matches_nothing_is_an_empty_result(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    await dead_jobs(redis)
    response = await client.get("/v1/jobs", params={"q": "no such thing", "state": "complete"})
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}
    preview = await client.post("/v1/bulk/preview", json={"error_type": "NoSuchError"})
    assert preview.json() == {"count": 0, "exact": True, "scanned": 7}
    started = await client.post(
        "/v1/bulk", json={"action": "requeue", "filter": {"error_type": "NoSuchError"}}
    )
    assert started.status_code == 202
    status = await wait_done(client, started.json()["id"])
    assert (status["state"], status["matched"], status["done"]) == ("done", 0, 0)


async def test_bulk_requeue_previews_then_requeues_each_match_once(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    tasks, emails = await dead_jobs(redis)
    dead_filter = {"state": "dead", "job_type": "send_email", "since": "2020-01-01T00:00:00Z"}

    preview = await client.post("/v1/bulk/preview", json=dead_filter)
    assert (preview.json()["count"], preview.json()["exact"]) == (4, True)
    started = await client.post(
        "/v1/bulk",
        json={"action": "requeue", "filter": dead_filter},
        headers={"Idempotency-Key": "requeue-emails"},
    )
    assert started.status_code == 202, started.text
    status = await wait_done(client, started.json()["id"])

    assert (status["state"], status["matched"], status["done"], status["skipped"]) == (
        "done",
        4,
        4,
        0,
    )
    for job_id in emails:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert (job["state"], job["requeues"], job["tries"]) == ("queued", 1, 0)
        # Its job key is back, rebuilt from arq's result key, which is gone.
        assert await redis.exists(f"arq:job:{job_id}")
        assert not await redis.exists(f"arq:result:{job_id}")
        assert job["payload"]["subject"]
    for job_id in tasks:
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "dead"
    # Safe to run twice: the same key is the same action; a new one finds nothing dead.
    again = await client.post(
        "/v1/bulk",
        json={"action": "requeue", "filter": dead_filter},
        headers={"Idempotency-Key": "requeue-emails"},
    )
    assert again.json()["id"] == "requeue-emails"
    assert again.json()["done"] == 4
    fresh = await client.post("/v1/bulk", json={"action": "requeue", "filter": dead_filter})
    assert (await wait_done(client, fresh.json()["id"]))["done"] == 0
    for job_id in emails:
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["requeues"] == 1


async def test_bulk_cancel_and_delete(client: httpx.AsyncClient, redis: ArqRedis) -> None:
    tasks, emails = await dead_jobs(redis)
    queued = [(await submit(client)).json()["id"] for _ in range(5)]

    cancel = await client.post("/v1/bulk", json={"action": "cancel", "filter": {"state": "queued"}})
    assert (await wait_done(client, cancel.json()["id"]))["done"] == 5
    for job_id in queued:
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"
    assert await redis.zcard(CREATE_TASK.queue) == 0

    delete = await client.post(
        "/v1/bulk",
        json={"action": "delete", "filter": {"state": "dead", "error_type": "ValueError"}},
    )
    assert (await wait_done(client, delete.json()["id"]))["done"] == 3
    for job_id in tasks:
        assert (await client.get(f"/v1/jobs/{job_id}")).status_code == 404
        assert not await redis.exists(keys.job_key(job_id), f"arq:job:{job_id}")
    assert await ids(client, state="dead") == set(emails)


async def test_bulk_action_resumes_where_a_stopped_api_left_it(
    redis_url: str, redis: ArqRedis
) -> None:
    _, emails = await dead_jobs(redis)
    where = JobFilter(job_type="send_email")
    app = make_app(redis_url)
    async with serve(app) as _:
        runner: BulkRunner = app.state.bulk
        runner.spawn = lambda bulk_id: None  # type: ignore[method-assign]  # never runs here
        await runner.start("requeue", where, "tests", "resumable")
        # As if this process did one batch of one job, then stopped.
        page = await runner.store.list(where=where, limit=1)
        (first,) = page.items
        await runner.store.bulk_batch("requeue", first.queue, [first.id], 60_000)
        await redis.hset(  # type: ignore[misc]
            keys.bulk_key("resumable"),
            mapping={"cursor": page.next_cursor or "", "matched": 1, "done": 1, "batches": 1},
        )
    app = make_app(redis_url)
    async with serve(app) as client:  # a starting api resumes it
        status = await wait_done(client, "resumable")
        assert (status["state"], status["matched"], status["done"]) == ("done", 4, 4)
        assert status["batches"] >= 2
    for job_id in emails:
        assert (await redis.hget(keys.job_key(job_id), "requeues")) == b"1"  # type: ignore[misc]


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a read-only key (jobs:read) beside the test key."""
    from tests.support.auth import TEST_KEY

    app = make_app(
        redis_url,
        keys=[api_key(TEST_KEY_NAME, TEST_KEY), api_key("viewer", READER_KEY, [Scope.JOBS_READ])],
    )
    async with serve(app, authenticated=False) as client:
        client.headers.update(bearer(READER_KEY))
        yield client


async def test_a_read_only_key_sees_everything_and_acts_on_nothing(
    reader: httpx.AsyncClient, redis: ArqRedis
) -> None:
    tasks, _ = await dead_jobs(redis)
    whoami = (await reader.get("/v1/whoami")).json()
    assert whoami == {"name": "viewer", "scopes": ["jobs:read"]}
    assert (await reader.get("/v1/queues")).status_code == 200
    assert await ids(reader, state="dead") >= set(tasks)
    assert (await reader.get("/v1/audit")).status_code == 200
    for method, path, body in [
        ("POST", "/v1/bulk/preview", {"state": "dead"}),  # a scan: an operator's tool
        ("POST", "/v1/bulk", {"action": "requeue", "filter": {"state": "dead"}}),
        ("POST", f"/v1/jobs/{tasks[0]}/retry", None),
        ("DELETE", f"/v1/jobs/{tasks[0]}", None),
        ("POST", f"/v1/queues/{CREATE_TASK.queue}/pause", None),
        ("POST", f"/v1/queues/{CREATE_TASK.queue}/resume", None),
        ("POST", "/v1/bulk/x/resume", None),
    ]:
        response = await reader.request(method, path, json=body)
        problem = assert_problem(response, 403)
        assert "jobs:admin" in problem["detail"]
    assert (await reader.get(f"/v1/jobs/{tasks[0]}")).json()["state"] == "dead"


async def test_every_operator_action_is_in_the_audit_log(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    tasks, _ = await dead_jobs(redis)
    queue = CREATE_TASK.queue
    await client.post(f"/v1/jobs/{tasks[0]}/retry")
    await client.delete(f"/v1/jobs/{tasks[0]}")
    await client.post(f"/v1/queues/{queue}/pause")
    await client.post(f"/v1/queues/{queue}/resume")
    bulk = await client.post(
        "/v1/bulk", json={"action": "requeue", "filter": {"job_type": "send_email"}}
    )
    await wait_done(client, bulk.json()["id"])

    entries = (await client.get("/v1/audit")).json()["items"]

    seen = [(e["who"], e["action"], e["target"], e["count"]) for e in reversed(entries)]
    assert seen[:4] == [
        ("tests", "requeue", tasks[0], 1),
        ("tests", "cancel", tasks[0], 1),
        ("tests", "pause", queue, 0),
        ("tests", "resume", queue, 0),
    ]
    assert seen[4][:2] == ("tests", "bulk_requeue")
    assert seen[5][1:] == ("bulk_requeue", f"bulk {bulk.json()['id']} done", 4)
    assert entries[0]["detail"]["filter"] == {"job_type": "send_email"}


async def test_queues_show_the_limits_in_force(client: httpx.AsyncClient) -> None:
    queues = (await client.get("/v1/queues")).json()["queues"]
    limits = {t: lim for q in queues for t, lim in q["limits"].items()}
    assert limits["per_tenant"]["key"] == "tenant_id"


async def test_a_preview_past_its_row_budget_answers_a_lower_bound(
    redis_url: str, redis: ArqRedis
) -> None:
    await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, 180)
    async with serve(make_app(redis_url, preview_max_rows=100)) as client:
        nothing = (await client.post("/v1/bulk/preview", json={"error_type": "NoSuch"})).json()
        assert (nothing["count"], nothing["exact"]) == (0, False)
        assert 100 <= nothing["scanned"] < 180
        every = (await client.post("/v1/bulk/preview", json={"state": "dead"})).json()
        assert every["count"] >= 100
        assert (every["count"] < 180, every["exact"]) == (True, False)
        within = (await client.post("/v1/bulk/preview", json={"state": "cancelled"})).json()
        assert within == {"count": 0, "exact": True, "scanned": 0}


async def test_a_preview_past_its_time_limit_answers_a_lower_bound(
    redis_url: str, redis: ArqRedis
) -> None:
    await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, 600)
    async with serve(make_app(redis_url, preview_timeout_s=0.001)) as client:
        counted = (await client.post("/v1/bulk/preview", json={"error_type": "NoSuch"})).json()
        assert (counted["count"], counted["exact"]) == (0, False)
        assert counted["scanned"] < 600  # one page, then the clock said stop


async def test_a_preview_stops_when_its_client_goes_away(redis_url: str, redis: ArqRedis) -> None:
    await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, 600)
    catalog = load_catalog(jobs.MODULES.split(","))
    runner = BulkRunner(redis, JobStore(redis, catalog), catalog)
    asked = 0

    async def gone() -> bool:
        nonlocal asked
        asked += 1
        return True

    where = JobFilter(error_type="NoSuch")
    counted = await runner.count(where, max_rows=10**6, timeout_s=60, gone=gone)
    assert (counted.count, counted.exact, asked) == (0, False, 1)
    assert counted.scanned < 600
    whole = await runner.count(where, max_rows=10**6, timeout_s=60)
    assert (whole.exact, whole.scanned) == (True, 600)


async def test_one_preview_at_a_time_per_key(redis_url: str) -> None:
    app = make_app(redis_url)
    async with serve(app) as client:
        await previews_one_at_a_time(client, app.state.bulk)


async def previews_one_at_a_time(client: httpx.AsyncClient, runner: BulkRunner) -> None:
    async with runner.previewing(TEST_KEY_NAME, timeout_s=5) as allowed:
        assert allowed  # as if this key's preview ran on some replica
        refused = await client.post("/v1/bulk/preview", json={"state": "dead"})
        problem = assert_problem(refused, 429)
        assert "one at a time" in problem["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        async with runner.previewing("someone-else", timeout_s=5) as others:
            assert others  # another key's preview is its own
    after = await client.post("/v1/bulk/preview", json={"state": "dead"})
    assert after.status_code == 200, after.text


async def audit_entries(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The audit log, oldest first."""
    entries: list[dict[str, Any]] = (await client.get("/v1/audit")).json()["items"]
    return entries[::-1]


async def test_each_audit_entry_is_logged_with_the_request_that_asked_for_it(
    client: httpx.AsyncClient, redis: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    tasks, _ = await dead_jobs(redis)
    caplog.set_level(logging.INFO, logger="conveyor.audit")
    asked = await client.post(f"/v1/jobs/{tasks[0]}/retry", headers={"X-Request-ID": "a" * 32})
    assert asked.status_code == 202
    bulk = await client.post(
        "/v1/bulk",
        json={"action": "delete", "filter": {"job_type": "send_email"}},
        headers={"X-Request-ID": "b" * 32},
    )
    await wait_done(client, bulk.json()["id"])

    entries = await audit_entries(client)
    assert [(e["action"], e["request_id"]) for e in entries] == [
        ("requeue", "a" * 32),
        ("bulk_delete", "b" * 32),
        ("bulk_delete", "b" * 32),  # its end, under the request that started it
    ]
    logged = [r.fields for r in caplog.records if r.name == "conveyor.audit"]  # type: ignore[attr-defined]
    assert [(f["action"], f["target"], f["count"], f["request_id"]) for f in logged] == [
        (e["action"], e["target"], e["count"], e["request_id"]) for e in entries
    ]
    assert [f["audit_id"] for f in logged] == [e["id"] for e in entries]


async def test_actions_that_change_nothing_are_not_audited_as_changes(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    queue = CREATE_TASK.queue
    for _ in range(2):
        assert (await client.post(f"/v1/queues/{queue}/pause")).json()["paused"]
    for _ in range(2):
        assert not (await client.post(f"/v1/queues/{queue}/resume")).json()["paused"]
    job_id = (await submit(client)).json()["id"]
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    (claimed,) = (await store.claim(queue, 1, **CLAIM)).jobs  # now it runs
    assert claimed.job_id == job_id
    for _ in range(2):  # asked to stop twice: one change
        assert (await client.delete(f"/v1/jobs/{job_id}")).status_code == 202

    entries = await audit_entries(client)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("pause", queue),
        ("resume", queue),
        ("cancel", job_id),
    ]


async def test_a_running_bulk_action_can_be_cancelled(redis_url: str, redis: ArqRedis) -> None:
    _, emails = await dead_jobs(redis)
    app = make_app(redis_url)
    async with serve(app) as client:
        await cancelled_midway(client, app.state.bulk, emails)


async def cancelled_midway(
    client: httpx.AsyncClient, runner: BulkRunner, emails: list[str]
) -> None:
    bulk_id = "stop-me"
    runner.batch = 2
    act = runner._act

    async def act_then_cancel(action: str, jobs: list[JobPublic]) -> tuple[int, int]:
        done = await act(action, jobs)  # the batch in flight finishes
        assert (await client.post(f"/v1/bulk/{bulk_id}/cancel")).status_code == 200
        return done

    runner._act = act_then_cancel  # type: ignore[method-assign]
    where = {"action": "requeue", "filter": {"job_type": "send_email"}}
    started = await client.post("/v1/bulk", json=where, headers={"Idempotency-Key": bulk_id})
    assert started.status_code == 202
    status = await wait_done(client, bulk_id)

    assert (status["state"], status["done"], status["cancelled_by"]) == ("cancelled", 2, "tests")
    states = [(await client.get(f"/v1/jobs/{j}")).json()["state"] for j in emails]
    assert sorted(states) == ["dead", "dead", "queued", "queued"]
    again = await client.post(f"/v1/bulk/{bulk_id}/cancel")  # changes nothing
    assert (again.status_code, again.json()["state"]) == (200, "cancelled")
    entries = [(e["action"], e["target"], e["count"]) for e in await audit_entries(client)]
    assert entries == [
        ("bulk_requeue", "filter", 0),
        ("cancel_bulk", bulk_id, 0),
        ("bulk_requeue", f"bulk {bulk_id} cancelled", 2),
    ]
    runner._act = act  # type: ignore[method-assign]
    done = await client.post("/v1/bulk", json=where)
    assert (await wait_done(client, done.json()["id"]))["state"] == "done"
    problem = assert_problem(await client.post(f"/v1/bulk/{done.json()['id']}/cancel"), 409)
    assert "done" in problem["detail"]
    assert_problem(await client.post("/v1/bulk/no-such-action/cancel"), 404)


async def test_deleting_every_job_takes_all_and_the_count_the_preview_showed(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    await dead_jobs(redis)
    everything: dict[str, Any] = {"action": "delete", "filter": {}}

    problem = assert_problem(await client.post("/v1/bulk", json=everything), 422)
    assert sorted(e["field"] for e in problem["errors"]) == ["all", "count"]
    problem = assert_problem(await client.post("/v1/bulk", json={**everything, "all": True}), 422)
    assert [e["field"] for e in problem["errors"]] == ["count"]
    some = {"action": "requeue", "filter": {"state": "dead"}, "all": True}
    problem = assert_problem(await client.post("/v1/bulk", json=some), 422)
    assert [e["field"] for e in problem["errors"]] == ["all"]  # "all" means an empty filter

    preview = (await client.post("/v1/bulk/preview", json={})).json()
    assert (preview["count"], preview["exact"]) == (7, True)
    await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, 2)  # more since the preview
    started = await client.post("/v1/bulk", json={**everything, "all": True, "count": 7})
    assert started.status_code == 202, started.text
    status = await wait_done(client, started.json()["id"])
    assert (status["state"], status["matched"], status["done"], status["at_most"]) == (
        "done",
        7,
        7,
        7,
    )
    assert len(await ids(client)) == 2  # what the preview did not show is left


async def error_field_reads(redis: ArqRedis) -> int:
    """HGETs Redis has run: a search reads one field (the last error) per entry it screens."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


async def test_a_search_that_matches_nothing_reads_a_bounded_page(
    redis_url: str, redis: ArqRedis
) -> None:
    """However many jobs there are, one page of a free-text search reads at most
    `limit` x SCAN_BUDGET_PER_ITEM index entries (their last error only), then
    hands the client a cursor to go on: a call's cost does not grow with the data."""
    await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, 200, message="bad input")
    async with serve(make_app(redis_url, rate_limit_per_s=0)) as client:
        fields, whole = await error_field_reads(redis), await arq_job_reads(redis)
        page = await client.get("/v1/jobs", params={"q": "no such text", "limit": 4})
        assert page.status_code == 200, page.text
        assert page.json()["items"] == []
        assert page.json()["next_cursor"] is not None  # stopped short of the 200
        screened = await error_field_reads(redis) - fields
        assert 0 < screened <= 4 * SCAN_BUDGET_PER_ITEM, screened
        assert await arq_job_reads(redis) == whole  # no payload read
