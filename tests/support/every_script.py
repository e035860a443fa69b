"""Every script and function of core's loader, run through its main paths as
the store runs them (`exercise`). The declared-keys test watches it under
MONITOR on one node (test_script_keys.py); the cluster test runs it on a
real cluster, where a call whose keys spanned slots would not be sent and
a script that touched another slot's key would be refused
(test_cluster_scripts.py)."""

import asyncio
from dataclasses import replace

from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.catalog import Catalog, load_catalog
from conveyor_core.checkpoint import Checkpoint
from conveyor_core.debounce import Debounce
from conveyor_core.enqueue import enqueue
from conveyor_core.groups import Call, cancel_group, start_group
from conveyor_core.jobs import JobState, now_ms
from conveyor_core.ratelimit import RateLimit, RateLimiter
from conveyor_core.snooze import Hold
from conveyor_core.stats import take_counts
from conveyor_core.store import Claim, Fetch, JobStore, Quota
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support import jobs

LOCK_MS = 30_000
RETENTION_MS = 60_000
# A queue in another hash slot than the test jobs' (arq:queue).
ELSEWHERE = "elsewhere-0"


class TakeOne:
    """The worker's side of finish and fetch: asks for one more job."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []

    def fetch(self) -> Fetch:
        return Fetch(1, LOCK_MS, RETENTION_MS, 100)

    def take(self, claim: Claim) -> None:
        self.claims.append(claim)


def exercised_catalog() -> Catalog:
    """The test jobs' catalog, with a job type of a queue in another slot."""
    catalog = load_catalog(jobs.MODULES.split(","))
    return Catalog([*catalog, replace(CREATE_TASK, name=ELSEWHERE, queue=ELSEWHERE)])


async def exercise(redis: ArqRedis) -> None:
    """Every script's main paths, as the store runs them."""
    catalog = exercised_catalog()
    store = JobStore(redis, catalog)
    queue = CREATE_TASK.queue
    task = CreateTask(sleep_s=0)

    async def claimed_one(on: str = queue) -> tuple[str, str]:
        claim = await store.claim(
            on, 1, lock_ttl_ms=LOCK_MS, cancelled_retention_ms=RETENTION_MS, scan_limit=100
        )
        assert len(claim.jobs) == 1, claim
        return claim.jobs[0].job_id, claim.jobs[0].token

    async def claim_all(on: str = queue) -> None:
        """Claim every job that waits, out of the way of the steps that follow."""
        while (
            await store.claim(
                on, 10, lock_ttl_ms=LOCK_MS, cancelled_retention_ms=RETENTION_MS, scan_limit=100
            )
        ).jobs:
            pass

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
    again = await enqueue(
        store, CREATE_TASK, task, idempotency_key="one", submitted_by="tester", quota=quota
    )
    assert (again.created, again.job_id) == (False, parent.job_id)
    debounced = [
        await enqueue(store, CREATE_TASK, task, debounce=Debounce("d", 60, "replace"))
        for _ in range(2)
    ]
    assert debounced[1].debounced

    parent_id, token = await claimed_one()
    child = await enqueue(store, CREATE_TASK, task, parent_id=parent_id)
    assert child.created
    assert await store.report_progress(parent_id, 50, "half", token=token)
    assert await store.save_checkpoint(parent_id, Checkpoint(1, now_ms()), token=token)
    assert await store.renew_locks([(parent_id, token)], LOCK_MS, queue) == []

    taker = TakeOne()
    assert await store.complete(CREATE_TASK, parent_id, "1", taker, token=token)
    (fetched,) = taker.claims[0].jobs
    assert await store.retry_later(CREATE_TASK, fetched.job_id, now_ms(), "{}", token=fetched.token)
    job_id, token = await claimed_one()
    assert await store.snooze(CREATE_TASK, job_id, now_ms(), token=token, hold=Hold("type", 10))
    job_id, token = await claimed_one()
    assert await store.dead(CREATE_TASK, job_id, '{"type": "E", "message": ""}', token=token)
    state, _ = await store.requeue(job_id, {})
    assert state == "requeued"
    job_id, token = await claimed_one()
    assert await store.settle_unstarted(queue, job_id, "{}", RETENTION_MS, token=token) == "dead"

    waiting = await enqueue(store, CREATE_TASK, task)
    assert (await store.cancel(waiting.job_id))[0] == "cancelled_now"
    running = await enqueue(store, CREATE_TASK, task)
    running_id, running_token = await claimed_one()
    assert (await store.cancel(running_id))[0] == "cancelling"
    assert await store.cancelled(CREATE_TASK, running_id, token=running_token)
    read = await store.read(running.job_id, rate_limit=rate)
    assert read.found is not None
    page = await store.list(state=JobState.DEAD, queue=queue)
    assert [job.id for job in page.items] == [job_id]
    assert (await store.queue_stats(queue)).dead == 1
    assert await store.trim_expired(queue) == 0
    assert (await store.pause(queue)).changed
    assert await store.resume(queue)
    put_back_id, put_back_token = await claimed_one()
    assert await store.put_back(CREATE_TASK, put_back_id, token=put_back_token)

    for action in ("requeue", "cancel", "delete"):
        batch = await store.bulk_batch(action, queue, [job_id], RETENTION_MS)
        assert batch.done == 1, (action, batch)

    # Flow control: a type with a running limit, one with a rate, and a keyed one (fairness,
    # running counts per key, holds), once the jobs above that still wait are
    # claimed out of the way.
    await claim_all()
    capped, keyed = catalog["capped"], catalog["per_tenant"]
    await enqueue(store, capped, jobs.Effect(work_s=0))
    capped_id, capped_token = await claimed_one(capped.queue)
    assert await store.complete(capped, capped_id, "1", token=capped_token)
    paced = catalog["paced"]  # a rate: its start log
    await enqueue(store, paced, jobs.Effect(work_s=0))
    paced_id, paced_token = await claimed_one(paced.queue)
    assert await store.complete(paced, paced_id, "1", token=paced_token)
    for _ in range(2):
        await enqueue(store, keyed, jobs.Tenanted(tenant_id="t1", work_s=0))
    keyed_id, keyed_token = await claimed_one(keyed.queue)
    assert await store.snooze(keyed, keyed_id, now_ms(), token=keyed_token, hold=Hold("key", 10))
    await asyncio.sleep(0.05)  # the key's hold (10 ms) ends
    keyed_id, keyed_token = await claimed_one(keyed.queue)
    assert await store.dead(keyed, keyed_id, "{}", token=keyed_token)
    assert (await store.requeue(keyed_id, {}))[0] == "requeued"
    assert (await store.cancel(keyed_id))[0] == "cancelled_now"
    # A keyed job settled unstarted, and one deleted in bulk while it waits.
    await enqueue(store, keyed, jobs.Tenanted(tenant_id="t2", work_s=0))
    keyed_id, keyed_token = await claimed_one(keyed.queue)
    assert await store.settle_unstarted(
        keyed.queue, keyed_id, "{}", RETENTION_MS, token=keyed_token
    )
    waiting_keyed = await enqueue(store, keyed, jobs.Tenanted(tenant_id="t3", work_s=0))
    deleted = await store.bulk_batch("delete", keyed.queue, [waiting_keyed.job_id], RETENTION_MS)
    assert deleted.done == 1

    limiter = RateLimiter(redis, 10, 10)
    assert (await limiter.hit("tester")).allowed
    assert await take_counts(redis, keys.job_id_for(queue), [queue]) is not None

    # Groups: created by a running job, two members, a continuation of their
    # queue and one of another; then cancelled.
    await claim_all()
    owner = await enqueue(store, CREATE_TASK, task)
    owner_id, _ = await claimed_one()
    assert owner_id == owner.job_id
    children = [(CREATE_TASK, task), (CREATE_TASK, task)]
    group = await start_group(
        store,
        children,
        then=Call(CREATE_TASK, task),
        on_success=Call(ELSEWHERE, task),
        parent_id=owner_id,
        submitted_by="tester",
        quota=quota,
    )
    # Its creation resumed (a retried try's): the members' submit skips those that exist.
    resumed = await start_group(
        store,
        children,
        then=Call(CREATE_TASK, task),
        on_success=Call(ELSEWHERE, task),
        group_id=group.id,
        parent_id=owner_id,
    )
    assert not resumed.created
    for _ in group.member_ids:
        member_id, member_token = await claimed_one()
        assert member_id in group.member_ids
        assert await store.complete(CREATE_TASK, member_id, "1", token=member_token)
    assert await cancel_group(store, group.id) is not None

    # A cluster's calls: on a cluster a call touches one slot, so the creating
    # job's record (in another slot than the group's) is linked by a call of
    # its own (link), and a continuation of another slot is started
    # through its group's shard's outbox (group_outbox, group_continue). The
    # store makes the same calls on one node when told it is a cluster's.
    cluster_store = JobStore(redis, catalog)
    cluster_store.one_slot_per_call = True
    await claim_all()
    elsewhere = catalog[ELSEWHERE]
    owner = await enqueue(cluster_store, elsewhere, task)
    owner_id, _ = await claimed_one(elsewhere.queue)
    assert owner_id == owner.job_id
    group = await start_group(
        cluster_store, [(CREATE_TASK, task)], on_success=Call(elsewhere, task), parent_id=owner_id
    )
    (member_id,) = group.member_ids
    claimed_id, member_token = await claimed_one()
    assert claimed_id == member_id
    assert await cluster_store.complete(CREATE_TASK, member_id, "1", token=member_token)
    assert await cluster_store.drain_outbox(queue) == 1
