"""The blob store's contract, run against each driver: a local folder, and S3
over its wire protocol (moto's server on loopback, see tests/support/s3.py)."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from conveyor_core.blobs import (
    BLOB_STORE_ERRORS,
    BlobIntegrityError,
    BlobNotFoundError,
    BlobRef,
    BlobSettings,
    BlobStore,
    BlobStoreUnavailableError,
    BlobTooLargeError,
)
from tests.support.s3 import s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[tuple[str, str]]:
    with s3_server() as server:
        yield server.endpoint, server.bucket


@pytest.fixture(params=["file", "s3"])
def blobs(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: tuple[str, str]
) -> BlobStore:
    if request.param == "file":
        return BlobStore.from_settings(BlobSettings(url=f"file://{tmp_path}/blobs"))
    endpoint, bucket = s3_endpoint
    settings = BlobSettings(
        url=f"s3://{bucket}/{tmp_path.name}",
        endpoint=endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id="testing",
        secret_access_key=SecretStr("testing"),
    )
    return BlobStore.from_settings(settings)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_bytes_and_streams_round_trip_with_their_checksum(blobs: BlobStore) -> None:
    small = await blobs.put("docs/a.txt", b"hello")
    assert (small.size, small.store) == (5, blobs.name)
    assert await blobs.get(small) == b"hello"
    big_parts = [bytes([i]) * 700_000 for i in range(8)]  # 5.6 MB, streamed in parts
    big = await blobs.put("docs/b.bin", _chunks(*big_parts))
    assert big.size == 5_600_000
    assert await blobs.get(big) == b"".join(big_parts)
    assert BlobRef.from_dict(big.as_dict()) == big


async def test_a_changed_blob_fails_its_check(blobs: BlobStore) -> None:
    ref = await blobs.put("docs/c.txt", b"the real text")
    await blobs.put("docs/c.txt", b"the fake text")  # same size, other bytes
    with pytest.raises(BlobIntegrityError):
        await blobs.get(ref)
    await blobs.put("docs/c.txt", b"short")
    with pytest.raises(BlobIntegrityError):
        await blobs.get(ref)


async def test_a_missing_blob_and_a_second_delete(blobs: BlobStore) -> None:
    ref = await blobs.put("docs/d.txt", b"x")
    await blobs.delete(ref.key)
    await blobs.delete(ref.key)  # nothing left: not an error
    with pytest.raises(BlobNotFoundError):
        await blobs.get(ref)


async def test_a_blob_over_its_limit_is_refused(blobs: BlobStore) -> None:
    with pytest.raises(BlobTooLargeError):
        await blobs.put("docs/e.bin", _chunks(b"a" * 600, b"b" * 600), max_bytes=1000)
    with pytest.raises(BlobTooLargeError):
        await blobs.put("docs/e.bin", b"a" * 1001, max_bytes=1000)


async def test_a_write_refused_part_way_leaves_nothing_behind(
    blobs: BlobStore, tmp_path: Path, s3_endpoint: tuple[str, str]
) -> None:
    """11 MiB written, more than two S3 parts, before the limit refuses it: the
    multipart upload is aborted (no parts left hidden in the bucket), and a
    folder keeps no staging file."""
    mib_chunks = [b"x" * 1024 * 1024] * 12
    with pytest.raises(BlobTooLargeError):
        await blobs.put("docs/big.bin", _chunks(*mib_chunks), max_bytes=11 * 1024 * 1024)
    assert [i.key async for i in blobs.list("docs")] == []
    if blobs.name == "file":
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
        return
    endpoint, bucket = s3_endpoint
    async with httpx.AsyncClient() as client:  # ListMultipartUploads
        listed = await client.get(f"{endpoint}/{bucket}", params={"uploads": ""})
    assert listed.status_code == 200
    assert "<ListMultipartUploadsResult" in listed.text
    assert "<Upload>" not in listed.text


async def test_sweep_deletes_old_unreferenced_blobs_only(blobs: BlobStore) -> None:
    kept = await blobs.put("uploads/kept", b"1")
    orphan = await blobs.put("uploads/orphan", b"2")
    await blobs.put("other/untouched", b"3")

    async def referenced(key: str) -> bool:
        return key == kept.key

    assert (await blobs.sweep("uploads", referenced, older_than_s=3600)).deleted == 0  # young
    assert (await blobs.sweep("uploads", referenced, older_than_s=0)).deleted == 1
    assert sorted([i.key async for i in blobs.list("uploads")]) == ["uploads/kept"]
    assert [i.key async for i in blobs.list("other")] == ["other/untouched"]
    with pytest.raises(BlobNotFoundError):
        await blobs.get(orphan)


async def test_sweeps_with_a_small_budget_walk_every_key_in_turn(blobs: BlobStore) -> None:
    """However many blobs there are, repeated sweeps reach the last one: each
    resumes after the key the previous one stopped at, then starts over."""
    names = [f"{i:02d}" for i in range(7)]
    for name in reversed(names):  # written out of order: a folder lists by directory
        await blobs.put(f"jobs/{name}/payload", name.encode())
    orphans = {"jobs/01/payload", "jobs/06/payload"}  # the last key only a full walk reaches
    looked_at: list[str] = []

    async def referenced(key: str) -> bool:
        looked_at.append(key)
        return key not in orphans

    first = await blobs.sweep("jobs", referenced, older_than_s=0, budget=3)
    assert (first.deleted, first.resume_after) == (1, "jobs/02/payload")
    second = await blobs.sweep("jobs", referenced, 0, budget=3, after=first.resume_after)
    assert (second.deleted, second.resume_after) == (0, "jobs/05/payload")
    third = await blobs.sweep("jobs", referenced, 0, budget=3, after=second.resume_after)
    assert (third.deleted, third.resume_after) == (1, "")  # the end: start over next time
    assert looked_at == [f"jobs/{name}/payload" for name in names]
    remaining = sorted([i.key async for i in blobs.list("jobs")])
    assert remaining == [f"jobs/{n}/payload" for n in names if f"jobs/{n}/payload" not in orphans]


async def test_presigned_urls_upload_and_download_directly(blobs: BlobStore) -> None:
    put_url = await blobs.presign("PUT", "direct/upload.txt")
    if blobs.name == "file":
        assert put_url is None  # a folder cannot presign: the api streams instead
        return
    assert put_url is not None
    async with httpx.AsyncClient() as client:
        (await client.put(put_url, content=b"straight to the store")).raise_for_status()
        get_url = await blobs.presign("GET", "direct/upload.txt")
        assert get_url is not None
        answer = await client.get(get_url)
    assert answer.content == b"straight to the store"
    infos = [i async for i in blobs.list("direct")]
    assert [(i.key, i.size) for i in infos] == [("direct/upload.txt", 21)]


async def test_a_store_that_cannot_be_opened_refuses_every_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A folder the service cannot make (a pod's read-only filesystem): it starts
    anyway, and each use of the store says what to set, as a store fault."""
    blobs = BlobStore.open(BlobSettings(url="file:///proc/conveyor-blobs"))
    # The operator's log names the setting and the folder.
    assert "CONVEYOR_BLOBS_URL file:///proc/conveyor-blobs" in caplog.text
    uses = [
        blobs.put("a", b"x"),
        blobs.get(BlobRef("file", "a", 1, "0" * 64)),
        blobs.delete("a"),
        blobs.presign("PUT", "a"),
        blobs.sweep("a", lambda key: asyncio.sleep(0, True), 0),
    ]
    for use in uses:
        with pytest.raises(BLOB_STORE_ERRORS) as refused:
            await use
        assert isinstance(refused.value, BlobStoreUnavailableError)
        assert "CONVEYOR_BLOBS_URL" in str(refused.value)
        assert "/proc" not in str(refused.value)  # a job's error shows no path
    with pytest.raises(FileNotFoundError):  # from_settings itself still raises
        BlobStore.from_settings(BlobSettings(url="file:///proc/conveyor-blobs"))


def test_a_store_that_opens_is_the_configured_one(tmp_path: Path) -> None:
    blobs = BlobStore.open(BlobSettings(url=f"file://{tmp_path}/blobs"))
    assert blobs.name == "file"
    assert (tmp_path / "blobs").is_dir()
