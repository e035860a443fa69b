"""Debounce against a real Redis: a burst of submits with one key leaves one job
(keep-first) or the last payload (replace), atomically, per job type and api key."""

import asyncio
import time

import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.debounce import Debounce, DebounceError
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobState, now_ms
from conveyor_core.scores import split_score
from conveyor_core.store import ArqJob, JobStore
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    """Each test on one node, then on a cluster."""
    return node_or_cluster_redis


CATALOG = load_catalog(jobs.MODULES.split(","))
EFFECT = CATALOG["effect"]
QUEUE = EFFECT.queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


@pytest.fixture
def store(redis: ArqRedis) -> JobStore:
    return JobStore(redis, CATALOG)


async def payload_of(redis: ArqRedis, job_id: str) -> dict[str, object]:
    raw = await redis.get(f"arq:job:{job_id}")
    assert raw is not None
    job = ArqJob.decode(raw)
    assert job is not None
    return dict(job.payload)


async def test_1000_submits_in_a_keep_first_window_leave_one_job(
    store: JobStore, redis: ArqRedis
) -> None:
    debounce = Debounce("burst", 30)

    async def submit(i: int) -> tuple[str, bool, bool]:
        done = await enqueue(store, EFFECT, jobs.Effect(work_s=i), debounce=debounce)
        return done.job_id, done.created, done.debounced

    # Concurrently, 50 at a time: the check and the create are one step.
    answers = []
    for start in range(0, 1000, 50):
        answers += await asyncio.gather(*(submit(i) for i in range(start, start + 50)))

    assert await redis.zcard(QUEUE) == 1
    assert len({job_id for job_id, _, _ in answers}) == 1
    assert sum(created for _, created, _ in answers) == 1
    assert sum(debounced for _, _, debounced in answers) == 999
    # The job keeps the payload of the one submit that created it.
    (created_by,) = [i for i, (_, created, _) in enumerate(answers) if created]
    assert await payload_of(redis, answers[0][0]) == {"work_s": float(created_by)}


async def test_1000_submits_in_a_replace_window_leave_the_last_payload(
    store: JobStore, redis: ArqRedis
) -> None:
    debounce = Debounce("burst", 30, "replace")
    answers = [
        await enqueue(store, EFFECT, jobs.Effect(work_s=i), debounce=debounce) for i in range(1000)
    ]

    assert await redis.zcard(QUEUE) == 1
    assert len({a.job_id for a in answers}) == 1
    assert [a.created for a in answers] == [True] + [False] * 999
    assert all(a.replaced for a in answers[1:])
    assert await payload_of(redis, answers[0].job_id) == {"work_s": 999.0}
    job = await store.get(answers[0].job_id)
    assert job is not None
    assert job.state is JobState.QUEUED
    assert job.payload == {"work_s": 999.0}


async def test_replace_with_delay_pushes_the_start_back(store: JobStore, redis: ArqRedis) -> None:
    debounce = Debounce("burst", 2, "replace", delay=True)
    first = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce)
    await asyncio.sleep(0.3)
    before_ms = now_ms()
    again = await enqueue(store, EFFECT, jobs.Effect(work_s=1), debounce=debounce)
    after_ms = now_ms()

    assert (again.job_id, again.replaced) == (first.job_id, True)
    score = await redis.zscore(QUEUE, first.job_id)
    assert score is not None
    _, due_ms = split_score(score)
    # A window (2 s) from the moment of the second submit.
    assert before_ms + 2000 <= due_ms <= after_ms + 2000
    assert (await store.claim(QUEUE, 5, **CLAIM)).jobs == []  # not due yet


async def test_a_kept_job_that_started_is_not_replaced(store: JobStore) -> None:
    debounce = Debounce("burst", 30, "replace")
    first = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce)
    (claimed,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert claimed.job_id == first.job_id

    second = await enqueue(store, EFFECT, jobs.Effect(work_s=1), debounce=debounce)
    third = await enqueue(store, EFFECT, jobs.Effect(work_s=2), debounce=debounce)

    assert second.created
    assert second.job_id != first.job_id
    assert (third.job_id, third.replaced) == (second.job_id, True)


async def test_keys_are_per_api_key_and_the_window_ends(store: JobStore, redis: ArqRedis) -> None:
    # A window that three submits on a busy machine stay well within.
    debounce = Debounce("burst", 1.5)
    a = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce, submitted_by="a")
    window_ends_by_s = time.monotonic() + debounce.window_s
    b = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce, submitted_by="b")
    again = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce, submitted_by="a")
    assert a.created
    assert b.created
    assert a.job_id != b.job_id
    assert (again.job_id, again.debounced) == (a.job_id, True)

    await asyncio.sleep(window_ends_by_s - time.monotonic() + 0.05)
    later = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce, submitted_by="a")
    assert later.created
    assert later.job_id != a.job_id
    assert await redis.zcard(QUEUE) == 3


async def test_a_replaced_keyed_job_moves_to_its_new_key(store: JobStore, redis: ArqRedis) -> None:
    fair = CATALOG["fair"]
    debounce = Debounce("burst", 30, "replace")
    first = await enqueue(store, fair, jobs.Tenanted(tenant_id="a", work_s=0), debounce=debounce)
    await enqueue(store, fair, jobs.Tenanted(tenant_id="b", work_s=0), debounce=debounce)

    prefix = f"conveyor:{{{QUEUE}}}"
    assert await redis.hget(f"{prefix}:flow", first.job_id) == b"fair\nb"  # type: ignore[misc]
    assert await redis.zcard(f"{prefix}:keyq:fair:a") == 0
    assert await redis.zcard(f"{prefix}:keyq:fair:b") == 1
    (claimed,) = (await store.claim(QUEUE, 5, **CLAIM)).jobs
    assert claimed.job_id == first.job_id


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"key": "", "window_s": 1}, "debounce_key"),
        ({"key": "k", "window_s": 0}, "debounce_window_s"),
        ({"key": "k", "window_s": float("nan")}, "debounce_window_s"),
        ({"key": "k", "window_s": 1, "mode": "latest"}, "debounce_mode"),
        ({"key": "k", "window_s": 1, "delay": True}, "debounce_delay"),
    ],
)
def test_a_debounce_that_cannot_be_names_its_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(DebounceError) as caught:
        Debounce(**options)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_replace_with_delay_creates_its_job_a_window_ahead(
    store: JobStore, redis: ArqRedis
) -> None:
    before_ms = now_ms()
    first = await enqueue(
        store, EFFECT, jobs.Effect(work_s=0), debounce=Debounce("k", 2, "replace", delay=True)
    )
    after_ms = now_ms()
    assert first.job is not None
    assert first.job.state is JobState.DEFERRED
    score = await redis.zscore(QUEUE, first.job_id)
    assert score is not None
    # A window (2 s) from the moment of the submit.
    assert before_ms + 2000 <= split_score(score)[1] <= after_ms + 2000


async def test_a_kept_job_deleted_meanwhile_is_not_kept(store: JobStore, redis: ArqRedis) -> None:
    debounce = Debounce("burst", 30)
    first = await enqueue(store, EFFECT, jobs.Effect(work_s=0), debounce=debounce)
    await redis.delete(f"arq:job:{first.job_id}")
    await redis.zrem(QUEUE, first.job_id)

    again = await enqueue(store, EFFECT, jobs.Effect(work_s=1), debounce=debounce)
    third = await enqueue(store, EFFECT, jobs.Effect(work_s=2), debounce=debounce)

    assert again.created
    assert again.job_id != first.job_id
    assert (third.job_id, third.debounced) == (again.job_id, True)
