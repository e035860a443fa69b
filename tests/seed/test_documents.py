"""Documents: type sniffing by content, text extraction, the record in Redis and
the bytes in the blob store."""

import io
from pathlib import Path

import pytest
from arq.connections import ArqRedis

from conveyor_core.blobs import BlobIntegrityError, BlobSettings, BlobStore
from conveyor_core.cluster import ClusterClient
from conveyor_core.jobs import now_ms
from conveyor_core.stats import take_counts
from conveyor_seed import keys
from conveyor_seed.documents import (
    MARKDOWN,
    PDF,
    PLAIN_TEXT,
    CorruptDocumentError,
    DocumentStore,
    EmptyDocumentError,
    UnsupportedDocumentError,
    extract_text,
    retention_for,
    sniff,
)
from tests.support.pdf import make_pdf

pytestmark = pytest.mark.xdist_group("cluster")

PDF_BYTES = make_pdf([["First page. It has words."], ["Second page."]])


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("a.txt", b"plain words\n", PLAIN_TEXT),
        ("noname", "caf\u00e9 \u2014 text".encode(), PLAIN_TEXT),
        ("a.md", b"# Title\n\ntext", MARKDOWN),
        ("A.MARKDOWN", b"text", MARKDOWN),
        ("a.pdf", PDF_BYTES, PDF),
        ("a.txt", PDF_BYTES, PDF),  # the content decides, not the name
        ("a.md", PDF_BYTES, PDF),
    ],
)
def test_sniff_judges_by_content(name: str, data: bytes, expected: str) -> None:
    file = io.BytesIO(data)
    assert sniff(name, file) == expected
    assert file.tell() == 0  # left at its start, for the upload that follows


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("a.txt", b"", EmptyDocumentError),
        ("a.txt", b" \n\t ", EmptyDocumentError),
        ("a.pdf", b"plain text named like a PDF", UnsupportedDocumentError),
        ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", UnsupportedDocumentError),
        ("a.txt", b"\xff\xfe\x00t\x00e", UnsupportedDocumentError),
        ("a.txt", b"text with a \x00 NUL", UnsupportedDocumentError),
        ("a.pdf", b"%PDF-1.4\nnot really a pdf at all", CorruptDocumentError),
        ("a.pdf", PDF_BYTES[: len(PDF_BYTES) // 3], CorruptDocumentError),
    ],
)
def test_sniff_refuses_what_is_not_a_document(name: str, data: bytes, error: type) -> None:
    with pytest.raises(error):
        sniff(name, io.BytesIO(data))


def test_sniff_reads_text_in_chunks_across_a_split_character() -> None:
    """A multi-byte character cut by a chunk boundary is still text."""
    data = b"a" * (1024 * 1024 - 1) + "\u00e9 end".encode()
    assert sniff("big.txt", io.BytesIO(data)) == PLAIN_TEXT


def test_status_codes_of_document_errors() -> None:
    assert UnsupportedDocumentError.status == 415
    assert CorruptDocumentError.status == EmptyDocumentError.status == 422


def test_extract_text_from_pdf_and_text() -> None:
    assert extract_text(PDF, PDF_BYTES) == "First page. It has words.\n\nSecond page."
    assert extract_text(PLAIN_TEXT, "\ufeffbom and text".encode()) == "bom and text"


def test_retention_is_capped_by_the_setting() -> None:
    assert retention_for(None, 100) == 100
    assert retention_for(10, 100) == 10
    assert retention_for(1000, 100) == 100


async def _create(store: DocumentStore, document_id: str, retention_s: int) -> None:
    await store.create(
        document_id,
        name="a.txt",
        content_type=PLAIN_TEXT,
        content=b"text",
        notify_email="",
        retention_s=retention_s,
    )


@pytest.fixture
def redis(node_or_cluster_redis: ArqRedis) -> ArqRedis:
    """The store's tests run on one Redis node, then on a cluster (every call in one slot)."""
    return node_or_cluster_redis


async def every_key(redis: ArqRedis, pattern: str) -> list[bytes]:
    """KEYS over the one node, or over every primary of a cluster."""
    if isinstance(redis, ClusterClient):
        found: list[bytes] = await redis.keys(pattern, target_nodes=ClusterClient.PRIMARIES)
        return found
    on_node: list[bytes] = await redis.keys(pattern)
    return on_node


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore.from_settings(BlobSettings(url=f"file://{tmp_path}/blobs"))


async def test_store_keeps_the_bytes_in_the_blob_store(redis: ArqRedis, blobs: BlobStore) -> None:
    store = DocumentStore(redis, blobs)
    await _create(store, "d1", 60)
    document = await store.get("d1")
    assert document is not None
    assert document.name == "a.txt"
    assert not document.processed
    assert await store.content(document) == b"text"
    assert document.content.size == 4
    assert await every_key(redis, "*d1*") == [keys.document_key("d1").encode()]  # the record only
    # Redis drops it a day after retention even if cleanup never runs.
    assert 86_400 < await redis.ttl(keys.document_key("d1")) <= 86_460
    await blobs.put(document.content.key, b"TEXT")  # changed behind the record's back
    with pytest.raises(BlobIntegrityError):
        await store.content(document)
    # Past its retention it is gone for readers, before cleanup removes it.
    assert await store.get("d1", at_ms=now_ms() + 61_000) is None


async def test_mark_processed_stores_and_counts_once(redis: ArqRedis, blobs: BlobStore) -> None:
    store = DocumentStore(redis, blobs)
    await _create(store, "d1", 60)
    assert await store.mark_processed("d1", text="the text", summary="first") is True
    assert await store.mark_processed("d1", text="other", summary="second") is False
    document = await store.get("d1")
    assert document is not None
    assert document.processed
    assert document.fields["summary"] == "first"
    assert "text" not in document.fields  # the text is a blob
    assert await store.text(document, 3) == "the"
    assert await store.text(document, 100) == "the text"
    counts = await take_counts(redis, "run-1", [])
    assert counts.by_name["documents"] == {"processed": 1}


async def test_writes_to_a_removed_document_do_not_revive_it(
    redis: ArqRedis, blobs: BlobStore
) -> None:
    store = DocumentStore(redis, blobs)
    assert await store.update("gone", job_id="x") is False
    assert await store.mark_processed("gone", text="t", summary="s") is None
    assert not await redis.exists(keys.document_key("gone"))
    assert [i.key async for i in blobs.list("documents")] == []


async def test_remove_expired_takes_only_what_is_past_retention(
    redis: ArqRedis, blobs: BlobStore
) -> None:
    store = DocumentStore(redis, blobs)
    for i in range(450):  # more than one batch
        await _create(store, f"old{i}", 1)
    await _create(store, "fresh", 3600)
    removed = await store.remove_expired(at_ms=now_ms() + 2_000)
    assert sorted(removed) == sorted(f"old{i}" for i in range(450))
    assert await redis.zcard(keys.DOCUMENTS_BY_EXPIRY) == 1
    assert not await redis.exists(keys.document_key("old0"))
    fresh = await store.get("fresh")
    assert fresh is not None
    assert await store.content(fresh) == b"text"
    assert [i.key async for i in blobs.list("documents")] == ["documents/fresh/original"]


async def test_orphan_blobs_are_removed_after_their_grace(
    redis: ArqRedis, blobs: BlobStore
) -> None:
    store = DocumentStore(redis, blobs)
    await _create(store, "kept", 3600)
    await blobs.put("documents/crashed/original", b"an upload whose record never came")
    await blobs.put("uploads/never-registered", b"a direct upload")
    assert await store.remove_orphans(older_than_s=3600) == 0  # within the grace
    assert await store.remove_orphans(older_than_s=0) == 2
    remaining = sorted([i.key async for i in blobs.list("")])
    assert remaining == ["documents/kept/original"]


async def test_orphans_past_the_first_budget_are_reached_by_later_cleanups(
    redis: ArqRedis, blobs: BlobStore
) -> None:
    store = DocumentStore(redis, blobs)
    for name in ("a", "b", "c"):
        await _create(store, name, 3600)
    # Keys sorting after every live document's: a sweep that always began at
    # the start with a budget of 2 would never reach them.
    await blobs.put("documents/z1/original", b"orphan")
    await blobs.put("documents/z2/text", b"orphan")
    await blobs.put("uploads/z3", b"never registered")
    # Each cleanup looks at 2 blobs a prefix: a and b (and uploads/z3), then c
    # and z1, then z2.
    swept = [await store.remove_orphans(older_than_s=0, budget=2) for _ in range(3)]
    assert swept == [1, 1, 1]
    remaining = sorted([i.key async for i in blobs.list("")])
    assert remaining == [f"documents/{name}/original" for name in ("a", "b", "c")]
