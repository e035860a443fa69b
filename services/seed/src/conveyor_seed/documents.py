"""Uploaded documents: what a file is (by its content), its text, and its record.

The upload route sniffs and stores; the `process_document` job extracts and
summarizes. Both read and write documents through `DocumentStore`. Bytes live
in the blob store (conveyor_core.blobs): the upload as it came and the
extracted text; Redis keeps only the record (name, type, size, checksums,
state, summary, job ids), so a document costs Redis the same whatever its size.
"""

import codecs
import io
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib.resources import files
from typing import Any, BinaryIO

from arq.connections import ArqRedis
from pydantic import BaseModel, Field
from pypdf import PdfReader

from conveyor_core.blobs import BlobRef, BlobStore
from conveyor_core.jobs import ms_to_datetime, now_ms
from conveyor_core.stats import COUNTS_KEY
from conveyor_seed import keys

# pypdf logs every oddity of a damaged file; the error we raise says enough.
logging.getLogger("pypdf").setLevel(logging.ERROR)

PDF = "application/pdf"
MARKDOWN = "text/markdown"
PLAIN_TEXT = "text/plain"
PDF_MAGIC = b"%PDF-"
MARKDOWN_SUFFIXES = (".md", ".markdown")
# Control characters other than tab, newlines and form feed mean "binary, not
# text". Each is one byte in UTF-8, never part of another character's bytes,
# so the raw bytes are checked: bytes.translate is ~6x a regex over the text.
BINARY_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20)])
# Redis drops a document this long after its retention even if cleanup never runs.
EXPIRY_BACKSTOP_S = 86_400
# Cleanup removes at most this many documents per Redis call.
CLEANUP_BATCH = 200
# An upload is read (sniffed, stored) in chunks of this size, never whole.
CHUNK_BYTES = 1024 * 1024
# A blob under documents/ with no record this long after it was written is
# an orphan (an upload that crashed half-way): cleanup deletes it.
ORPHAN_GRACE_S = 3600
BLOB_PREFIX = "documents/"
# Direct uploads (presigned PUTs) land here until registered.
UPLOAD_PREFIX = "uploads/"
# Blobs each cleanup looks at per prefix (an EXISTS each), resuming where the last stopped.
ORPHAN_SWEEP_BUDGET = 1000
# A sweep's resume point lives this long: lost or expired, the next starts over.
SWEEP_CURSOR_TTL_S = 7 * 86_400


class DocumentError(ValueError):
    """An upload that cannot become a document; `status` is the HTTP answer."""

    status = 422
    title = "Unprocessable document"


class EmptyDocumentError(DocumentError):
    title = "Empty document"


class UnsupportedDocumentError(DocumentError):
    status = 415
    title = "Unsupported document type"


class CorruptDocumentError(DocumentError):
    title = "Corrupt document"


def _chunks_of(file: BinaryIO) -> Any:
    while chunk := file.read(CHUNK_BYTES):
        yield chunk


def sniff(name: str, file: BinaryIO) -> str:
    """The document's media type, judged by its content (read from `file` in
    chunks, never whole); the name only tells Markdown from plain text, and a
    `.pdf` name must hold a PDF. Leaves `file` at its start."""
    try:
        head = file.read(len(PDF_MAGIC))
        file.seek(0)
        if not head:
            raise EmptyDocumentError("The file is empty.")
        if head == PDF_MAGIC:
            check_pdf(file)
            return PDF
        if name.lower().endswith(".pdf"):
            raise UnsupportedDocumentError(f"{name!r} is named like a PDF but is not one.")
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        blank = True
        try:
            for chunk in _chunks_of(file):
                text = decoder.decode(chunk)
                if len(chunk.translate(None, BINARY_CONTROL_BYTES)) != len(chunk):
                    raise UnsupportedDocumentError(f"{name!r} holds binary data, not text.")
                blank = blank and not text.strip()
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UnsupportedDocumentError(
                f"{name!r} is neither a PDF nor UTF-8 text; upload text, Markdown or PDF."
            ) from None
        if blank:
            raise EmptyDocumentError("The file holds only whitespace.")
        return MARKDOWN if name.lower().endswith(MARKDOWN_SUFFIXES) else PLAIN_TEXT
    finally:
        file.seek(0)


def _pdf_reader(data: BinaryIO) -> PdfReader:
    """A reader over a PDF that opens and has pages, or CorruptDocumentError."""
    try:
        reader = PdfReader(data)
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptDocumentError("The PDF is encrypted; upload it without a password.")
        if len(reader.pages) == 0:
            raise CorruptDocumentError("The PDF has no pages.")
    except DocumentError:
        raise
    # pypdf raises many kinds of errors on damaged input, not only PdfReadError.
    except Exception as exc:
        raise CorruptDocumentError(f"The PDF cannot be read: {exc}") from None
    return reader


def check_pdf(data: BinaryIO) -> None:
    _pdf_reader(data)


def extract_text(content_type: str, data: bytes) -> str:
    """The document's text: decoded for text types, extracted page by page for PDF."""
    if content_type != PDF:
        return data.decode("utf-8-sig")
    reader = _pdf_reader(io.BytesIO(data))
    pages: list[str] = []
    for page in reader.pages:
        try:
            pages.append(page.extract_text().strip())
        except Exception as exc:  # one bad page should not lose the others
            raise CorruptDocumentError(f"A page of the PDF cannot be read: {exc}") from None
    return "\n\n".join(page for page in pages if page)


class DocumentState(StrEnum):
    PROCESSING = "processing"  # uploaded; process_document has not finished
    PROCESSED = "processed"  # text and summary are stored
    FAILED = "failed"  # process_document gave up (see its job)


class DocumentJobs(BaseModel):
    process: str | None = Field(default=None, description="The process_document job.")
    email: str | None = Field(default=None, description="The email_user job, once enqueued.")
    group: str | None = Field(
        default=None,
        description="A long document's: the group summarizing its chunks in parallel "
        "(GET /v1/workflows/{id} shows it).",
    )


class DocumentPublic(BaseModel):
    """A document as the api returns it."""

    id: str
    name: str
    content_type: str
    size_bytes: int
    state: DocumentState
    notify: bool = Field(description="Whether a mail goes out when it is processed.")
    summary: str | None = None
    summarizer: str | None = None
    text: str | None = Field(default=None, description="The extracted text, cut to `text_chars`.")
    text_chars: int | None = Field(default=None, description="Length of the stored text.")
    text_truncated: bool = Field(
        default=False, description="The text shown (or stored) is cut short."
    )
    uploaded_at: datetime
    processed_at: datetime | None = None
    expires_at: datetime
    extract_ms: int | None = None
    summarize_ms: int | None = None
    chunks: int | None = Field(
        default=None, description="A long document's: how many chunks were summarized apart."
    )
    jobs: DocumentJobs


@dataclass(frozen=True, slots=True)
class Document:
    """A document's record, as jobs and routes read it."""

    id: str
    name: str
    content_type: str
    size_bytes: int
    notify_email: str
    uploaded_at_ms: int
    expires_at_ms: int
    fields: dict[str, str]

    @property
    def processed(self) -> bool:
        return bool(self.fields.get("processed_at_ms"))

    def get(self, field: str) -> str | None:
        return self.fields.get(field) or None

    @property
    def content(self) -> BlobRef:
        """Where the upload's bytes are."""
        return BlobRef(
            self.fields.get("blob_store", ""),
            self.fields.get("content_blob") or content_blob_key(self.id),
            self.size_bytes,
            self.fields.get("content_sha256", ""),
        )

    @property
    def text_blob(self) -> BlobRef | None:
        """Where the extracted text is, once processed."""
        if not self.get("text_blob"):
            return None
        return BlobRef(
            self.fields.get("blob_store", ""),
            self.fields["text_blob"],
            int(self.fields.get("text_bytes") or 0),
            self.fields.get("text_sha256", ""),
        )

    def public(
        self, *, text: str | None = None, text_chars: int = 0, job_dead: bool = False
    ) -> DocumentPublic:
        """As the api shows it; `text` is what was read of the stored text (the
        first `text_chars` characters at most)."""
        state = DocumentState.PROCESSED if self.processed else DocumentState.PROCESSING
        if not self.processed and job_dead:
            state = DocumentState.FAILED
        stored_chars = int(self.fields.get("text_chars") or 0)
        stored_truncated = self.fields.get("text_truncated") == "1"
        extract_ms, summarize_ms = self.get("extract_ms"), self.get("summarize_ms")
        chunks = self.get("chunks")
        shown = (text or "")[:text_chars] if self.processed else None
        return DocumentPublic(
            id=self.id,
            name=self.name,
            content_type=self.content_type,
            size_bytes=self.size_bytes,
            state=state,
            notify=bool(self.notify_email),
            summary=self.fields.get("summary") if self.processed else None,
            summarizer=self.get("summarizer"),
            text=shown,
            text_chars=stored_chars if self.processed else None,
            text_truncated=stored_truncated or stored_chars > text_chars,
            uploaded_at=ms_to_datetime(self.uploaded_at_ms),
            processed_at=ms_to_datetime(self.get("processed_at_ms")),
            expires_at=ms_to_datetime(self.expires_at_ms),
            extract_ms=int(extract_ms) if extract_ms else None,
            summarize_ms=int(summarize_ms) if summarize_ms else None,
            chunks=int(chunks) if chunks else None,
            jobs=DocumentJobs(
                process=self.get("job_id"),
                email=self.get("email_job_id"),
                group=self.get("group_id"),
            ),
        )


def content_blob_key(document_id: str) -> str:
    return f"{BLOB_PREFIX}{document_id}/original"


def text_blob_key(document_id: str) -> str:
    return f"{BLOB_PREFIX}{document_id}/text"


def upload_blob_key(upload_id: str) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}"


def _flatten(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [name, "" if value is None else str(value)]
    return out


def lua_script(name: str) -> str:
    """One of the seed's scripts, from `lua/`."""
    return files("conveyor_seed").joinpath("lua", f"{name}.lua").read_text()


class DocumentStore:
    """Documents: a record per document in Redis (and an expiry index), its
    bytes and its text in the blob store."""

    def __init__(self, redis: ArqRedis, blobs: BlobStore) -> None:
        self.redis = redis
        self.blobs = blobs
        self._create = redis.register_script(lua_script("document_create"))
        self._update = redis.register_script(lua_script("document_update"))
        self._processed = redis.register_script(lua_script("document_processed"))
        self._expire = redis.register_script(lua_script("documents_expire"))

    async def create(
        self,
        document_id: str,
        *,
        name: str,
        content_type: str,
        content: bytes | AsyncIterable[bytes],
        notify_email: str,
        retention_s: int,
        max_bytes: int | None = None,
        uploaded_by: str = "",
    ) -> Document:
        """Store the bytes (streamed) in the blob store, then the record: a
        crash in between leaves an orphan blob, which cleanup deletes.
        `uploaded_by` names the api key that uploaded it (an own-jobs key reads
        only its own documents)."""
        ref = await self.blobs.put(content_blob_key(document_id), content, max_bytes)
        at_ms = now_ms()
        expires_at_ms = at_ms + retention_s * 1000
        fields = {
            "id": document_id,
            "name": name,
            "content_type": content_type,
            "size_bytes": ref.size,
            "notify_email": notify_email,
            "uploaded_by": uploaded_by,
            "uploaded_at_ms": at_ms,
            "expires_at_ms": expires_at_ms,
            "blob_store": ref.store,
            "content_blob": ref.key,
            "content_sha256": ref.sha256,
        }
        ttl_s = retention_s + EXPIRY_BACKSTOP_S
        hash_key = keys.document_key(document_id)
        await self._create(
            keys=[hash_key, keys.DOCUMENTS_BY_EXPIRY],
            args=[document_id, ttl_s, expires_at_ms, *_flatten(fields)],
        )
        return Document(
            document_id,
            name,
            content_type,
            ref.size,
            notify_email,
            at_ms,
            expires_at_ms,
            {k: str(v) for k, v in fields.items()},
        )

    async def get(self, document_id: str, *, at_ms: int | None = None) -> Document | None:
        """The document, or None when it is gone or past its retention."""
        raw = await self.redis.hgetall(keys.document_key(document_id))  # type: ignore[misc]
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if "id" not in fields:  # a stray write after cleanup; not a document
            return None
        expires_at_ms = int(fields["expires_at_ms"])
        if expires_at_ms <= (at_ms if at_ms is not None else now_ms()):
            return None
        return Document(
            id=fields["id"],
            name=fields["name"],
            content_type=fields["content_type"],
            size_bytes=int(fields["size_bytes"]),
            notify_email=fields.get("notify_email", ""),
            uploaded_at_ms=int(fields["uploaded_at_ms"]),
            expires_at_ms=expires_at_ms,
            fields=fields,
        )

    async def remove(self, document_id: str) -> None:
        """Remove a document at once (an upload whose job was refused): its
        record, then its blobs."""
        # One round trip to one slot; no transaction needed: an index entry
        # left behind by a crash in between is removed by cleanup.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.document_key(document_id))
            pipe.zrem(keys.DOCUMENTS_BY_EXPIRY, document_id)
            await pipe.execute()
        await self.blobs.delete(content_blob_key(document_id), text_blob_key(document_id))

    async def content(self, document: Document) -> bytes:
        """The uploaded bytes, checked against the record (BlobIntegrityError,
        BlobNotFoundError otherwise)."""
        return await self.blobs.get(document.content)

    async def text(self, document: Document, max_chars: int) -> str | None:
        """The first `max_chars` characters of the extracted text; None before
        processing. Reads only the blob's first bytes it needs."""
        ref = document.text_blob
        if ref is None or max_chars <= 0:
            return "" if ref is not None or document.processed else None
        chunks: list[bytes] = []
        size = 0
        async with aclosing(self.blobs.stream(ref)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size >= max_chars * 4:  # UTF-8: at most 4 bytes a character
                    break
        return b"".join(chunks).decode("utf-8", errors="ignore")[:max_chars]

    async def update(self, document_id: str, **fields: Any) -> bool:
        """Set fields of a document that still exists."""
        done = await self._update(keys=[keys.document_key(document_id)], args=_flatten(fields))
        return bool(done)

    async def mark_processed(
        self, document_id: str, *, text: str | None, **fields: Any
    ) -> bool | None:
        """Store the text (in the blob store; None: `store_text` did) and the
        results (in the record) once: True when stored now, False when already
        processed, None when the document is gone."""
        document = await self.get(document_id)
        if document is None or document.processed:  # (the script checks again)
            return None if document is None else False
        stored = {}
        if text is not None:
            stored = self._text_fields(await self._put_text(document_id, text))
        done = await self._processed(
            keys=[keys.document_key(document_id), COUNTS_KEY],
            args=_flatten({**fields, **stored, "processed_at_ms": now_ms()}),
        )
        return None if done == -1 else bool(done)

    async def store_text(self, document_id: str, text: str, **fields: Any) -> bool:
        """Store the text before the summary (a long document's chunks read it);
        False when the document is gone. The same text again is harmless."""
        stored = self._text_fields(await self._put_text(document_id, text))
        return await self.update(document_id, **fields, **stored)

    async def _put_text(self, document_id: str, text: str) -> tuple[BlobRef, int]:
        return await self.blobs.put(text_blob_key(document_id), text.encode()), len(text)

    @staticmethod
    def _text_fields(stored: tuple[BlobRef, int]) -> dict[str, Any]:
        ref, chars = stored
        return {
            "text_blob": ref.key,
            "text_bytes": ref.size,
            "text_sha256": ref.sha256,
            "text_chars": chars,
        }

    async def remove_expired(self, *, at_ms: int | None = None) -> list[str]:
        """Remove every document past its retention, in bounded batches: its
        record, then its blobs."""
        at_ms = at_ms if at_ms is not None else now_ms()
        removed: list[str] = []
        while True:
            ids = [
                i.decode()
                for i in await self._expire(
                    keys=[keys.DOCUMENTS_BY_EXPIRY],
                    args=[at_ms, CLEANUP_BATCH, keys.DOCUMENT_PREFIX],
                )
            ]
            for document_id in ids:
                await self.blobs.delete(content_blob_key(document_id), text_blob_key(document_id))
            removed += ids
            if len(ids) < CLEANUP_BATCH:
                return removed

    async def remove_orphans(
        self, *, older_than_s: float = ORPHAN_GRACE_S, budget: int = ORPHAN_SWEEP_BUDGET
    ) -> int:
        """Delete blobs no document refers to: under documents/ those whose
        document has no record (an upload or a cleanup cut short), under
        uploads/ direct uploads never registered. Each call looks at a bounded
        number of blobs under each prefix, after where the last call stopped."""

        async def referenced(key: str) -> bool:
            document_id = key.removeprefix(BLOB_PREFIX).partition("/")[0]
            return bool(await self.redis.exists(keys.document_key(document_id)))

        async def unregistered(key: str) -> bool:
            return False

        orphans = await self._sweep(BLOB_PREFIX, referenced, older_than_s, budget)
        return orphans + await self._sweep(UPLOAD_PREFIX, unregistered, older_than_s, budget)

    async def _sweep(
        self,
        prefix: str,
        referenced: Callable[[str], Awaitable[bool]],
        older_than_s: float,
        budget: int,
    ) -> int:
        """One bounded sweep of `prefix`, resuming where the last one stopped."""
        cursor = keys.blob_sweep_cursor_key(prefix)
        after = await self.redis.get(cursor)
        swept = await self.blobs.sweep(
            prefix, referenced, older_than_s, budget, after.decode() if after else ""
        )
        await self.redis.set(cursor, swept.resume_after, ex=SWEEP_CURSOR_TTL_S)
        return swept.deleted


def retention_for(requested_s: int | None, max_s: int) -> int:
    """A client may keep a document for less than the configured retention, never more."""
    return max_s if requested_s is None else max(1, min(requested_s, max_s))
