"""Snoozes and a partner's rate limit through `Processor.process()` against a
real Redis: neither counts a try, a cap ends endless snoozing, and a 429's hold
keeps the claim off its key's (or type's) jobs until it ends."""

import asyncio
import time
from datetime import timedelta

import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.jobs import HoldReason, JobPublic, JobState, now_ms
from conveyor_core.store import Claim, JobStore
from conveyor_worker.process import Processor, Try
from conveyor_worker.worker import resolve_handler
from tests.support import jobs

CATALOG = load_catalog(jobs.MODULES.split(","))
QUEUE = CATALOG["partner"].queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}


@pytest.fixture
def store(redis: ArqRedis) -> JobStore:
    return JobStore(redis, CATALOG)


@pytest.fixture
def processor(store: JobStore) -> Processor:
    handlers = {t.name: resolve_handler(t.handler) for t in CATALOG.for_queue(QUEUE)}
    return Processor(QUEUE, store, CATALOG, handlers, instrument=False)


async def claim(store: JobStore, wanted: int = 10) -> Claim:
    return await store.claim(QUEUE, wanted, **CLAIM)


async def claim_due(store: JobStore, timeout_s: float = 5.0) -> Try:
    """The next job to fall due, claimed."""
    deadline = time.monotonic() + timeout_s
    while not (found := (await claim(store, 1)).jobs):
        assert time.monotonic() < deadline, "no job fell due"
        await asyncio.sleep(0.02)
    (claimed,) = found
    return Try(claimed, Fence(QUEUE, claimed.job_id, claimed.token))


async def record(store: JobStore, job_id: str) -> JobPublic:
    job = await store.get(job_id)
    assert job is not None
    return job


async def test_snoozes_use_no_try_and_are_kept_as_attempts(
    store: JobStore, processor: Processor
) -> None:
    # One try allowed: two snoozes that counted would make it dead.
    submitted = await enqueue(store, CATALOG["snoozing"], jobs.Snoozing(snoozes=2, delay_s=0.2))
    for _ in range(2):
        try_ = await claim_due(store)
        assert try_.claimed.job_try == 1
        assert await processor.process(try_) is JobState.RETRYING
        job = await record(store, submitted.job_id)
        assert (job.state, job.tries) == (JobState.RETRYING, 0)
        # The delay it asked for, from the snooze's end as the record keeps it.
        assert job.next_try_at is not None
        finished_at = job.attempts[-1].finished_at
        assert finished_at is not None
        assert job.next_try_at - finished_at == timedelta(seconds=0.2)
    assert await processor.process(await claim_due(store)) is JobState.COMPLETE

    job = await record(store, submitted.job_id)
    assert (job.state, job.tries, job.result) == (JobState.COMPLETE, 1, 1)
    assert [(a.number, a.outcome) for a in job.attempts] == [
        (1, "snoozed"),
        (1, "snoozed"),
        (1, "complete"),
    ]


async def test_a_job_that_snoozes_past_its_cap_is_dead(
    store: JobStore, processor: Processor
) -> None:
    submitted = await enqueue(store, CATALOG["snoozing"], jobs.Snoozing(snoozes=10, delay_s=0))
    states = [await processor.process(await claim_due(store)) for _ in range(4)]

    assert states == [JobState.RETRYING] * 3 + [JobState.DEAD]
    job = await record(store, submitted.job_id)
    assert job.error is not None
    assert job.error.type == "TooManySnoozesError"
    assert "max_snoozes" in job.error.message

    # A requeue starts its count again.
    outcome, _ = await store.requeue(submitted.job_id, {})
    assert outcome == "requeued"
    assert await processor.process(await claim_due(store)) is JobState.RETRYING
    job = await record(store, submitted.job_id)
    assert [a.outcome for a in job.attempts] == ["snoozed"]


async def test_a_429_holds_its_key_uses_no_try_and_the_hold_ends(
    store: JobStore, processor: Processor
) -> None:
    partner = CATALOG["partner"]
    limited = await enqueue(store, partner, jobs.Partner(tenant_id="a", retry_after_s=1.5))
    try_ = await claim_due(store)
    # The hold ends 1.5 s after the snooze ended, somewhere in this range.
    earliest_end_ms = now_ms() + 1500
    assert await processor.process(try_) is JobState.RETRYING
    latest_end_ms = now_ms() + 1500
    job = await record(store, limited.job_id)
    assert (job.state, job.tries) == (JobState.RETRYING, 0)
    assert [a.outcome for a in job.attempts] == ["snoozed"]

    same_key = [
        (await enqueue(store, partner, jobs.Partner(tenant_id="a"))).job_id for _ in range(3)
    ]
    other_key = (await enqueue(store, partner, jobs.Partner(tenant_id="b"))).job_id

    claim_sent_ms = now_ms()
    found = await claim(store)
    claim_took_ms = now_ms() - claim_sent_ms
    assert [c.job_id for c in found.jobs] == [other_key]
    assert found.held[HoldReason.HELD] >= 1
    # The worker sleeps until the hold ends, not longer (the claim reckons the
    # end from its own reading of the clock: early by at most its own time).
    assert found.next_due_ms is not None
    assert earliest_end_ms - claim_took_ms <= found.next_due_ms <= latest_end_ms
    read = await store.read(same_key[0])
    assert read.found is not None
    assert read.found[1].waiting_reason is HoldReason.HELD
    # Nothing of the key starts while held (checked until well before its end:
    # a claim sent just before it may run just after it).
    while now_ms() < earliest_end_ms - 500:
        assert (await claim(store)).jobs == []
        await asyncio.sleep(0.05)

    await asyncio.sleep(max(latest_end_ms - now_ms(), 0) / 1000 + 0.05)
    started = {c.job_id for c in (await claim(store)).jobs}
    assert started == {limited.job_id, *same_key}


async def test_a_429_of_scope_type_holds_every_job_of_the_type(
    store: JobStore, processor: Processor
) -> None:
    partner = CATALOG["partner"]
    payload = jobs.Partner(tenant_id="a", retry_after_s=1.0, scope="type")
    limited = await enqueue(store, partner, payload)
    assert await processor.process(await claim_due(store)) is JobState.RETRYING
    others = [
        (await enqueue(store, partner, jobs.Partner(tenant_id=t))).job_id for t in ("a", "b", "c")
    ]
    unlimited = await enqueue(store, CATALOG["effect"], jobs.Effect(work_s=0))

    found = await claim(store)
    assert [c.job_id for c in found.jobs] == [unlimited.job_id]
    assert found.held[HoldReason.HELD] >= 3

    # A fault bound: the hold's second and a busy machine's slack, far short
    # of a hold that never ends (or a second read as 1,000).
    deadline = time.monotonic() + 10
    started: set[str] = set()
    while started != {limited.job_id, *others}:
        assert time.monotonic() < deadline, started
        started |= {c.job_id for c in (await claim(store)).jobs}
        await asyncio.sleep(0.05)
    job = await record(store, limited.job_id)
    assert job.tries == 1  # its try after the hold: the first that counted


async def test_a_429_of_a_type_without_limits_snoozes_and_holds_nothing(
    store: JobStore, processor: Processor
) -> None:
    unlimited = CATALOG["partner_unlimited"]
    payload = jobs.Partner(tenant_id="a", retry_after_s=5, scope="type")
    limited = await enqueue(store, unlimited, payload)
    assert await processor.process(await claim_due(store)) is JobState.RETRYING
    job = await record(store, limited.job_id)
    assert (job.state, job.tries) == (JobState.RETRYING, 0)

    other = await enqueue(store, unlimited, jobs.Partner(tenant_id="a"))
    assert [c.job_id for c in (await claim(store)).jobs] == [other.job_id]
