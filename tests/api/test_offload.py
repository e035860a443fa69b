"""Claim-check through the api: an offloaded payload and result read back as
they were (or as a link when very large), and a key's quota of stored bytes."""

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from conveyor_api.auth import Scope
from conveyor_core import stored_bytes
from conveyor_core.blobs import BlobSettings, BlobStore
from conveyor_core.catalog import load_catalog
from conveyor_core.claimcheck import BLOB_FIELD
from conveyor_core.fencing import Fence
from conveyor_core.jobs import JobState
from conveyor_core.store import JobStore
from conveyor_worker.process import Processor, Try
from conveyor_worker.worker import resolve_handler
from tests.api.conftest import make_app, serve
from tests.support import jobs
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer

CATALOG = load_catalog(jobs.MODULES.split(","))
QUEUE = CATALOG["bulky"].queue
ADMIN = bearer(TEST_KEY)
SMALL_QUOTA = bearer("cvk_small_quota")
QUOTA_BYTES = 10_000
KEYS = [
    api_key(TEST_KEY_NAME, TEST_KEY),
    api_key(
        "small-quota",
        "cvk_small_quota",
        [Scope.JOBS_SUBMIT, Scope.JOBS_READ],
        max_stored_bytes=QUOTA_BYTES,
    ),
]
# Offloaded values up to this size are shown inline, larger ones as a link.
INLINE_BYTES = 100_000


@pytest.fixture
def blob_settings(tmp_path: Path) -> BlobSettings:
    return BlobSettings(url=f"file://{tmp_path}/blobs")


@pytest.fixture
async def client(redis_url: str, blob_settings: BlobSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(redis_url, keys=KEYS, blobs=blob_settings, inline_blob_bytes=INLINE_BYTES)
    async with serve(app, authenticated=False) as c:
        yield c


async def run_one(redis: ArqRedis, blob_settings: BlobSettings) -> JobState | None:
    """One try of the next bulky job, as a worker with the same blob store runs it."""
    store = JobStore(redis, CATALOG, blobs=BlobStore.from_settings(blob_settings))
    handlers = {t.name: resolve_handler(t.handler) for t in CATALOG.for_queue(QUEUE)}
    processor = Processor(QUEUE, store, CATALOG, handlers, instrument=False)
    claim = await store.claim(QUEUE, 1, lock_ttl_ms=10_000, cancelled_retention_ms=1, scan_limit=9)
    (claimed,) = claim.jobs
    return await processor.process(Try(claimed, Fence(QUEUE, claimed.job_id, claimed.token)))


async def test_an_offloaded_payload_and_result_read_back_through_the_api(
    client: httpx.AsyncClient, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    data = "d" * 50_000
    submitted = await client.post(
        "/v1/jobs/bulky", json={"data": data, "echo": True}, headers=ADMIN
    )
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["payload"] == {"data": data, "echo": True}  # shown as submitted

    assert await run_one(redis, blob_settings) is JobState.COMPLETE
    read = (await client.get(f"/v1/jobs/{job['id']}", headers=ADMIN)).json()
    assert read["payload"] == {"data": data, "echo": True}
    assert read["result"]["echo"] == data
    assert read["result"]["size"] == len(data)


async def test_a_very_large_result_is_a_link_that_streams_it(
    client: httpx.AsyncClient, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    data = "L" * (INLINE_BYTES + 1)
    submitted = await client.post(
        "/v1/jobs/bulky", json={"data": data, "echo": True}, headers=ADMIN
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    assert await run_one(redis, blob_settings) is JobState.COMPLETE

    read = (await client.get(f"/v1/jobs/{job_id}", headers=ADMIN)).json()
    link = read["result"][BLOB_FIELD]
    assert link["href"] == f"/v1/jobs/{job_id}/result"
    assert link["size"] > INLINE_BYTES
    fetched = await client.get(link["href"], headers=ADMIN)
    assert fetched.status_code == 200
    assert fetched.json()["echo"] == data
    payload = await client.get(read["payload"][BLOB_FIELD]["href"], headers=ADMIN)
    assert payload.json() == {"data": data, "echo": True}


async def test_a_job_with_nothing_offloaded_has_no_blob_route(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/jobs/bulky", json={"data": "tiny"}, headers=ADMIN)).json()
    assert job["payload"] == {"data": "tiny", "echo": False}
    missing = await client.get(f"/v1/jobs/{job['id']}/payload", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_a_key_over_its_quota_of_stored_bytes_is_refused(client: httpx.AsyncClient) -> None:
    half = {"data": "q" * (QUOTA_BYTES // 2)}
    assert (await client.post("/v1/jobs/bulky", json=half, headers=SMALL_QUOTA)).status_code == 201

    refused = await client.post("/v1/jobs/bulky", json=half, headers=SMALL_QUOTA)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["field"] == "max_stored_bytes"
    assert int(refused.headers["retry-after"]) >= 1

    whole = {"data": "w" * QUOTA_BYTES}
    too_large = await client.post("/v1/jobs/bulky", json=whole, headers=SMALL_QUOTA)
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["field"] == "max_stored_bytes"
    # Small payloads stay inline: they cost the quota nothing.
    tiny = await client.post("/v1/jobs/bulky", json={"data": "t"}, headers=SMALL_QUOTA)
    assert tiny.status_code == 201
    # Another key is not held back by it.
    assert (await client.post("/v1/jobs/bulky", json=half, headers=ADMIN)).status_code == 201


async def test_a_bulk_delete_takes_the_jobs_blobs_with_it(
    client: httpx.AsyncClient, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    big = {"data": "b" * 5000, "echo": True}
    job_ids = [
        (await client.post("/v1/jobs/bulky", json=big, headers=ADMIN)).json()["id"]
        for _ in range(3)
    ]
    assert await run_one(redis, blob_settings) is JobState.COMPLETE  # a result blob too
    folder = Path(blob_settings.url.removeprefix("file://")) / "jobs"
    assert {p.name for p in folder.iterdir()} == set(job_ids)
    assert len([p for p in folder.rglob("result.*") if p.is_file()]) == 1
    cancel = {"action": "cancel", "filter": {"job_type": "bulky", "state": "queued"}}
    assert (await bulk(client, cancel))["done"] == 2

    delete = {"action": "delete", "filter": {"job_type": "bulky"}}
    assert (await bulk(client, delete))["done"] == 3
    assert [p for p in folder.rglob("*") if p.is_file()] == []


async def bulk(client: httpx.AsyncClient, action: dict[str, Any]) -> dict[str, Any]:
    """Run a bulk action; its status once it finished."""
    started = await client.post("/v1/bulk", json=action, headers=ADMIN)
    assert started.status_code == 202, started.text
    bulk_id = started.json()["id"]
    for _ in range(500):
        status: dict[str, Any] = (await client.get(f"/v1/bulk/{bulk_id}", headers=ADMIN)).json()
        if status["state"] != "running":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"bulk action {bulk_id} never finished: {status}")


async def test_a_blob_store_fault_is_a_503_and_jobs_stay_readable(
    client: httpx.AsyncClient, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    payload = {"data": "f" * 5000, "echo": True}
    submitted = await client.post("/v1/jobs/bulky", json=payload, headers=ADMIN)
    job_id = submitted.json()["id"]
    assert await run_one(redis, blob_settings) is JobState.COMPLETE
    # The store's folder becomes a file: every read and write of it fails.
    folder = Path(blob_settings.url.removeprefix("file://"))
    shutil.rmtree(folder)
    folder.write_text("not a folder")

    refused = await client.post("/v1/jobs/bulky", json=payload, headers=ADMIN)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert str(folder) not in refused.text  # the store's own message stays in the logs
    read = await client.get(f"/v1/jobs/{job_id}", headers=ADMIN)
    assert read.status_code == 200
    assert read.json()["result"][BLOB_FIELD]["href"] == f"/v1/jobs/{job_id}/result"
    assert (await client.get(f"/v1/jobs/{job_id}/result", headers=ADMIN)).status_code == 503
    # Small payloads stay inline: they need no store.
    tiny = await client.post("/v1/jobs/bulky", json={"data": "t"}, headers=ADMIN)
    assert tiny.status_code == 201


async def test_a_type_that_offloads_takes_payloads_past_the_body_limit(
    client: httpx.AsyncClient, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    """Up to max_upload_bytes (10 MiB), where other types stop at max_body_bytes (1 MiB)."""
    data = "m" * (2 * 1024 * 1024)
    accepted = await client.post("/v1/jobs/bulky", json={"data": data}, headers=ADMIN)
    assert accepted.status_code == 201, accepted.text[:200]
    assert await run_one(redis, blob_settings) is JobState.COMPLETE
    read = (await client.get(f"/v1/jobs/{accepted.json()['id']}", headers=ADMIN)).json()
    assert read["result"]["size"] == len(data)

    refused = await client.post(
        "/v1/jobs/flaky", json={"fail_times": 0, "pad": data}, headers=ADMIN
    )
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/problem+json"


async def test_the_api_exports_each_keys_quota_and_use_without_a_write(
    redis_url: str, redis: ArqRedis, blob_settings: BlobSettings
) -> None:
    """The alert near a quota reads these gauges: the api keeps them current
    from Redis, not only when the key writes."""
    name = "quota-gauged"
    await stored_bytes.count(redis, name, 1234, time.time() + 3600)
    keys = [*KEYS, api_key(name, "cvk_quota_gauged", max_stored_bytes=QUOTA_BYTES)]
    async with serve(make_app(redis_url, keys=keys, blobs=blob_settings), authenticated=False):
        deadline = time.monotonic() + 10  # a fault bound: it reads at start
        while REGISTRY.get_sample_value("conveyor_stored_bytes", {"api_key": name}) != 1234:
            assert time.monotonic() < deadline, "the api never exported the key's use"
            await asyncio.sleep(0.02)
        limit = REGISTRY.get_sample_value("conveyor_stored_bytes_limit", {"api_key": name})
        assert limit == QUOTA_BYTES
