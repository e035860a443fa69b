"""The seed's document workflow: process_document, then email_user.

Jobs pass only the document id and re-read the document; every step checks
what an earlier try already did, so a retry after partial success only does
what is left.
"""

import asyncio
import time
from typing import Any

from conveyor_core import JobContext, PermanentJobError
from conveyor_core.blobs import BlobIntegrityError, BlobNotFoundError
from conveyor_seed import EMAIL_USER, DocumentRef
from conveyor_seed.documents import DocumentError, extract_text
from conveyor_seed.resources import WORKFLOW


def _ms_since(start_s: float) -> int:
    return int((time.monotonic() - start_s) * 1000)


async def process_document(ctx: JobContext, payload: DocumentRef) -> dict[str, Any]:
    """Extract the text, summarize it, store both with processed_at, then
    enqueue email_user when the uploader gave an address."""
    flow, document_id = ctx.resource(WORKFLOW), payload.document_id
    document = await flow.documents.get(document_id)
    if document is None:
        raise PermanentJobError(f"document {document_id} is gone (past its retention)")

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
        await ctx.progress(40, "summarizing")
        start_s = time.monotonic()
        summary = await flow.summarizer.summarize(text) if text.strip() else ""
        summarize_ms = _ms_since(start_s)
        limit = flow.settings.documents.text_max_chars
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

    email_job_id = None
    if document.notify_email:
        # The idempotency key makes a retry find the first try's email_user job.
        submitted = await ctx.enqueue(
            EMAIL_USER, DocumentRef(document_id=document_id), idempotency_key=document_id
        )
        email_job_id = submitted.job_id
        await flow.documents.update(document_id, email_job_id=email_job_id)
    return {"document_id": document_id, "email_job_id": email_job_id}
