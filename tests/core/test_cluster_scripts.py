"""Every script of core's `lua/` on a real Redis Cluster (3 primaries, 3
replicas), run as the store runs it, with Redis 7's `#!lua` flags on: a
script that touched a key of another slot than its declared keys' would be
refused ("Script attempted to access keys that do not hash to the same
slot"), and one whose keys spanned slots would not be sent at all.

Each script is loaded on the primaries (SCRIPT LOAD, on its first NOSCRIPT)
by its first run, the per-job functions' library (FUNCTION LOAD) by the
first call of one of them; the test ends by checking that every script of
the loader was, so a new script cannot go untested here."""

import hashlib
from dataclasses import replace
from importlib.resources import files
from typing import cast

import pytest
from arq.connections import ArqRedis
from redis.crc import key_slot

from conveyor_core import keys
from conveyor_core.catalog import Catalog, load_catalog
from conveyor_core.checkpoint import Checkpoint
from conveyor_core.cluster import ClusterClient
from conveyor_core.debounce import Debounce
from conveyor_core.enqueue import enqueue
from conveyor_core.groups import Call, cancel_group, start_group
from conveyor_core.jobs import JobState, now_ms
from conveyor_core.lua import JOB_FUNCTIONS, job_library, lua_script
from conveyor_core.ratelimit import RateLimit, RateLimiter
from conveyor_core.snooze import Hold
from conveyor_core.stats import take_counts
from conveyor_core.store import Claim, Fetch, JobStore, Quota
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")

LOCK_MS = 30_000
RETENTION_MS = 60_000


class TakeOne:
    """The worker's side of finish and fetch: asks for one more job."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []

    def fetch(self) -> Fetch:
        return Fetch(1, LOCK_MS, RETENTION_MS, 100)

    def take(self, claim: Claim) -> None:
        self.claims.append(claim)


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _every_script() -> dict[str, str]:
    """Each script the loader knows, by sha1; not those the store runs as
    functions (JOB_FUNCTIONS: `_job_library_loaded`)."""
    functions = {script for _, script, _ in JOB_FUNCTIONS}
    names = sorted(
        p.name[:-4]
        for p in files("conveyor_core").joinpath("lua").iterdir()
        if p.name.endswith(".lua") and p.name[:-4] not in functions
    )
    return {name: _sha(lua_script(name)) for name in names}


async def _job_library_loaded(cluster: ClusterClient) -> bool:
    """The per-job functions' library, on every primary."""
    code, _ = job_library()
    name = code.partition("\n")[0].removeprefix("#!lua name=")
    listed = await cluster.execute_command(
        "FUNCTION", "LIST", "LIBRARYNAME", name, target_nodes=cluster.get_primaries()
    )
    return len(cluster.get_primaries()) == len(listed) and all(listed.values())


async def _loaded(cluster: ClusterClient, sha: str) -> bool:
    """On every primary (a cluster client asks each and answers for all)."""
    (found,) = await cluster.script_exists(sha)
    return bool(found)


async def claimed_one(store: JobStore, queue: str) -> tuple[str, str]:
    claim = await store.claim(
        queue, 1, lock_ttl_ms=LOCK_MS, cancelled_retention_ms=RETENTION_MS, scan_limit=100
    )
    assert len(claim.jobs) == 1, claim
    return claim.jobs[0].job_id, claim.jobs[0].token


async def test_every_script_runs_on_a_cluster_with_its_keys_in_one_slot(
    cluster_redis: ClusterClient,
) -> None:
    await cluster_redis.script_flush()  # on every primary
    await cluster_redis.function_flush()  # type: ignore[misc]  # the per-job functions' library
    catalog = load_catalog(jobs.MODULES.split(","))
    # The store is typed for a single node's client; on a cluster it takes the
    # cluster client, which carries what it reads from one (cluster.py).
    redis = cast(ArqRedis, cluster_redis)
    store = JobStore(redis, catalog)
    queue = CREATE_TASK.queue
    task = CreateTask(sleep_s=0)

    # submit, with everything a submit may spend or write: the caller's rate
    # (rate_limit, a call of its own), its quota (quota), a debounce key, an
    # Idempotency-Key, and a parent's record (link_child).
    rate = RateLimit(keys.rate_limit_key("tester"), 1000, 1000)
    quota = Quota(keys.outstanding_key("tester"), 100)
    parent = await enqueue(
        store,
        CREATE_TASK,
        task,
        idempotency_key="one",
        rate_limit=rate,
        submitted_by="tester",
        quota=quota,
    )
    assert parent.created
    assert keys.queue_of(parent.job_id) == queue
    again = await enqueue(
        store, CREATE_TASK, task, idempotency_key="one", submitted_by="tester", quota=quota
    )
    assert (again.created, again.job_id) == (False, parent.job_id)
    debounced = [
        await enqueue(store, CREATE_TASK, task, debounce=Debounce("d", 60, "replace"))
        for _ in range(2)
    ]
    assert debounced[1].debounced
    assert debounced[1].job_id == debounced[0].job_id

    # claim, progress, checkpoint, renew, and the parent's record lists a child.
    parent_id, token = await claimed_one(store, queue)
    assert parent_id == parent.job_id
    child = await enqueue(store, CREATE_TASK, task, parent_id=parent_id)
    assert await cluster_redis.hget(keys.job_key(parent_id), f"child:{child.job_id}")  # type: ignore[misc]
    assert await store.report_progress(parent_id, 50, "half", token=token)
    assert await store.save_checkpoint(parent_id, Checkpoint(1, now_ms()), token=token)
    assert await store.renew_locks([(parent_id, token)], LOCK_MS) == []

    # finish and fetch: the end of a try claims the next job in the same call.
    taker = TakeOne()
    assert await store.complete(CREATE_TASK, parent_id, "1", taker, token=token)
    (fetched,) = taker.claims[0].jobs
    # finish: a retry, a snooze with a hold, a death; settle; requeue.
    assert await store.retry_later(CREATE_TASK, fetched.job_id, now_ms(), "{}", token=fetched.token)
    job_id, token = await claimed_one(store, queue)
    assert await store.snooze(CREATE_TASK, job_id, now_ms(), token=token, hold=Hold("type", 10))
    job_id, token = await claimed_one(store, queue)
    assert await store.dead(CREATE_TASK, job_id, '{"type": "E", "message": ""}', token=token)
    state, _ = await store.requeue(job_id, {})
    assert state == "requeued"
    job_id, token = await claimed_one(store, queue)
    assert await store.settle_unstarted(queue, job_id, "{}", RETENTION_MS, token=token) == "dead"

    # cancel (a waiting job, a running one), read, listing, stats of the queue.
    waiting = await enqueue(store, CREATE_TASK, task)
    assert (await store.cancel(waiting.job_id))[0] == "cancelled_now"
    running = await enqueue(store, CREATE_TASK, task)
    running_id, _ = await claimed_one(store, queue)
    assert (await store.cancel(running_id))[0] == "cancelling"
    read = await store.read(running.job_id, rate_limit=rate)
    assert read.found is not None
    assert read.found[1].id == running.job_id
    page = await store.list(state=JobState.DEAD, queue=queue)
    assert [job.id for job in page.items] == [job_id]
    assert (await store.queue_stats(queue)).dead == 1
    assert await store.trim_expired(queue) == 0
    assert (await store.pause(queue)).changed
    assert await store.resume(queue)

    # bulk: requeue the dead job, cancel it, delete it.
    for action in ("requeue", "cancel", "delete"):
        batch = await store.bulk_batch(action, queue, [job_id], RETENTION_MS)
        assert batch.done == 1, (action, batch)

    # The caller's limiter on its own; the digest's take of counts.
    limiter = RateLimiter(redis, 10, 10)
    assert (await limiter.hit("tester")).allowed
    counts = await take_counts(redis, keys.job_id_for(queue), [queue])
    assert counts is not None

    # Groups: the hash, members and a continuation of their queue in one slot;
    # a continuation of another slot through the group's shard's outbox; the
    # creating job's record (another slot) by a call of its own.
    elsewhere = _queue_in_another_slot(queue)
    catalog_x = Catalog([*catalog, replace(CREATE_TASK, name="elsewhere", queue=elsewhere)])
    store_x = JobStore(redis, catalog_x)
    owner = await enqueue(store_x, catalog_x["elsewhere"], task)
    owner_id, _ = await claimed_one(store_x, elsewhere)
    group = await start_group(
        store_x,
        [(CREATE_TASK, task), (CREATE_TASK, task)],
        then=Call(CREATE_TASK, task),
        on_success=Call("elsewhere", task),
        parent_id=owner.job_id,
        submitted_by="tester",
        quota=quota,
    )
    assert owner_id == owner.job_id
    assert await cluster_redis.hget(keys.job_key(owner_id), f"group:{group.id}")  # type: ignore[misc]
    ended = 0
    while ended < len(group.member_ids):  # jobs of the steps above wait first
        job_id, token = await claimed_one(store_x, queue)
        assert await store_x.complete(CREATE_TASK, job_id, "1", token=token)
        ended += job_id in group.member_ids
    then_id, success_id = group.continuation_ids
    assert await cluster_redis.zscore(queue, then_id) is not None
    assert await store_x.drain_outbox(queue) == 1
    assert await cluster_redis.zscore(elsewhere, success_id) is not None
    assert await cancel_group(store_x, group.id) is not None

    missing = [
        name for name, sha in _every_script().items() if not await _loaded(cluster_redis, sha)
    ]
    assert missing == [], "scripts this test did not run on the cluster"
    assert await _job_library_loaded(cluster_redis)


def _queue_in_another_slot(queue: str) -> str:
    """A queue name whose slot is not `queue`'s."""
    for n in range(100):
        name = f"elsewhere-{n}"
        if key_slot(name.encode()) != key_slot(queue.encode()):
            return name
    raise AssertionError("every name in one slot")
