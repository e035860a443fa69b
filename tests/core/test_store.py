"""The lifecycle owner against a real Redis: each script's record, indexes and
arq keys, on one node and on a real Redis Cluster (3 primaries, 3 replicas)."""

import asyncio
import contextlib
import pickle
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import deserialize_result

from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import DEAD_RETENTION_S, JobError, JobState, now_ms
from conveyor_core.ratelimit import RateLimit
from conveyor_core.serializer import JobFailedError, job_deserializer
from conveyor_core.shardpubsub import ShardSubscription
from conveyor_core.store import (
    ArqJob,
    Claim,
    Fetch,
    JobStore,
    Reported,
)
from conveyor_core.upgrade_pickles import upgrade
from conveyor_seed import CREATE_TASK, CreateTask
from tests.support import jobs
from tests.support.locks import lapse_lock

pytestmark = pytest.mark.xdist_group("cluster")

QUEUE = CREATE_TASK.queue
ERROR = '{"type": "E", "message": "m"}'
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    return node_or_cluster_redis


@contextlib.asynccontextmanager
async def wake_ups(redis: ArqRedis) -> AsyncIterator["asyncio.Queue[bytes]"]:
    """What the queue's sharded wake-up channel carries, as a worker hears it."""
    heard: asyncio.Queue[bytes] = asyncio.Queue()
    subscription = ShardSubscription(
        redis, keys.wake_channel(QUEUE), heard.put_nowait, lambda: None
    )
    subscription.start()
    await asyncio.wait_for(subscription.subscribed.wait(), 5)
    try:
        yield heard
    finally:
        await subscription.stop()


async def next_wake(heard: "asyncio.Queue[bytes]") -> bytes:
    return await asyncio.wait_for(heard.get(), 2)


async def indexes_of(redis: ArqRedis, job_id: str) -> set[str]:
    """The states whose index holds the job."""
    found = set()
    for state in keys.INDEXED_STATES:
        if await redis.zscore(keys.index_key(QUEUE, state), job_id) is not None:
            found.add(state)
    return found


async def arq_keys_of(redis: ArqRedis, job_id: str) -> dict[str, bool]:
    return {
        name: bool(await redis.exists(f"arq:{name}:{job_id}"))
        for name in ("job", "in-progress", "retry", "result")
    }


async def submitted(store: JobStore) -> str:
    done = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0))
    return done.job_id


async def test_submit_writes_only_arqs_keys_and_answers_the_record(redis: ArqRedis) -> None:
    store = JobStore(redis)
    done = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=1), idempotency_key="k1")

    assert done.created
    assert done.job is not None
    assert done.job.state is JobState.QUEUED
    assert done.job.payload == {"sleep_s": 1}
    assert done.job.idempotency_key == "k1"
    assert not await redis.exists(keys.job_key(done.job_id))  # no record until claimed
    assert await redis.zscore(QUEUE, done.job_id) is not None
    assert await arq_keys_of(redis, done.job_id) == {
        "job": True,
        "in-progress": False,
        "retry": False,
        "result": False,
    }
    assert await indexes_of(redis, done.job_id) == set()
    assert await store.get(done.job_id) == done.job
    again = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=1), idempotency_key="k1")
    assert (again.created, again.job_id, again.same_payload) == (False, done.job_id, True)


async def test_submit_wakes_workers_for_a_due_job_and_tells_a_deferred_ones_due_time(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    async with wake_ups(redis) as heard:
        now = await submitted(store)
        later = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), defer_by_s=60)
        messages = [await next_wake(heard) for _ in range(2)]
    assert messages == [
        now.encode(),
        keys.DUE_MESSAGE + str(int((await redis.zscore(QUEUE, later.job_id)) or 0)).encode(),
    ]


async def test_claim_starts_the_record_locks_with_a_token_and_returns_the_job(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)

    claimed = (await store.claim(QUEUE, 5, **CLAIM)).jobs

    assert [(c.job_id, c.job_try) for c in claimed] == [(job_id, 1)]
    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.tries, job.version) == (JobState.IN_PROGRESS, 1, 2)
    assert await indexes_of(redis, job_id) == {"in_progress"}
    # The job's data comes with the claim; its token is the lock's and the record's.
    assert claimed[0].job_bytes == await redis.get(f"arq:job:{job_id}")
    token = claimed[0].token.encode()
    assert await redis.get(f"arq:in-progress:{job_id}") == token
    assert await redis.hget(f"conveyor:job:{job_id}", "token") == token  # type: ignore[misc]
    # Tries live in the record: arq's retry key is never written.
    assert not await redis.exists(f"arq:retry:{job_id}")
    assert await redis.pttl(f"arq:in-progress:{job_id}") > 9_000
    assert await redis.zscore(QUEUE, job_id) is not None  # arq keeps it until it ends
    assert (await store.claim(QUEUE, 5, **CLAIM)).jobs == []  # locked: not claimed twice


async def test_a_chosen_id_is_taken_once_also_after_its_job_finished(redis: ArqRedis) -> None:
    """A scheduled run's id (one per tick) may be submitted by every replica,
    some after the run already ended: its arq result key refuses it then."""
    store = JobStore(redis)
    tick = keys.job_id_for(QUEUE, "create_task:1700000000000")
    first = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), job_id=tick)
    assert first.created
    assert not (await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), job_id=tick)).created
    await store.claim(QUEUE, 1, **CLAIM)
    assert await store.complete(CREATE_TASK, tick, "null")
    assert not await redis.exists(f"arq:job:{tick}")  # it became arq's result key
    late = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), job_id=tick)
    assert not late.created
    assert await redis.zscore(QUEUE, tick) is None


async def test_complete_keeps_one_record_for_its_retention(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)

    assert await store.complete(CREATE_TASK, job_id, '{"answer": 42}')

    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.result, job.progress.percent) == (JobState.COMPLETE, {"answer": 42}, 100)
    assert await indexes_of(redis, job_id) == {"complete"}
    score = await redis.zscore(keys.index_key(QUEUE, "complete"), job_id)
    assert score == pytest.approx(now_ms() + CREATE_TASK.keep_result_s * 1000, abs=5_000)
    assert await redis.zscore(QUEUE, job_id) is None
    assert await arq_keys_of(redis, job_id) == {
        "job": False,
        "in-progress": False,
        "retry": False,
        "result": True,  # the payload and the result, kept as long as the record
    }
    for key in (keys.job_key(job_id), f"arq:result:{job_id}"):
        assert 0 < await redis.ttl(key) <= CREATE_TASK.keep_result_s
    ttls_ms = [await redis.pttl(k) for k in (keys.job_key(job_id), f"arq:result:{job_id}")]
    assert abs(ttls_ms[0] - ttls_ms[1]) < 1_000  # both set by the same script
    # arq's result format, through the JSON serializer; stored once, not in the record too.
    info = deserialize_result(
        await redis.get(f"arq:result:{job_id}") or b"", deserializer=job_deserializer
    )
    assert (info.function, info.kwargs["sleep_s"], info.job_try) == ("create_task", 0, 1)
    assert (info.success, info.result, info.queue_name) == (True, {"answer": 42}, QUEUE)
    assert info.start_time <= info.finish_time
    assert not await redis.hexists(keys.job_key(job_id), "result")  # type: ignore[misc]
    assert job.payload == {"sleep_s": 0}
    assert not await store.complete(CREATE_TASK, job_id, "null")  # only from in progress


class Slot:
    """A worker's side of finish and fetch, as the tests need it: asks for one job."""

    def __init__(self, wanted: int = 1) -> None:
        self.wanted = wanted
        self.taken: list[Claim] = []

    def fetch(self) -> Fetch | None:
        return Fetch(self.wanted, 10_000, 60_000, 100) if self.wanted else None

    def take(self, claim: Claim) -> None:
        self.taken.append(claim)


async def test_the_end_of_a_try_claims_the_slots_next_job_in_the_same_call(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    submitted_ids = {await submitted(store), await submitted(store)}
    # Submitted in the same millisecond, the two tie on score: either may start first.
    (started,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    first = started.job_id
    (second,) = submitted_ids - {first}
    slot = Slot()

    ended = await store.complete(CREATE_TASK, first, "null", slot)

    assert ended.moved
    assert ended.claim is not None
    assert [(c.job_id, c.job_try) for c in ended.claim.jobs] == [(second, 1)]
    assert slot.taken == [ended.claim]
    job = await store.get(second)
    assert job is not None
    assert (job.state, job.tries) == (JobState.IN_PROGRESS, 1)
    assert await indexes_of(redis, second) == {"in_progress"}
    assert await redis.pttl(f"arq:in-progress:{second}") > 9_000
    assert await indexes_of(redis, first) == {"complete"}
    # Nothing left: the claim says so, and says when the next deferred job is due.
    later = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), defer_by_s=60)
    ended = await store.retry_later(CREATE_TASK, second, now_ms() + 30_000, ERROR, slot)
    assert ended.claim is not None
    assert ended.claim.jobs == []
    assert ended.claim.next_due_ms == pytest.approx(now_ms() + 30_000, abs=5_000)
    # A paused queue starts nothing; a slot that asks for nothing gets no claim.
    await store.pause(QUEUE)
    third = await submitted(store)
    ended = await store.dead(CREATE_TASK, second, ERROR, slot)  # no longer in progress
    assert not ended.moved
    assert ended.claim is not None
    assert (ended.claim.jobs, ended.claim.paused_at_ms is not None) == ([], True)
    await store.resume(QUEUE)
    assert [c.job_id for c in (await store.claim(QUEUE, 1, **CLAIM)).jobs] == [third]
    ended = await store.complete(CREATE_TASK, third, "null", Slot(wanted=0))
    assert (ended.moved, ended.claim) == (True, None)
    deferred = await store.get(later.job_id)
    assert deferred is not None
    assert deferred.state is JobState.DEFERRED


async def test_retry_later_puts_the_job_back_in_arqs_queue_when_due(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)
    due_ms = now_ms() + 60_000

    assert await store.retry_later(CREATE_TASK, job_id, due_ms, '{"type": "E", "message": "m"}')

    job = await store.get(job_id)
    assert job is not None
    assert job.state is JobState.RETRYING
    assert job.error is not None
    assert job.error.type == "E"
    assert await indexes_of(redis, job_id) == {"retrying"}
    assert await redis.zscore(QUEUE, job_id) == due_ms
    assert not await redis.exists(f"arq:in-progress:{job_id}")
    assert await redis.pttl(f"arq:job:{job_id}") > 60_000
    assert (await store.claim(QUEUE, 1, **CLAIM)).jobs == []  # not due yet


async def test_dead_goes_to_the_dead_letters_and_requeue_brings_it_back(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)

    assert await store.dead(CREATE_TASK, job_id, '{"type": "E", "message": "m"}')

    assert await indexes_of(redis, job_id) == {"dead"}
    assert await redis.zscore(QUEUE, job_id) is None
    assert 0 < await redis.ttl(keys.job_key(job_id)) <= DEAD_RETENTION_S
    dead = await store.get(job_id)
    assert dead is not None
    assert (dead.error, dead.payload) == (JobError(type="E", message="m"), {"sleep_s": 0})
    # The record keeps the whole error (listings filter on it); arq's result its type and message.
    assert await redis.hexists(keys.job_key(job_id), "error")  # type: ignore[misc]
    info = deserialize_result(
        await redis.get(f"arq:result:{job_id}") or b"", deserializer=job_deserializer
    )
    assert (info.success, info.result.__class__, str(info.result)) == (
        False,
        JobFailedError,
        "E: m",
    )
    outcome, job = await store.requeue(job_id, {"request_id": "again"})
    assert outcome == "requeued"
    assert job is not None
    assert (job.state, job.tries, job.requeues, job.request_id) == (JobState.QUEUED, 0, 1, "again")
    assert await indexes_of(redis, job_id) == set()
    assert await redis.zscore(QUEUE, job_id) is not None
    assert await redis.ttl(keys.job_key(job_id)) == -1
    assert await arq_keys_of(redis, job_id) == {
        "job": True,
        "in-progress": False,
        "retry": False,
        "result": False,
    }
    assert job.payload == {"sleep_s": 0}
    claimed = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert [(c.job_id, c.job_try) for c in claimed] == [(job_id, 1)]
    assert (await store.requeue(job_id, {}))[0] == "in_progress"


async def test_put_back_after_a_shutdown_does_not_use_up_the_try(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)

    assert await store.put_back(CREATE_TASK, job_id)

    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.tries) == (JobState.QUEUED, 0)
    assert await indexes_of(redis, job_id) == set()
    assert not await redis.exists(f"arq:in-progress:{job_id}")
    claimed = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert [c.job_try for c in claimed] == [1]
    assert not await redis.exists(f"arq:retry:{job_id}")  # tries live in the record only


async def test_cancel_a_waiting_job_now_and_a_running_one_by_request(redis: ArqRedis) -> None:
    store = JobStore(redis)
    waiting, running = await submitted(store), await submitted(store)
    await redis.zadd(QUEUE, {waiting: now_ms() + 60_000})  # deferred: not claimed below
    await store.claim(QUEUE, 5, **CLAIM)

    outcome, job = await store.cancel(waiting)
    assert outcome == "cancelled_now"
    assert job is not None
    assert job.state is JobState.CANCELLED
    assert await indexes_of(redis, waiting) == {"cancelled"}
    assert await redis.zscore(QUEUE, waiting) is None
    assert await arq_keys_of(redis, waiting) == {
        "job": False,
        "in-progress": False,
        "retry": False,
        "result": True,  # kept as long as the record, so arq will not take the id again
    }
    assert await redis.ttl(f"arq:result:{waiting}") == await redis.ttl(keys.job_key(waiting))
    info = deserialize_result(
        await redis.get(f"arq:result:{waiting}") or b"", deserializer=job_deserializer
    )
    assert (info.success, type(info.result)) == (False, asyncio.CancelledError)
    assert (await store.cancel(waiting))[0] == "cancelled"

    outcome, job = await store.cancel(running)
    assert outcome == "cancelling"
    assert job is not None
    assert (job.state, job.cancel_requested) == (JobState.IN_PROGRESS, True)
    assert await redis.exists(f"arq:in-progress:{running}")  # it runs until its task stops
    assert await store.cancelled(CREATE_TASK, running)
    assert await indexes_of(redis, running) == {"cancelled"}
    assert not await redis.exists(f"arq:in-progress:{running}")
    assert await redis.zscore(QUEUE, running) is None
    assert (await store.cancel("nope"))[0] == "missing"


async def test_settle_an_unstarted_job_dead_or_cancelled(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)

    assert await store.settle_unstarted(QUEUE, job_id, '{"type": "NotStarted"}', 60_000) == "dead"
    assert await indexes_of(redis, job_id) == {"dead"}
    assert await redis.zscore(QUEUE, job_id) is None
    assert not await redis.exists(f"arq:in-progress:{job_id}", f"arq:retry:{job_id}")
    assert await store.settle_unstarted(QUEUE, job_id, "{}", 60_000) == ""


async def test_progress_only_while_in_progress(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    assert not await store.report_progress(job_id, 10, "early")
    await store.claim(QUEUE, 1, **CLAIM)
    assert await store.report_progress(job_id, 40, "reading")
    job = await store.get(job_id)
    assert job is not None
    assert (job.progress.percent, job.progress.message, job.version) == (40, "reading", 3)


async def test_housekeeping_trims_expired_entries_behind_a_long_lived_one(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    dead = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)
    await store.dead(CREATE_TASK, dead, "{}")  # a week's retention, at the front
    short = [await submitted(store) for _ in range(50)]
    await store.claim(QUEUE, 50, **CLAIM)
    for job_id in short:
        # As if their retention were a moment: expired records, entries left behind.
        await store.complete(CREATE_TASK, job_id, "null")
        await redis.zadd(keys.index_key(QUEUE, "complete"), {job_id: now_ms() - 1})
        await redis.delete(keys.job_key(job_id))
    time.sleep(0.01)

    assert await store.trim_expired(QUEUE) == 50
    assert await redis.zcard(keys.index_key(QUEUE, "complete")) == 0
    assert await indexes_of(redis, dead) == {"dead"}


async def test_submit_spends_the_callers_rate_in_its_own_step(redis: ArqRedis) -> None:
    store = JobStore(redis)
    limit = RateLimit("conveyor:ratelimit:test", interval_us=60_000_000, burst=1)
    first = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), rate_limit=limit)
    second = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), rate_limit=limit)

    assert first.created
    assert first.retry_after_s is None
    assert not second.created
    assert second.retry_after_s is not None
    assert 0 < second.retry_after_s <= 60
    assert second.job is None
    assert await redis.zcard(QUEUE) == 1  # the refused submit wrote nothing
    assert not await redis.exists(f"arq:job:{second.job_id}")


async def test_read_spends_the_callers_rate_and_finds_a_job_in_any_state(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    limit = RateLimit("conveyor:ratelimit:test", interval_us=60_000_000, burst=2)
    job_id = await submitted(store)

    # Waiting: no record yet, found by its score in its queue (paused or not).
    waiting = await store.read(job_id, limit)
    assert waiting.retry_after_s is None
    assert waiting.found is not None
    arq_job, job = waiting.found
    assert arq_job is not None
    assert arq_job.payload == {"sleep_s": 0}
    assert (job.state, job.queue, job.waiting_reason) == (JobState.QUEUED, QUEUE, None)
    await store.pause(QUEUE)
    paused = (await store.read(job_id)).found
    assert paused is not None
    assert paused[1].waiting_reason == "paused"
    await store.resume(QUEUE)

    # Started: from its record.
    await store.claim(QUEUE, 5, **CLAIM)
    started = (await store.read(job_id)).found
    assert started is not None
    assert (started[1].state, started[1].tries, started[1].queue) == (
        JobState.IN_PROGRESS,
        1,
        QUEUE,
    )
    assert (await store.read("no-such-job")).found is None

    # The second read of the burst answers; the third is refused and reads nothing.
    assert (await store.read(job_id, limit)).found is not None
    refused = await store.read(job_id, limit)
    assert refused.found is None
    assert refused.retry_after_s is not None
    assert 0 < refused.retry_after_s <= 60
    # Reads leave nothing behind but the limiter's one key.
    assert await redis.exists("conveyor:ratelimit:test")
    assert await indexes_of(redis, job_id) == {"in_progress"}


async def test_a_paused_queue_starts_nothing_and_resume_wakes_its_workers(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    paused = await store.pause(QUEUE)
    assert paused.changed
    paused_at = paused.at_ms
    again = await store.pause(QUEUE)
    assert (again.at_ms, again.changed) == (paused_at, False)  # it keeps the first time

    claim = await store.claim(QUEUE, 5, **CLAIM)

    assert (claim.jobs, claim.next_due_ms, claim.paused_at_ms) == ([], None, paused_at)
    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.waiting_reason) == (JobState.QUEUED, "paused")
    assert (await store.queue_stats(QUEUE)).paused_at_ms == paused_at

    async with wake_ups(redis) as heard:
        assert await store.resume(QUEUE)
        assert await next_wake(heard) == b"resume"
    assert not await store.resume(QUEUE)  # it runs already

    claim = await store.claim(QUEUE, 5, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [job_id]
    assert claim.paused_at_ms is None
    assert (await store.queue_stats(QUEUE)).paused_at_ms is None


async def test_a_running_jobs_entry_is_due_when_its_lock_lapses(redis: ArqRedis) -> None:
    """The claim does not read running jobs: each one's queue entry is due at
    its lock's end, when a dead worker's job may be claimed again."""
    store = JobStore(redis)
    job_id = await submitted(store)
    await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), defer_by_s=60)
    short = {**CLAIM, "lock_ttl_ms": 300}
    started_ms = now_ms()
    (first,) = (await store.claim(QUEUE, 5, **short)).jobs
    assert first.job_id == job_id

    claim = await store.claim(QUEUE, 5, **short)
    assert claim.jobs == []
    assert claim.next_due_ms == pytest.approx(started_ms + 300, abs=250)
    stats = await store.queue_stats(QUEUE)
    assert (stats.ready, stats.deferred, stats.in_progress) == (0, 1, 1)

    time.sleep(0.4)  # its worker died: the lock lapses (it counts as running until claimed)
    stats = await store.queue_stats(QUEUE)
    assert (stats.ready, stats.deferred, stats.in_progress) == (0, 1, 1)
    (again,) = (await store.claim(QUEUE, 5, **CLAIM)).jobs
    assert (again.job_id, again.job_try) == (job_id, 2)
    # Due at the new lock's end, before the deferred job.
    next_due = (await store.claim(QUEUE, 5, **CLAIM)).next_due_ms
    assert next_due == pytest.approx(now_ms() + 10_000, abs=5_000)


async def test_a_renewed_lock_moves_its_jobs_entry_to_the_locks_new_end(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    (first,) = (await store.claim(QUEUE, 1, **{**CLAIM, "lock_ttl_ms": 300})).jobs

    assert await store.renew_locks([(job_id, first.token)], 10_000, QUEUE) == []

    assert await redis.zscore(QUEUE, job_id) == pytest.approx(now_ms() + 10_000, abs=2_000)
    time.sleep(0.4)  # past the first lock's end: the entry is not due, the scan skips it
    claim = await store.claim(QUEUE, 1, **CLAIM)
    assert claim.jobs == []
    assert claim.next_due_ms == pytest.approx(now_ms() + 10_000, abs=2_000)


async def test_the_claim_passes_over_running_jobs_in_batches_and_reads_the_next_due_time(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    ids = [await submitted(store) for _ in range(40)]
    later = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), defer_by_s=60)
    running = {c.job_id for c in (await store.claim(QUEUE, 37, **CLAIM)).jobs}
    assert len(running) == 37
    # They ran past their first lock (renewed since): their entries are due again.
    await redis.zadd(QUEUE, dict.fromkeys(running, now_ms()), xx=True)

    # 37 locked entries in front, more than a first batch reads: the claim reads
    # on; what it starts is due at its lock's end, after the deferred job.
    claim = await store.claim(QUEUE, 5, **{**CLAIM, "lock_ttl_ms": 120_000})

    assert {c.job_id for c in claim.jobs} == set(ids) - running
    # Found past the first batch: each one's data read as it started.
    for c in claim.jobs:
        assert c.job_bytes == await redis.get(f"arq:job:{c.job_id}")
    assert claim.next_due_ms == pytest.approx(now_ms() + 60_000, abs=5_000)
    deferred = await store.get(later.job_id)
    assert deferred is not None
    assert deferred.state is JobState.DEFERRED
    # A scan limit below the locked entries finds nothing, and says nothing of later.
    assert (await store.claim(QUEUE, 1, **{**CLAIM, "scan_limit": 10})).jobs == []


async def test_higher_priorities_start_first_and_equal_ones_in_fifo_order(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    ids = []
    for priority in [9, 5, 0, 9, 0, 5, 3]:
        time.sleep(0.002)  # FIFO is by due time in ms: ties go by id
        ids.append(
            (await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), priority=priority)).job_id
        )
    time.sleep(0.002)
    expected = [ids[2], ids[4], ids[6], ids[1], ids[5], ids[0], ids[3]]
    if isinstance(redis, ArqRedis):  # a bare arq enqueue runs on one node only
        # A bare arq client's job: the default priority, after the 5s already queued.
        bare = await redis.enqueue_job("create_task", sleep_s=0, _queue_name=QUEUE)
        assert bare is not None
        time.sleep(0.002)  # arq rounds its due time up to the next ms
        expected.insert(5, bare.job_id)
    listed = await store.list(state=JobState.QUEUED)
    assert [j.id for j in listed.items] == expected
    assert [j.priority for j in listed.items] == sorted(j.priority for j in listed.items)
    assert [j.priority for j in listed.items][:3] == [0, 0, 3]
    assert (await store.queue_stats(QUEUE)).ready == len(expected)

    started = [c.job_id for _ in expected for c in (await store.claim(QUEUE, 1, **CLAIM)).jobs]

    assert started == expected
    with pytest.raises(ValueError, match=r"priority must be 0 .* not 10"):
        await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), priority=10)
    job = await store.get(ids[6])
    assert job is not None
    assert (job.priority, job.state) == (3, JobState.IN_PROGRESS)


async def test_a_deferred_job_joins_its_priority_when_due_and_a_retry_keeps_it(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    low = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), priority=9)
    high = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), priority=1, defer_by_s=0.3)
    listed = await store.list(state=JobState.DEFERRED)
    assert [(j.id, j.priority) for j in listed.items] == [(high.job_id, 1)]

    claim = await store.claim(QUEUE, 1, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [low.job_id]  # the only one due
    assert claim.next_due_ms is not None
    assert claim.next_due_ms - now_ms() <= 300  # a due time, not a score in a band
    time.sleep(0.35)
    later = await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), priority=2)
    claim = await store.claim(QUEUE, 1, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [high.job_id]
    assert abs(claim.jobs[0].score_ms - now_ms()) < 2_000  # the due time, for arq's ctx

    # A retry goes back to the job's own band: it is due before the priority-2 job.
    assert await store.retry_later(
        CREATE_TASK, high.job_id, now_ms(), '{"type": "E", "message": "m"}'
    )
    job = await store.get(high.job_id)
    assert job is not None
    assert (job.state, job.priority) == (JobState.RETRYING, 1)
    claim = await store.claim(QUEUE, 2, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [high.job_id, later.job_id]


def limited_store(redis: ArqRedis) -> JobStore:
    return JobStore(redis, load_catalog([jobs.MODULE]))


async def submit_many(store: JobStore, job_type: str, payloads: list[dict[str, Any]]) -> list[str]:
    ids = []
    for payload in payloads:
        time.sleep(0.002)  # FIFO is by due time in ms
        ids.append((await enqueue(store, store.catalog[job_type], payload)).job_id)
    return ids


async def test_a_running_limit_holds_jobs_queued_and_a_freed_slot_wakes_workers(
    redis: ArqRedis,
) -> None:
    store = limited_store(redis)
    capped = store.catalog["capped"]
    first, second, third = await submit_many(store, "capped", [{"work_s": 0}] * 3)

    claim = await store.claim(QUEUE, 5, **CLAIM)

    assert [c.job_id for c in claim.jobs] == [first, second]
    assert claim.held == {"limit": 1, "rate": 0, "held": 0}
    held = await store.get(third)
    assert held is not None
    assert (held.state, held.waiting_reason, held.tries) == (JobState.QUEUED, "limit", 0)
    assert (await store.claim(QUEUE, 5, **CLAIM)).jobs == []  # still held, no try used

    async with wake_ups(redis) as heard:
        assert await store.complete(capped, first, "null")
        assert await next_wake(heard) == b"freed"

    claim = await store.claim(QUEUE, 5, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [third]
    job = await store.get(third)
    assert job is not None
    assert job.waiting_reason is None
    for job_id in (second, third):
        assert await store.complete(capped, job_id, "null")
    # Nothing is left behind: no flow entries, no running counts, no marks (the
    # index of complete jobs and the queue's history stay, each bounded; when
    # locks were last checked expires a lock ttl later).
    flow_keys = [k async for k in redis.scan_iter(match="conveyor:{arq:queue}:*")]
    left = [k for k in flow_keys if b":complete" not in k and b":history:" not in k]
    assert left == [keys.queue_key(QUEUE, "running-checked").encode()]
    assert 0 < await redis.pttl(left[0]) <= CLAIM["lock_ttl_ms"]


async def incrby_calls(redis: ArqRedis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_incrby", {}).get("calls", 0))


async def test_a_try_of_a_limited_type_that_ends_and_fetches_the_next_leaves_its_count_as_is(
    redis: ArqRedis,
) -> None:
    store = limited_store(redis)
    capped = store.catalog["capped"]
    first, second = await submit_many(store, "capped", [{"work_s": 0}] * 2)
    # A type without a key has no flow entries: the claim reads a job's type
    # from its job data.
    assert not await redis.exists(keys.queue_key(QUEUE, "flow"))
    assert [c.job_id for c in (await store.claim(QUEUE, 1, **CLAIM)).jobs] == [first]
    count = keys.queue_key(QUEUE, "running-count:capped")
    assert await redis.get(count) == b"1"
    before = await incrby_calls(redis)

    ended = await store.complete(capped, first, "null", Slot())

    # One end and one start of the type in one call: the count is not written.
    assert ended.claim is not None
    assert [c.job_id for c in ended.claim.jobs] == [second]
    assert await incrby_calls(redis) == before
    assert await redis.get(count) == b"1"
    assert await store.complete(capped, second, "null")
    assert not await redis.exists(count)  # gone at 0


async def test_a_dead_workers_jobs_stop_counting_once_their_locks_lapse(redis: ArqRedis) -> None:
    store = limited_store(redis)
    ids = await submit_many(store, "capped", [{"work_s": 0}] * 3)
    short = {**CLAIM, "lock_ttl_ms": 100}
    assert len((await store.claim(QUEUE, 5, **short)).jobs) == 2
    time.sleep(0.25)  # the worker died: its locks lapse, nothing released them

    claim = await store.claim(QUEUE, 5, **short)

    # The one that waited starts first; a lapsed job is due from its lock's end
    # and runs again (at least once), up to the limit of 2.
    started = [c.job_id for c in claim.jobs]
    assert started[0] == ids[2]
    assert len(started) == 2
    assert started[1] in ids[:2]
    # The lapsed ones stopped counting; what started counts (once: a job claimed
    # again after its lock lapsed keeps the count it holds).
    assert await redis.get(keys.queue_key(QUEUE, "running-count:capped")) == b"2"


async def test_a_rate_holds_starts_and_says_when_the_next_may_begin(redis: ArqRedis) -> None:
    store = limited_store(redis)
    ids = await submit_many(store, "paced", [{"work_s": 0}] * 12)
    began_ms = now_ms()

    claim = await store.claim(QUEUE, 20, **CLAIM)

    assert [c.job_id for c in claim.jobs] == ids[:10]
    assert claim.held == {"limit": 0, "rate": 2, "held": 0}
    assert claim.next_due_ms is not None
    assert began_ms + 900 <= claim.next_due_ms <= now_ms() + 1000
    job = await store.get(ids[10])
    assert job is not None
    assert job.waiting_reason == "rate"
    # Finishing does not make room: a rate counts starts.
    for job_id in ids[:10]:
        assert await store.complete(store.catalog["paced"], job_id, "null")
    assert (await store.claim(QUEUE, 20, **CLAIM)).jobs == []


async def test_a_start_windows_stale_starts_are_trimmed_before_they_pile_up(
    redis: ArqRedis,
) -> None:
    store = limited_store(redis)
    await submit_many(store, "brisk", [{"work_s": 0}] * 34)
    window = keys.queue_key(QUEUE, "start-log:brisk")
    sizes = []
    for _ in range(34):
        assert len((await store.claim(QUEUE, 1, **CLAIM)).jobs) == 1
        sizes.append(await redis.llen(window))  # type: ignore[misc]
        time.sleep(0.05)  # the window (200 ms) lives on; the older starts leave it

    # Under its max a start log is only appended to on each claim; stale
    # starts go once per 16 starts: the log holds at most those 16 and the
    # few still in the window, never all 34.
    assert max(sizes) <= 22


async def test_a_per_key_limit_holds_only_that_keys_jobs(redis: ArqRedis) -> None:
    store = limited_store(redis)
    a1, a2, b1 = await submit_many(
        store, "per_tenant", [{"tenant_id": t, "work_s": 0} for t in ("a", "a", "b")]
    )

    claim = await store.claim(QUEUE, 5, **CLAIM)

    assert [c.job_id for c in claim.jobs] == [a1, b1]
    held = await store.get(a2)
    assert held is not None
    assert held.waiting_reason == "limit"
    assert await store.retry_later(store.catalog["per_tenant"], a1, now_ms(), ERROR)
    claim = await store.claim(QUEUE, 5, **CLAIM)
    # a2 was due before a1's retry: it takes tenant a's one slot, a1 waits.
    assert [c.job_id for c in claim.jobs] == [a2]
    retried = await store.get(a1)
    assert retried is not None
    assert (retried.state, retried.waiting_reason) == (JobState.RETRYING, "limit")


async def test_keys_take_turns_and_leave_nothing_behind(redis: ArqRedis) -> None:
    store = limited_store(redis)
    fair = store.catalog["fair"]
    a_ids = await submit_many(store, "fair", [{"tenant_id": "a", "work_s": 0}] * 100)
    b_ids = await submit_many(store, "fair", [{"tenant_id": "b", "work_s": 0}] * 5)
    cancelled = a_ids.pop()
    assert (await store.cancel(cancelled))[0] == "cancelled_now"

    started = []
    for _ in range(12):
        claim = await store.claim(QUEUE, 1, **CLAIM)
        started += [c.job_id for c in claim.jobs]
    assert started[:10] == [x for pair in zip(a_ids, b_ids, strict=False) for x in pair]
    assert started[10:] == a_ids[5:7]  # b has no more: a's turn every time

    # A retry goes back into its key's turn.
    assert await store.retry_later(fair, started[0], now_ms(), ERROR)
    rest = (await store.claim(QUEUE, 200, **{**CLAIM, "scan_limit": 1000})).jobs
    assert started[0] in [c.job_id for c in rest]
    for job_id in {*started, *(c.job_id for c in rest)}:
        assert await store.complete(fair, job_id, "null")
    left = [k async for k in redis.scan_iter(match="conveyor:{arq:queue}:*")]
    kept = (b":complete", b":cancelled")  # the final-state indexes and the history stay
    assert sorted(k for k in left if not k.endswith(kept) and b":history:" not in k) == []


async def test_a_per_key_rate_holds_only_that_keys_starts(redis: ArqRedis) -> None:
    store = limited_store(redis)
    tenants = ["a", "a", "a", "b"]
    a1, a2, a3, b1 = await submit_many(
        store, "paced_per_tenant", [{"tenant_id": t, "work_s": 0} for t in tenants]
    )

    claim = await store.claim(QUEUE, 10, **CLAIM)

    assert sorted(c.job_id for c in claim.jobs) == sorted([a1, a2, b1])
    assert claim.held == {"limit": 0, "rate": 1, "held": 0}
    assert claim.next_due_ms is not None
    assert claim.next_due_ms > now_ms() + 500  # a's window opens a second after its starts
    held = await store.get(a3)
    assert held is not None
    assert (held.state, held.waiting_reason) == (JobState.QUEUED, "rate")


async def test_a_requeued_keyed_job_waits_its_keys_turn_again(redis: ArqRedis) -> None:
    store = limited_store(redis)
    per_tenant = store.catalog["per_tenant"]
    (job_id,) = await submit_many(store, "per_tenant", [{"tenant_id": "a", "work_s": 0}])
    await store.claim(QUEUE, 1, **CLAIM)
    assert await store.dead(per_tenant, job_id, ERROR)
    assert await redis.hget(keys.queue_key(QUEUE, "flow"), job_id) is None  # type: ignore[misc]

    outcome, _ = await store.requeue(job_id, {})

    assert outcome == "requeued"
    flow = await redis.hget(keys.queue_key(QUEUE, "flow"), job_id)  # type: ignore[misc]
    assert flow == b"per_tenant\na"
    ring = await redis.lrange(keys.queue_key(QUEUE, "ring:per_tenant"), 0, -1)  # type: ignore[misc]
    assert ring == [b"a"]
    claim = await store.claim(QUEUE, 1, **CLAIM)
    assert [c.job_id for c in claim.jobs] == [job_id]
    assert not await redis.exists(keys.queue_key(QUEUE, "ring:per_tenant"))
    assert await redis.get(keys.queue_key(QUEUE, "running-count-key:per_tenant:a")) == b"1"


async def test_a_job_keeps_each_try_and_its_workflow_parent_and_children(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    parent = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)
    child = (await enqueue(store, CREATE_TASK, CreateTask(sleep_s=0), parent_id=parent)).job_id
    assert await store.retry_later(CREATE_TASK, parent, now_ms(), ERROR)
    claimed = await store.claim(QUEUE, 2, **CLAIM)
    assert {c.job_id for c in claimed.jobs} == {parent, child}
    assert await store.complete(CREATE_TASK, parent, "1")

    job = await store.get(parent)
    kid = await store.get(child)

    assert job is not None
    assert kid is not None
    assert [(a.number, a.outcome) for a in job.attempts] == [(1, "retrying"), (2, "complete")]
    assert all(a.duration_s is not None and a.duration_s >= 0 for a in job.attempts)
    assert job.children == [child]
    assert (kid.parent_id, kid.children) == (parent, [])


async def test_a_stale_trys_end_progress_and_renewal_are_refused_whole(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    (stale,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    # Its lock lapsed (a frozen worker) and another worker claimed the job again.
    await lapse_lock(redis, QUEUE, job_id)
    (live,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert (live.job_try, stale.token != live.token) == (2, True)
    before = await redis.hgetall(f"conveyor:job:{job_id}")  # type: ignore[misc]

    ended = await store.complete(CREATE_TASK, job_id, '"stale"', token=stale.token)
    assert (ended.moved, ended.stale) == (False, True)
    reported = await store.report_progress(job_id, 50, "stale", token=stale.token)
    assert reported is Reported.STALE
    assert await store.renew_locks([(job_id, stale.token)], 5_000) == [job_id]
    assert await redis.hgetall(f"conveyor:job:{job_id}") == before  # type: ignore[misc]
    assert await redis.get(f"arq:in-progress:{job_id}") == live.token.encode()

    # The live try's calls go through; a lapsed lock of its own is set again.
    await redis.delete(f"arq:in-progress:{job_id}")
    assert await store.renew_locks([(job_id, live.token)], 5_000) == []
    assert await redis.get(f"arq:in-progress:{job_id}") == live.token.encode()
    reported = await store.report_progress(job_id, 50, "live", token=live.token)
    assert reported is Reported.RECORDED
    ended = await store.complete(CREATE_TASK, job_id, '"live"', token=live.token)
    assert (ended.moved, ended.stale) == (True, False)
    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.tries, job.result) == (JobState.COMPLETE, 2, "live")


async def test_a_renewal_after_the_trys_end_sets_no_lock_again(redis: ArqRedis) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    (claimed,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    # The end ran first (retrying: back in the queue), then the renewal sent before it.
    assert await store.retry_later(CREATE_TASK, job_id, now_ms(), ERROR, token=claimed.token)
    assert await store.renew_locks([(job_id, claimed.token)], 5_000) == []
    assert not await redis.exists(f"arq:in-progress:{job_id}")
    assert [c.job_try for c in (await store.claim(QUEUE, 1, **CLAIM)).jobs] == [2]


async def test_job_data_is_json_and_data_that_is_not_reads_with_an_error(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis)
    job_id = await submitted(store)
    raw = await redis.get(f"arq:job:{job_id}")
    assert raw is not None
    assert raw.startswith(b'{"t":null,"f":"create_task"')
    # A pickle planted in its place: read, never unpickled, shown with an error.
    await redis.set(f"arq:job:{job_id}", pickle.dumps({"f": "create_task", "k": {}, "et": 1}))
    assert ArqJob.decode(await redis.get(f"arq:job:{job_id}") or b"") is None
    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.payload, job.job_type) == (JobState.QUEUED, {}, "unknown")
    assert job.error is not None
    assert job.error.type == "InvalidJobData"
    assert "not valid JSON job data" in job.error.message
    listed = await store.list(state=JobState.QUEUED)
    assert [(j.id, j.error == job.error) for j in listed.items] == [(job_id, True)]


async def test_a_pickled_job_ends_with_its_job_key_kept_for_the_upgrade_rewrite(
    redis: ArqRedis,
) -> None:
    """Job data that is not Conveyor's JSON is never spliced into a result key:
    it stays as it is, expiring with the record, so the upgrade's rewrite can
    still turn it into JSON and a requeue bring the job back."""
    store = JobStore(redis)
    job_id = await submitted(store)
    await store.claim(QUEUE, 1, **CLAIM)
    pickled = pickle.dumps({"t": None, "f": "create_task", "a": (), "k": {"sleep_s": 0}, "et": 1})
    await redis.set(f"arq:job:{job_id}", pickled)

    assert await store.dead(CREATE_TASK, job_id, ERROR)

    assert await redis.get(f"arq:job:{job_id}") == pickled
    assert 0 < await redis.ttl(f"arq:job:{job_id}") <= DEAD_RETENTION_S
    assert not await redis.exists(f"arq:result:{job_id}")
    job = await store.get(job_id)
    assert job is not None
    assert (job.state, job.payload, job.error) == (
        JobState.DEAD,
        {},
        JobError(type="E", message="m"),
    )
    assert (await store.requeue(job_id, {}))[0] == "unknown_type"  # unreadable: not requeued

    assert (await upgrade(redis, store.catalog)).rewritten == 1
    outcome, again = await store.requeue(job_id, {})
    assert outcome == "requeued"
    assert again is not None
    assert again.payload == {"sleep_s": 0}


async def test_a_claim_of_more_than_a_batch_starts_every_due_job_it_wants(redis: ArqRedis) -> None:
    # Each start moves its entry to its lock's end, out of the range the scan
    # reads next: a later batch must not skip as many due entries.
    store = JobStore(redis)
    ids = {await submitted(store) for _ in range(250)}
    wide = {**CLAIM, "scan_limit": 1_000}
    claimed = await store.claim(QUEUE, 240, **wide)
    assert len(claimed.jobs) == 240
    rest = await store.claim(QUEUE, 240, **wide)
    assert {c.job_id for c in claimed.jobs + rest.jobs} == ids
