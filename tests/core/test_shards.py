"""One queue over several shards (a catalog `Queue` with `shards`): where
submits go, what the claim of each shard starts, and the queue read as a
whole (statistics, listing, history, pause, cancel, requeue, bulk), on one
node and on a real Redis Cluster (3 primaries, 3 replicas)."""

import re
from collections import Counter
from dataclasses import replace

import pytest
from arq.connections import ArqRedis

from conveyor_core import keys
from conveyor_core.catalog import JOB_ID_PATTERN, Catalog, JobType, Queue
from conveyor_core.debounce import Debounce
from conveyor_core.enqueue import enqueue
from conveyor_core.flow import Limits, Rate, claim_limits, shard_share
from conveyor_core.history import read_history
from conveyor_core.jobs import HoldReason, JobState, now_ms
from conveyor_core.store import JobStore
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")

QUEUE = "sharded"
SHARDS = keys.shard_names(QUEUE, 3)
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}
ERROR = '{"type": "E", "message": "m"}'
# Enough jobs that a shard left empty by the random spread is a 1e-5 chance.
SPREAD = 30


def _on_queue(name: str) -> JobType:
    (job_type,) = [t for t in jobs.JOB_TYPES if t.name == name]
    return replace(job_type, queue=QUEUE)


FLAKY, FAIR, CAPPED = _on_queue("flaky"), _on_queue("fair"), _on_queue("capped")
CATALOG = Catalog([FLAKY, FAIR, CAPPED], queues=[Queue(QUEUE, shards=3)])


@pytest.fixture
def store(node_or_cluster_redis: ArqRedis) -> JobStore:
    return JobStore(node_or_cluster_redis, CATALOG)


def shard_of(job_id: str) -> str:
    shard = keys.queue_of(job_id)
    assert shard in SHARDS
    return shard


# -- names, routing and limits ------------------------------------------------


def test_shard_zero_is_the_queue_and_the_others_name_their_number() -> None:
    assert SHARDS == ["sharded", "sharded~1", "sharded~2"]
    assert {keys.queue_of_shard(shard) for shard in SHARDS} == {QUEUE}
    assert Catalog([FLAKY]).shards(QUEUE) == [QUEUE]  # not declared: one shard
    assert re.fullmatch(JOB_ID_PATTERN, keys.job_id_for("sharded~2"))
    assert keys.queue_of(keys.job_id_for("sharded~2")) == "sharded~2"


@pytest.mark.parametrize("shards", [0, 65, True, 2.0])
def test_a_queue_takes_1_to_64_shards(shards: object) -> None:
    with pytest.raises(ValueError, match="shards must be an integer from 1 to 64"):
        Queue(QUEUE, shards=shards)  # type: ignore[arg-type]


def test_a_queue_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="queue 'sharded' is declared twice"):
        Catalog([FLAKY], queues=[Queue(QUEUE, 2), Queue(QUEUE, 3)])


def test_a_keys_jobs_and_a_repeated_key_go_to_one_shard() -> None:
    for tenant in ("a", "b", "c"):
        found = {CATALOG.shard_for(FAIR, {"tenant_id": tenant, "work_s": 0}) for _ in range(20)}
        assert len(found) == 1
    tenants = {CATALOG.shard_for(FAIR, {"tenant_id": f"t{n}", "work_s": 0}) for n in range(30)}
    assert tenants == set(SHARDS)
    for route in ({"idempotency_key": "k1"}, {"debounce_key": "k1"}):
        found = {CATALOG.shard_for(FLAKY, {"fail_times": 0}, **route) for _ in range(20)}
        assert len(found) == 1
    # Another api key's Idempotency-Key is another record: it may land elsewhere.
    scoped = {
        CATALOG.shard_for(FLAKY, {}, idempotency_key="k1", submitted_by=f"key{n}")
        for n in range(30)
    }
    assert scoped == set(SHARDS)


def test_one_shard_keeps_todays_limits_and_several_split_a_types_own() -> None:
    limits = Limits(max_running=2, key="tenant_id", max_running_per_key=1, rate=Rate(10, 1.0))
    assert claim_limits([("t", limits)]) == (
        '{"t":{"n":2,"kn":1,"r":[10,1000],"k":1}}'  # as before shards
    )
    split = [claim_limits([("t", limits)], 3, index) for index in range(3)]
    assert split == [
        '{"t":{"n":1,"kn":1,"r":[4,1000],"k":1}}',
        '{"t":{"n":1,"kn":1,"r":[3,1000],"k":1}}',
        '{"t":{"n":1,"kn":1,"r":[3,1000],"k":1}}',
    ]
    assert [shard_share(7, 3, i) for i in range(3)] == [3, 2, 2]
    assert [shard_share(1, 3, i) for i in range(3)] == [1, 1, 1]  # every shard runs it


# -- the store over three shards ----------------------------------------------


async def test_submits_spread_over_every_shard_and_read_as_the_queue(
    store: JobStore, node_or_cluster_redis: ArqRedis
) -> None:
    submitted = [await enqueue(store, FLAKY, {"fail_times": 0}) for _ in range(SPREAD)]
    by_shard = Counter(shard_of(s.job_id) for s in submitted)
    assert set(by_shard) == set(SHARDS)
    for job in submitted:
        assert await node_or_cluster_redis.zscore(shard_of(job.job_id), job.job_id) is not None
        read = await store.get(job.job_id)
        assert read is not None
        assert (read.queue, read.state) == (QUEUE, JobState.QUEUED)
    stats = await store.queue_stats(QUEUE)
    assert (stats.name, stats.ready, stats.in_progress) == (QUEUE, SPREAD, 0)
    assert stats.oldest_ready_age_s >= 0


async def test_each_shards_claim_starts_its_own_jobs_and_the_queue_lists_them_all(
    store: JobStore, node_or_cluster_redis: ArqRedis
) -> None:
    submitted = {(await enqueue(store, FLAKY, {"fail_times": 0})).job_id for _ in range(SPREAD)}
    claimed: list[str] = []
    for shard in SHARDS:
        claim = await store.claim(shard, 100, **CLAIM)
        assert {shard_of(j.job_id) for j in claim.jobs} <= {shard}
        claimed += [j.job_id for j in claim.jobs]
    assert sorted(claimed) == sorted(submitted)
    assert (await store.queue_stats(QUEUE)).in_progress == SPREAD
    for job_id in claimed:
        ended = await store.complete(FLAKY, job_id, "1")
        assert ended.moved
        index = keys.index_key(shard_of(job_id), JobState.COMPLETE.value)
        assert await node_or_cluster_redis.zscore(index, job_id) is not None
    listed: list[str] = []
    cursor: str | None = None
    while True:  # pages of 7, each a bounded read of every shard, merged
        page = await store.list(state=JobState.COMPLETE, queue=QUEUE, limit=7, cursor=cursor)
        listed += [job.id for job in page.items]
        assert all(job.queue == QUEUE for job in page.items)
        if (cursor := page.next_cursor) is None:
            break
    assert sorted(listed) == sorted(submitted)
    history = await read_history(node_or_cluster_redis, QUEUE, 2, shards=SHARDS)
    assert sum(minute.total("complete") for minute in history) == SPREAD


async def test_a_keys_jobs_share_a_shard_and_a_repeated_key_finds_its_job(
    store: JobStore,
) -> None:
    for tenant in ("a", "b", "c", "d"):
        ids = [
            (await enqueue(store, FAIR, {"tenant_id": tenant, "work_s": 0})).job_id
            for _ in range(4)
        ]
        assert len({shard_of(job_id) for job_id in ids}) == 1
    first = await enqueue(store, FLAKY, {"fail_times": 0}, idempotency_key="once")
    again = await enqueue(store, FLAKY, {"fail_times": 0}, idempotency_key="once")
    assert first.created
    assert not again.created
    assert again.job_id == first.job_id
    for key in ("burst-a", "burst-b", "burst-c"):  # a debounce key's window, likewise
        window = Debounce(key, 60)
        kept = await enqueue(store, FLAKY, {"fail_times": 0}, debounce=window)
        later = await enqueue(store, FLAKY, {"fail_times": 0}, debounce=window)
        assert kept.created
        assert later.debounced
        assert later.job_id == kept.job_id


async def test_a_types_running_limit_is_split_over_the_shards(store: JobStore) -> None:
    """`capped` runs at most 2 at once: over 3 shards each starts at most its
    share, at least 1 (shard_share), so at most 3 run at once."""
    for _ in range(SPREAD):
        await enqueue(store, CAPPED, {"work_s": 0})
    started = [len((await store.claim(shard, 100, **CLAIM)).jobs) for shard in SHARDS]
    assert started == [1, 1, 1]
    again = [len((await store.claim(shard, 100, **CLAIM)).jobs) for shard in SHARDS]
    assert again == [0, 0, 0]


async def test_a_pause_holds_every_shard_until_resume(store: JobStore) -> None:
    submitted = [(await enqueue(store, FLAKY, {"fail_times": 0})).job_id for _ in range(SPREAD)]
    paused = await store.pause(QUEUE)
    assert paused.changed
    assert (await store.queue_stats(QUEUE)).paused_at_ms == paused.at_ms
    for shard in SHARDS:
        assert (await store.claim(shard, 100, **CLAIM)).jobs == []
    on_last = next(job_id for job_id in submitted if shard_of(job_id) == SHARDS[-1])
    read = await store.get(on_last)
    assert read is not None
    assert read.waiting_reason is HoldReason.PAUSED
    (listed,) = [
        job
        for job in (await store.list(state=JobState.QUEUED, queue=QUEUE, limit=50)).items
        if job.id == on_last
    ]
    assert listed.waiting_reason is HoldReason.PAUSED
    assert await store.resume(QUEUE)
    started = sum([len((await store.claim(s, 100, **CLAIM)).jobs) for s in SHARDS])
    assert started == SPREAD


async def test_cancel_requeue_and_bulk_reach_a_job_on_any_shard(store: JobStore) -> None:
    submitted = [(await enqueue(store, FLAKY, {"fail_times": 0})).job_id for _ in range(SPREAD)]
    elsewhere = [job_id for job_id in submitted if shard_of(job_id) != QUEUE]
    outcome, job = await store.cancel(elsewhere[0])
    assert outcome == "cancelled_now"
    assert job is not None
    assert (job.queue, job.state) == (QUEUE, JobState.CANCELLED)
    claimed = (await store.claim(shard_of(elsewhere[1]), 100, **CLAIM)).jobs
    assert elsewhere[1] in {j.job_id for j in claimed}
    assert (await store.dead(FLAKY, elsewhere[1], ERROR)).moved
    outcome, job = await store.requeue(elsewhere[1], {})
    assert outcome == "requeued"
    assert job is not None
    assert (job.queue, job.state) == (QUEUE, JobState.QUEUED)
    waiting = [
        job.id
        for job in await store.get_many(submitted)
        if job is not None and job.state is JobState.QUEUED
    ]
    assert {shard_of(job_id) for job_id in waiting} == set(SHARDS)
    batch = await store.bulk_batch("cancel", QUEUE, waiting, 60_000)
    assert (batch.done, batch.skipped) == (len(waiting), 0)
    assert (await store.queue_stats(QUEUE)).ready == 0


async def test_a_renewal_moves_each_running_jobs_entry_in_its_own_shard(store: JobStore) -> None:
    submitted = [(await enqueue(store, FLAKY, {"fail_times": 0})).job_id for _ in range(30)]
    claims = [
        claim
        for shard in SHARDS
        for claim in (await store.claim(shard, 100, **{**CLAIM, "lock_ttl_ms": 1_000})).jobs
    ]
    assert {claim.job_id for claim in claims} == set(submitted)
    tries = [(claim.job_id, claim.token) for claim in claims]
    assert await store.renew_locks(tries, 60_000, QUEUE) == []
    for job_id in submitted:
        # Its lock's new end, in its own shard's queue key (no other shard holds it).
        score = await store.redis.zscore(shard_of(job_id), job_id)
        assert score is not None, job_id
        assert score > now_ms() + 30_000, job_id  # the default priority's band starts at 0
