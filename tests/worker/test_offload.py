"""Claim-check through `Processor.process()`, against a real Redis and a folder
blob store: an offloaded payload runs intact, a changed or missing blob fails
the job at once (dead, never retried), a large result is offloaded too."""

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from conveyor_core import claimcheck
from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.store import ArqJob, JobStore
from conveyor_worker.process import Processor, Try
from conveyor_worker.worker import resolve_handler
from tests.support import jobs
from tests.worker.conftest import make_worker

CATALOG = load_catalog(jobs.MODULES.split(","))
QUEUE = CATALOG["bulky"].queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 100}
MIB = 1024 * 1024


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(redis: ArqRedis, blob_dir: Path) -> JobStore:
    blobs = BlobStore.from_settings(BlobSettings(url=f"file://{blob_dir}"))
    return JobStore(redis, CATALOG, blobs=blobs)


@pytest.fixture
def processor(store: JobStore) -> Processor:
    handlers = {t.name: resolve_handler(t.handler) for t in CATALOG.for_queue(QUEUE)}
    return Processor(QUEUE, store, CATALOG, handlers, instrument=False)


async def submit_and_claim(store: JobStore, payload: jobs.Bulky) -> Try:
    await enqueue(store, CATALOG["bulky"], payload)
    (claimed,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    return Try(claimed, Fence(QUEUE, claimed.job_id, claimed.token))


async def record(store: JobStore, job_id: str) -> JobPublic:
    job = await store.get(job_id)
    assert job is not None
    return job


async def test_a_1mib_payload_is_offloaded_and_runs_intact(
    store: JobStore, processor: Processor, redis: ArqRedis, blob_dir: Path
) -> None:
    data = "x" * (MIB - 7) + "payload"
    try_ = await submit_and_claim(store, jobs.Bulky(data=data))
    job_bytes = await redis.get(job_key_prefix + try_.job_id)
    assert job_bytes is not None
    assert len(job_bytes) < 2048
    assert (blob_dir / "jobs" / try_.job_id / "payload").stat().st_size > MIB

    assert await processor.process(try_) is JobState.COMPLETE
    job = await record(store, try_.job_id)
    expected = hashlib.sha256(data.encode()).hexdigest()
    assert job.result == {"size": len(data), "sha256": expected, "echo": ""}


async def test_a_small_payload_stays_inline(store: JobStore, blob_dir: Path) -> None:
    submitted = await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="small"))
    job = await record(store, submitted.job_id)
    assert job.payload == {"data": "small", "echo": False}
    assert not (blob_dir / "jobs" / submitted.job_id).exists()


@pytest.mark.parametrize("fault", ["tampered", "missing"])
async def test_a_changed_or_missing_blob_fails_the_job_at_once(
    store: JobStore, processor: Processor, blob_dir: Path, fault: str
) -> None:
    try_ = await submit_and_claim(store, jobs.Bulky(data="y" * 4096))
    blob = blob_dir / "jobs" / try_.job_id / "payload"
    if fault == "tampered":
        blob.write_bytes(blob.read_bytes().replace(b"yyyy", b"yyyz", 1))
    else:
        blob.unlink()

    assert await processor.process(try_) is JobState.DEAD  # tries were left: never retried
    job = await record(store, try_.job_id)
    assert job.tries == 1
    assert job.error is not None
    assert job.error.type == "OffloadedBlobError"
    word = "failed its check" if fault == "tampered" else "is missing"
    assert word in job.error.message
    assert f"jobs/{try_.job_id}/payload" in job.error.message


async def test_a_large_result_is_offloaded_and_reads_back(
    store: JobStore, processor: Processor, redis: ArqRedis, blob_dir: Path
) -> None:
    data = "r" * (256 * 1024)
    try_ = await submit_and_claim(store, jobs.Bulky(data=data, echo=True))
    assert await processor.process(try_) is JobState.COMPLETE

    job = await record(store, try_.job_id)
    ref = claimcheck.reference_of(job.result)
    assert ref is not None
    assert ref.key == f"jobs/{try_.job_id}/result.{try_.fence.token.replace(':', '-')}"
    assert store.blobs is not None
    result = await claimcheck.resolve(store.blobs, job.result, try_.job_id)
    assert result["echo"] == data


async def test_the_sweep_deletes_blobs_whose_record_is_gone(
    store: JobStore, processor: Processor, redis: ArqRedis, blob_dir: Path
) -> None:
    kept = await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="k" * 4096))
    gone = await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="g" * 4096))
    await redis.delete(job_key_prefix + gone.job_id)  # as if its retention ran out
    assert store.blobs is not None

    assert await claimcheck.sweep(store.blobs, redis, older_than_s=0) == 1
    assert (blob_dir / "jobs" / kept.job_id / "payload").exists()
    assert not (blob_dir / "jobs" / gone.job_id / "payload").exists()


async def test_sweeps_resume_where_the_last_stopped_so_every_gone_job_is_reached(
    store: JobStore, redis: ArqRedis, blob_dir: Path
) -> None:
    live = [await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="k" * 4096)) for _ in range(4)]
    assert store.blobs is not None
    tag = live[0].job_id.partition("}")[0] + "}"
    gone = [f"{tag}zz-gone-1", f"{tag}zz-gone-2"]  # after every live job's id in key order
    for job_id in gone:
        await store.blobs.put(claimcheck.payload_blob_key(job_id), b"{}")

    deleted = [await claimcheck.sweep(store.blobs, redis, older_than_s=0, budget=4)]
    assert deleted == [0]  # the four live jobs' blobs looked at; the cursor kept in Redis
    assert await redis.get(claimcheck.SWEEP_CURSOR_KEY) is not None
    deleted.append(await claimcheck.sweep(store.blobs, redis, older_than_s=0, budget=4))
    assert deleted == [0, 2]
    assert await redis.get(claimcheck.SWEEP_CURSOR_KEY) == b""  # walked to the end
    left = sorted(p.parent.name for p in (blob_dir / "jobs").rglob("payload"))
    assert left == sorted(job.job_id for job in live)


async def test_a_reference_to_another_jobs_blob_is_refused(
    store: JobStore, processor: Processor, redis: ArqRedis
) -> None:
    """A job written to Redis by hand cannot make the worker read another's bytes."""
    other = await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="s" * 4096), defer_by_s=3600)
    raw = await redis.get(job_key_prefix + other.job_id)
    try_ = await submit_and_claim(store, jobs.Bulky(data="t" * 4096))
    assert try_.job_id != other.job_id
    assert raw is not None
    borrowed = ArqJob.decode(raw)
    assert borrowed is not None
    planted = replace(try_.claimed, job_bytes=borrowed.encode())
    try_ = Try(planted, try_.fence)

    assert await processor.process(try_) is JobState.DEAD
    job = await record(store, try_.job_id)
    assert job.error is not None
    assert job.error.type == "OffloadedBlobError"
    assert "not job" in job.error.message


async def test_housekeeping_sweeps_blobs_of_gone_records_once_per_interval(
    store: JobStore, redis: ArqRedis, redis_url: str, blob_dir: Path
) -> None:
    live = await enqueue(store, CATALOG["bulky"], jobs.Bulky(data="l" * 4096))
    assert store.blobs is not None
    await store.blobs.put(claimcheck.payload_blob_key("gone"), b"{}")
    hour_ago_s = time.time() - 2 * claimcheck.SWEEP_GRACE_S
    for blob in (blob_dir / "jobs").rglob("payload"):
        os.utime(blob, (hour_ago_s, hour_ago_s))
    worker = make_worker(redis, redis_url, store=store)

    await worker._sweep_blobs()
    assert (blob_dir / "jobs" / live.job_id / "payload").exists()
    assert not (blob_dir / "jobs" / "gone" / "payload").exists()

    # One sweep per interval across all workers: a second one now does nothing.
    await store.blobs.put(claimcheck.payload_blob_key("gone-too"), b"{}")
    os.utime(blob_dir / "jobs" / "gone-too" / "payload", (hour_ago_s, hour_ago_s))
    await worker._sweep_blobs()
    assert (blob_dir / "jobs" / "gone-too" / "payload").exists()
