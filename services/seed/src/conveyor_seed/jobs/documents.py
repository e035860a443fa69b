"""The seed's document workflow: process_document, then email_user.

A long document (its text over CONVEYOR_DOCUMENTS_CHUNK_CHARS) is summarized
in parallel: process_document stores its text and starts a group, one
summarize_chunk per chunk, whose continuation combine_summaries joins the
chunks' summaries (in order) into the document's summary, then enqueues
email_user. A short one keeps the single step.

Jobs pass only the document id (and a chunk's offsets) and re-read the
document; every step checks what an earlier try already did, so a retry
after partial success only does what is left: a try of process_document run
again resumes the same group (ctx.group's id is the same on every try), and
the mail goes out once (email_user's idempotency key is the document's id,
and the mailer sends a key's mail once).
"""

import asyncio
import re
import time
from typing import Any

from conveyor_core import Call, ChildFailure, JobContext, PermanentJobError
from conveyor_core.blobs import BlobIntegrityError, BlobNotFoundError
from conveyor_seed import (
    COMBINE_SUMMARIES,
    EMAIL_USER,
    SUMMARIZE_CHUNK,
    DocumentChunk,
    DocumentRef,
)
from conveyor_seed.documents import Document, DocumentError, extract_text
from conveyor_seed.resources import WORKFLOW, Workflow

# A chunk ends at a sentence's (or else a word's) end in its last fifth, so
# no sentence is split when it can be helped.
BREAK = re.compile(r"[.!?]\s|\n\s*\n")


def _ms_since(start_s: float) -> int:
    return int((time.monotonic() - start_s) * 1000)


def chunk_bounds(text: str, chunk_chars: int) -> list[tuple[int, int]]:
    """(start, end) offsets cutting `text` into chunks of at most `chunk_chars`,
    each ending at a sentence's end where there is one in its last fifth, else
    at a space, else where the size says."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        if end < len(text):
            floor = end - chunk_chars // 5
            breaks = [m.end() for m in BREAK.finditer(text, floor, end)]
            space = text.rfind(" ", floor, end)
            end = breaks[-1] if breaks else (space + 1 if space > floor else end)
        bounds.append((start, end))
        start = end
    return bounds


async def _document(flow: Workflow, document_id: str) -> Document:
    document = await flow.documents.get(document_id)
    if document is None:
        raise PermanentJobError(f"document {document_id} is gone (past its retention)")
    return document


async def _mail(ctx: JobContext, flow: Workflow, document: Document) -> str | None:
    """Enqueue email_user when the uploader gave an address: once per document."""
    if not document.notify_email:
        return None
    # The idempotency key makes a retry (or the other step) find the same email_user job.
    submitted = await ctx.enqueue(
        EMAIL_USER, DocumentRef(document_id=document.id), idempotency_key=document.id
    )
    await flow.documents.update(document.id, email_job_id=submitted.job_id)
    return submitted.job_id


async def process_document(ctx: JobContext, payload: DocumentRef) -> dict[str, Any]:
    """Extract the text, summarize it, store both with processed_at, then
    enqueue email_user when the uploader gave an address. A long text's
    chunks are summarized by a group instead, whose continuation mails."""
    flow, document_id = ctx.resource(WORKFLOW), payload.document_id
    document = await _document(flow, document_id)

    if not document.processed:
        try:
            content = await flow.documents.content(document)
        except BlobNotFoundError:
            raise PermanentJobError(f"the content of document {document_id} is gone") from None
        except BlobIntegrityError as exc:
            raise PermanentJobError(f"document {document_id} was changed: {exc}") from None
        await ctx.progress(10, "extracting text")
        start_s = time.monotonic()
        try:
            # pypdf is CPU-bound: run it off the event loop so locks keep renewing.
            text = await asyncio.to_thread(extract_text, document.content_type, content)
        except DocumentError as exc:
            raise PermanentJobError(str(exc)) from exc
        extract_ms = _ms_since(start_s)
        settings = flow.settings.documents
        limit = settings.text_max_chars
        if len(text[:limit]) > settings.chunk_chars:
            return await _fan_out(ctx, flow, document_id, text, extract_ms)
        await ctx.progress(40, "summarizing")
        start_s = time.monotonic()
        summary = await flow.summarizer.summarize(text) if text.strip() else ""
        summarize_ms = _ms_since(start_s)
        stored = await flow.documents.mark_processed(
            document_id,
            text=text[:limit],
            text_truncated=int(len(text) > limit),
            summary=summary,
            summarizer=flow.summarizer.name,
            extract_ms=extract_ms,
            summarize_ms=summarize_ms,
        )
        if stored is None:
            raise PermanentJobError(f"document {document_id} was removed while processing")
        await ctx.progress(80, "processed")
    elif document.get("group_id"):
        # Processed by its group (this try ran again after that): the continuation mails.
        return {"document_id": document_id, "group_id": document.get("group_id")}

    email_job_id = await _mail(ctx, flow, document)
    return {"document_id": document_id, "email_job_id": email_job_id}


async def _fan_out(
    ctx: JobContext, flow: Workflow, document_id: str, text: str, extract_ms: int
) -> dict[str, Any]:
    """Store the text, then summarize its chunks in parallel: a group of
    summarize_chunk, and combine_summaries once every one completed."""
    limit = flow.settings.documents.text_max_chars
    kept = text[:limit]
    bounds = chunk_bounds(kept, flow.settings.documents.chunk_chars)
    stored = await flow.documents.store_text(
        document_id,
        kept,
        text_truncated=int(len(text) > limit),
        extract_ms=extract_ms,
        chunks=len(bounds),
    )
    if not stored:
        raise PermanentJobError(f"document {document_id} was removed while processing")
    await ctx.progress(40, f"summarizing {len(bounds)} chunks in parallel")
    chunks = [
        Call(SUMMARIZE_CHUNK, DocumentChunk(document_id=document_id, index=i, start=a, end=b))
        for i, (a, b) in enumerate(bounds)
    ]
    group = await ctx.group(
        chunks, then=Call(COMBINE_SUMMARIES, DocumentRef(document_id=document_id))
    )
    await flow.documents.update(document_id, group_id=group.id)
    return {"document_id": document_id, "group_id": group.id, "chunks": len(bounds)}


async def summarize_chunk(ctx: JobContext, payload: DocumentChunk) -> dict[str, Any]:
    """One chunk's summary (a member of the document's group)."""
    flow = ctx.resource(WORKFLOW)
    document = await _document(flow, payload.document_id)
    try:
        text = await flow.documents.text(document, payload.end)
    except (BlobNotFoundError, BlobIntegrityError) as exc:
        raise PermanentJobError(f"the text of document {document.id} is unreadable: {exc}") from exc
    if text is None:
        raise PermanentJobError(f"document {document.id} has no stored text to summarize")
    chunk = text[payload.start : payload.end]
    summary = await flow.summarizer.summarize(chunk) if chunk.strip() else ""
    return {"index": payload.index, "chars": len(chunk), "summary": summary}


async def combine_summaries(ctx: JobContext, payload: DocumentRef) -> dict[str, Any]:
    """The chunks' summaries, in order, summarized once more into the
    document's summary; stored once, then the mail (the group's continuation)."""
    flow, document_id = ctx.resource(WORKFLOW), payload.document_id
    document = await _document(flow, document_id)
    results = await ctx.group_results()
    if not document.processed:
        failed = [r for r in results if isinstance(r, ChildFailure)]
        if failed:  # policy "fail" runs this only when none failed; said, not assumed
            raise PermanentJobError(f"chunk {failed[0].index} was not summarized: {failed[0]}")
        await ctx.progress(50, f"combining {len(results)} summaries")
        start_s = time.monotonic()
        joined = " ".join(r["summary"] for r in results if r["summary"])
        summary = await flow.summarizer.summarize(joined) if joined.strip() else ""
        stored = await flow.documents.mark_processed(
            document_id,
            text=None,
            summary=summary,
            summarizer=flow.summarizer.name,
            summarize_ms=_ms_since(start_s),
        )
        if stored is None:
            raise PermanentJobError(f"document {document_id} was removed while processing")
        document = await _document(flow, document_id)
    email_job_id = await _mail(ctx, flow, document)
    return {
        "document_id": document_id,
        "chunks": len(results),
        "summary": document.fields.get("summary", ""),
        "email_job_id": email_job_id,
    }
