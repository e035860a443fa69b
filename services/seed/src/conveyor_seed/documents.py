"""Uploaded documents: what a file is (by its content), its text, and its record in Redis.

The upload route sniffs and stores; the `process_document` job extracts and
summarizes. Both read and write records through `DocumentStore`.
"""

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib.resources import files
from typing import Any

from arq.connections import ArqRedis
from pydantic import BaseModel, Field
from pypdf import PdfReader

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
# Control characters other than tab, newlines and form feed mean "binary, not text".
TEXT_CONTROL_OK = frozenset("\t\n\r\f")
# Redis drops a document this long after its retention even if cleanup never runs.
EXPIRY_BACKSTOP_S = 86_400
# Cleanup removes at most this many documents per Redis call.
CLEANUP_BATCH = 200


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


def sniff(name: str, data: bytes) -> str:
    """The document's media type, judged by its content; the name only tells
    Markdown from plain text, and a `.pdf` name must hold a PDF."""
    if not data:
        raise EmptyDocumentError("The file is empty.")
    if data.startswith(PDF_MAGIC):
        check_pdf(data)
        return PDF
    if name.lower().endswith(".pdf"):
        raise UnsupportedDocumentError(f"{name!r} is named like a PDF but is not one.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedDocumentError(
            f"{name!r} is neither a PDF nor UTF-8 text; upload text, Markdown or PDF."
        ) from None
    if any(ch < " " and ch not in TEXT_CONTROL_OK for ch in text):
        raise UnsupportedDocumentError(f"{name!r} holds binary data, not text.")
    if not text.strip():
        raise EmptyDocumentError("The file holds only whitespace.")
    return MARKDOWN if name.lower().endswith(MARKDOWN_SUFFIXES) else PLAIN_TEXT


def _pdf_reader(data: bytes) -> PdfReader:
    """A reader over a PDF that opens and has pages, or CorruptDocumentError."""
    try:
        reader = PdfReader(io.BytesIO(data))
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


def check_pdf(data: bytes) -> None:
    _pdf_reader(data)


def extract_text(content_type: str, data: bytes) -> str:
    """The document's text: decoded for text types, extracted page by page for PDF."""
    if content_type != PDF:
        return data.decode("utf-8-sig")
    reader = _pdf_reader(data)
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

    def public(self, *, text_chars: int, job_dead: bool = False) -> DocumentPublic:
        state = DocumentState.PROCESSED if self.processed else DocumentState.PROCESSING
        if not self.processed and job_dead:
            state = DocumentState.FAILED
        text = self.get("text")
        stored_truncated = self.fields.get("text_truncated") == "1"
        extract_ms, summarize_ms = self.get("extract_ms"), self.get("summarize_ms")
        return DocumentPublic(
            id=self.id,
            name=self.name,
            content_type=self.content_type,
            size_bytes=self.size_bytes,
            state=state,
            notify=bool(self.notify_email),
            summary=self.fields.get("summary") if self.processed else None,
            summarizer=self.get("summarizer"),
            text=text[:text_chars] if text is not None else ("" if self.processed else None),
            text_chars=len(text or "") if self.processed else None,
            text_truncated=stored_truncated or len(text or "") > text_chars,
            uploaded_at=ms_to_datetime(self.uploaded_at_ms),
            processed_at=ms_to_datetime(self.get("processed_at_ms")),
            expires_at=ms_to_datetime(self.expires_at_ms),
            extract_ms=int(extract_ms) if extract_ms else None,
            summarize_ms=int(summarize_ms) if summarize_ms else None,
            jobs=DocumentJobs(process=self.get("job_id"), email=self.get("email_job_id")),
        )


def _flatten(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out += [name, "" if value is None else str(value)]
    return out


def lua_script(name: str) -> str:
    """One of the seed's scripts, from `lua/`."""
    return files("conveyor_seed").joinpath("lua", f"{name}.lua").read_text()


class DocumentStore:
    """Documents in Redis: a hash and the content per document, and an expiry index."""

    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self._update = redis.register_script(lua_script("document_update"))
        self._processed = redis.register_script(lua_script("document_processed"))
        self._expire = redis.register_script(lua_script("documents_expire"))

    async def create(
        self,
        document_id: str,
        *,
        name: str,
        content_type: str,
        content: bytes,
        notify_email: str,
        retention_s: int,
        uploaded_by: str = "",
    ) -> Document:
        """Store a document; `uploaded_by` names the api key that uploaded it
        (an own-jobs key reads only its own documents)."""
        at_ms = now_ms()
        expires_at_ms = at_ms + retention_s * 1000
        fields = {
            "id": document_id,
            "name": name,
            "content_type": content_type,
            "size_bytes": len(content),
            "notify_email": notify_email,
            "uploaded_by": uploaded_by,
            "uploaded_at_ms": at_ms,
            "expires_at_ms": expires_at_ms,
        }
        ttl_s = retention_s + EXPIRY_BACKSTOP_S
        hash_key = keys.document_key(document_id)
        content_key = keys.document_content_key(document_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(hash_key, mapping=fields)
            pipe.expire(hash_key, ttl_s)
            pipe.set(content_key, content, ex=ttl_s)
            pipe.zadd(keys.DOCUMENTS_BY_EXPIRY, {document_id: expires_at_ms})
            await pipe.execute()
        return Document(
            document_id,
            name,
            content_type,
            len(content),
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
        """Remove a document at once (an upload whose job was refused)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.document_key(document_id), keys.document_content_key(document_id))
            pipe.zrem(keys.DOCUMENTS_BY_EXPIRY, document_id)
            await pipe.execute()

    async def content(self, document_id: str) -> bytes | None:
        data: bytes | None = await self.redis.get(keys.document_content_key(document_id))
        return data

    async def update(self, document_id: str, **fields: Any) -> bool:
        """Set fields of a document that still exists."""
        done = await self._update(keys=[keys.document_key(document_id)], args=_flatten(fields))
        return bool(done)

    async def mark_processed(self, document_id: str, **fields: Any) -> bool | None:
        """Store the results once: True when stored now, False when already
        processed, None when the document is gone."""
        done = await self._processed(
            keys=[keys.document_key(document_id), COUNTS_KEY],
            args=_flatten({**fields, "processed_at_ms": now_ms()}),
        )
        return None if done == -1 else bool(done)

    async def remove_expired(self, *, at_ms: int | None = None) -> list[str]:
        """Remove every document past its retention, in bounded batches."""
        at_ms = at_ms if at_ms is not None else now_ms()
        removed: list[str] = []
        while True:
            ids = await self._expire(
                keys=[keys.DOCUMENTS_BY_EXPIRY],
                args=[at_ms, CLEANUP_BATCH, keys.DOCUMENT_PREFIX, keys.DOCUMENT_CONTENT_SUFFIX],
            )
            removed += [i.decode() for i in ids]
            if len(ids) < CLEANUP_BATCH:
                return removed


def retention_for(requested_s: int | None, max_s: int) -> int:
    """A client may keep a document for less than the configured retention, never more."""
    return max_s if requested_s is None else max(1, min(requested_s, max_s))
