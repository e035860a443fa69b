"""`GET /v1/workflows/{id}` against a real Redis: from any job of a workflow
(a member, a continuation, a nested group's member, the job that started it)
the same tree, bounded by pages; tenants read only their own."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Reads
from conveyor_core.catalog import load_catalog
from conveyor_core.groups import start_group
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.store import JobStore
from conveyor_core.workflows import NESTED_PAGE
from tests.api.conftest import make_app, serve
from tests.api.test_redis_outage import QUICK_S, assert_redis_unavailable, tight
from tests.support import jobs
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer

QUEUE = "arq:queue"
CATALOG = load_catalog(jobs.MODULES.split(","))
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 1000}


def effects(n: int) -> list[dict[str, Any]]:
    return [{"job_type": "effect", "payload": {"work_s": i}} for i in range(n)]


async def started(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
    body = {"children": effects(n), "then": {"job_type": "effect", "payload": {"work_s": 9}}}
    response = await client.post("/v1/groups", json=body)
    assert response.status_code == 201, response.text
    group: dict[str, Any] = response.json()
    return group


async def test_every_job_of_a_nested_workflow_reads_the_same_tree(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    outer = await started(client, 3)
    gid = outer["id"]
    store = JobStore(redis, CATALOG)
    first, second = (await store.claim(QUEUE, 2, **CLAIM)).jobs
    assert (first.job_id, second.job_id) == (f"{gid}.0", f"{gid}.1")
    # Member 1, running, starts a group of its own (as its handler would, with ctx.group).
    inner = await start_group(
        store, [("effect", {"work_s": 0})] * 2, then=("effect", {"work_s": 0}), parent_id=f"{gid}.1"
    )
    assert (await store.complete(CATALOG["effect"], first.job_id, '"ok"')).moved

    trees = [
        (await client.get(f"/v1/workflows/{focus}")).json()
        for focus in (gid, f"{gid}.2", f"{gid}.then", inner.id, f"{inner.id}.1")
    ]
    for tree in trees:
        assert tree["root"] is None
        assert [g["id"] for g in tree["groups"]] == [gid]
    assert [t["focus"] for t in trees][-1] == f"{inner.id}.1"
    top = trees[0]["groups"][0]
    assert (top["state"], top["total"], top["counts"]["complete"]) == ("running", 3, 1)
    assert [(m["index"], m["state"]) for m in top["members"]] == [
        (0, "complete"),
        (1, "in_progress"),
        (2, "queued"),
    ]
    assert top["members"][0]["percent"] == 100
    # The continuation is not enqueued before the last member ends: no state yet.
    (then,) = top["continuation_jobs"]
    assert (then["id"], then["job_type"], then["when"], then["state"]) == (
        f"{gid}.then",
        "effect",
        "success",
        None,
    )
    nested = top["members"][1]["groups"]
    assert [g["id"] for g in nested] == [inner.id]
    assert [m["id"] for m in nested[0]["members"]] == [f"{inner.id}.0", f"{inner.id}.1"]
    assert nested[0]["parent_id"] == f"{gid}.1"
    assert trees[0]["truncated"] is False


async def test_the_job_that_started_a_group_is_its_root(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    starter = (await client.post("/v1/jobs/effect", json={"work_s": 0})).json()["id"]
    store = JobStore(redis, CATALOG)
    (running,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert running.job_id == starter
    group = await start_group(
        store,
        [("effect", {"work_s": 0})] * 2,
        then=("effect", {"work_s": 0}),
        parent_id=starter,
        submitted_by=TEST_KEY_NAME,
    )
    for focus in (starter, group.member_id(0)):
        tree = (await client.get(f"/v1/workflows/{focus}")).json()
        assert tree["root"]["id"] == starter
        assert tree["root"]["job_type"] == "effect"
        assert [g["id"] for g in tree["groups"]] == [group.id]


async def test_a_big_group_shows_its_counts_and_a_page_of_members(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    group = await started(client, 250)
    first = await client.get(f"/v1/workflows/{group['id']}")
    top = first.json()["groups"][0]
    assert (top["total"], top["counts"]["pending"]) == (250, 250)
    assert len(top["members"]) == 20
    assert top["next_offset"] == 20
    page = (await client.get(f"/v1/workflows/{group['id']}.7", params={"offset": 240})).json()
    members = page["groups"][0]["members"]
    assert [m["index"] for m in members] == list(range(240, 250))
    assert page["groups"][0]["next_offset"] is None
    # Without an offset, the page that holds the member asked for.
    around = (await client.get(f"/v1/workflows/{group['id']}.45")).json()["groups"][0]
    assert (around["offset"], around["members"][5]["id"]) == (40, f"{group['id']}.45")
    assert (await client.get(f"/v1/workflows/{group['id']}")).json()["groups"][0]["offset"] == 0
    # A nested group shows a smaller page, whatever its size.
    store = JobStore(redis, CATALOG)
    (running,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    await start_group(store, [("effect", {"work_s": 0})] * 30, parent_id=running.job_id)
    tree = (await client.get(f"/v1/workflows/{group['id']}")).json()
    (nested,) = tree["groups"][0]["members"][0]["groups"]
    assert (nested["total"], len(nested["members"]), nested["next_offset"]) == (
        30,
        NESTED_PAGE,
        NESTED_PAGE,
    )


async def test_a_job_of_no_workflow_is_itself_alone_and_bad_ids_are_problems(
    client: httpx.AsyncClient,
) -> None:
    alone = (await client.post("/v1/jobs/effect", json={"work_s": 0})).json()["id"]
    itself = (await client.get(f"/v1/workflows/{alone}")).json()
    assert (itself["root"]["id"], itself["root"]["state"], itself["groups"]) == (
        alone,
        "queued",
        [],
    )
    for focus in ("nothing-here", "g" + "0" * 32, "g" + "0" * 32 + ".then"):
        response = await client.get(f"/v1/workflows/{focus}")
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert focus in response.json()["detail"]
    bad = await client.get("/v1/workflows/a b")
    assert bad.status_code == 422
    too_long = await client.get(f"/v1/workflows/{'g' * 300}")
    assert too_long.status_code == 422
    assert (await client.get("/v1/workflows/x", params={"limit": 101})).status_code == 422


@pytest.fixture
async def tenants(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    keys = [
        api_key(TEST_KEY_NAME, TEST_KEY),
        api_key("own", "own-key-secret-0123456789", reads=Reads.OWN),
    ]
    async with serve(make_app(redis_url, keys=keys)) as c:
        yield c


async def test_a_key_that_reads_its_own_sees_only_its_workflows(
    tenants: httpx.AsyncClient,
) -> None:
    theirs = await started(tenants, 2)
    own = bearer("own-key-secret-0123456789")
    assert (await tenants.get(f"/v1/workflows/{theirs['id']}.0", headers=own)).status_code == 404
    body = {"children": effects(1)}
    mine = (await tenants.post("/v1/groups", json=body, headers=own)).json()
    assert (await tenants.get(f"/v1/workflows/{mine['id']}.0", headers=own)).status_code == 200
    alone = (await tenants.post("/v1/jobs/effect", json={"work_s": 0})).json()["id"]
    assert (await tenants.get(f"/v1/workflows/{alone}", headers=own)).status_code == 404


async def test_a_workflow_read_while_redis_is_down_is_a_503_problem(
    own_redis: RedisProcess,
) -> None:
    async with serve(make_app(own_redis.url, redis=tight(own_redis.url))) as client:
        client.timeout = httpx.Timeout(QUICK_S)
        group = await started(client, 2)
        own_redis.stop()
        assert_redis_unavailable(await client.get(f"/v1/workflows/{group['id']}.1"))
        own_redis.start()
        # Back by itself; the restarted server kept no data: a 404, no longer a 503.
        assert (await client.get(f"/v1/workflows/{group['id']}.1")).status_code == 404
