"""Documents: type sniffing by content, text extraction, and the record in Redis."""

import pytest
from arq.connections import ArqRedis

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
    assert sniff(name, data) == expected


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
        sniff(name, data)


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


async def test_store_keeps_content_and_expiry(redis: ArqRedis) -> None:
    store = DocumentStore(redis)
    await _create(store, "d1", 60)
    document = await store.get("d1")
    assert document is not None
    assert document.name == "a.txt"
    assert not document.processed
    assert await store.content("d1") == b"text"
    # Redis drops it a day after retention even if cleanup never runs.
    assert 86_400 < await redis.ttl(keys.document_key("d1")) <= 86_460
    assert 86_400 < await redis.ttl(keys.document_content_key("d1")) <= 86_460
    # Past its retention it is gone for readers, before cleanup removes it.
    assert await store.get("d1", at_ms=now_ms() + 61_000) is None


async def test_mark_processed_stores_and_counts_once(redis: ArqRedis) -> None:
    store = DocumentStore(redis)
    await _create(store, "d1", 60)
    assert await store.mark_processed("d1", summary="first") is True
    assert await store.mark_processed("d1", summary="second") is False
    document = await store.get("d1")
    assert document is not None
    assert document.processed
    assert document.fields["summary"] == "first"
    counts = await take_counts(redis, "run-1", [])
    assert counts.by_name["documents"] == {"processed": 1}


async def test_writes_to_a_removed_document_do_not_revive_it(redis: ArqRedis) -> None:
    store = DocumentStore(redis)
    assert await store.update("gone", job_id="x") is False
    assert await store.mark_processed("gone", summary="s") is None
    assert not await redis.exists(keys.document_key("gone"))


async def test_remove_expired_takes_only_what_is_past_retention(redis: ArqRedis) -> None:
    store = DocumentStore(redis)
    for i in range(450):  # more than one batch
        await _create(store, f"old{i}", 1)
    await _create(store, "fresh", 3600)
    removed = await store.remove_expired(at_ms=now_ms() + 2_000)
    assert sorted(removed) == sorted(f"old{i}" for i in range(450))
    assert await redis.zcard(keys.DOCUMENTS_BY_EXPIRY) == 1
    assert not await redis.exists(keys.document_key("old0"), keys.document_content_key("old0"))
    assert await store.get("fresh") is not None
    assert await store.content("fresh") == b"text"
