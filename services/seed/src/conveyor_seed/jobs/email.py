"""Mail jobs: the seed's welcome mail (`send_email`) and the document-ready mail
(`email_user`). Each mail has a key, and the mailer sends a key's mail once."""

from typing import Any

from conveyor_core import JobContext, PermanentJobError
from conveyor_seed import DocumentRef, SendEmail
from conveyor_seed.resources import WORKFLOW


async def send_email(ctx: JobContext, payload: SendEmail) -> dict[str, Any]:
    """One mail per job: a retry or a requeue of this job finds it sent."""
    sent = await ctx.resource(WORKFLOW).mailer.send_once(
        f"send_email:{ctx.job_id}",
        to=str(payload.to_email),
        subject=payload.subject,
        body=payload.body,
        headers={"X-Conveyor-Job-Id": ctx.job_id},
    )
    return {"message_id": sent.message_id, "sent_by_this_try": sent.now}


async def email_user(ctx: JobContext, payload: DocumentRef) -> dict[str, Any]:
    """Tell the uploader their document is processed; one mail per document."""
    document_id = payload.document_id
    flow = ctx.resource(WORKFLOW)
    document = await flow.documents.get(document_id)
    if document is None:
        raise PermanentJobError(f"document {document_id} is gone (past its retention)")
    if not document.processed:
        # process_document enqueues this job only after storing the results.
        raise RuntimeError(f"document {document_id} is not processed yet")
    if not document.notify_email:
        return {"sent": False, "reason": "no address given at upload"}
    summary = document.fields.get("summary") or "(no text was found in the document)"
    body = (
        f"Your document '{document.name}' ({document.content_type}, "
        f"{document.size_bytes} bytes) is ready.\n\n"
        f"Summary:\n{summary}\n\n"
        f"Document id: {document_id}\n"
        f"Read it with GET /v1/documents/{document_id}\n"
    )
    sent = await flow.mailer.send_once(
        f"email_user:{document_id}",
        to=document.notify_email,
        subject=f"Your document '{document.name}' is ready",
        body=body,
        headers={"X-Conveyor-Job-Id": ctx.job_id, "X-Conveyor-Document-Id": document_id},
    )
    return {"sent": True, "message_id": sent.message_id, "sent_by_this_try": sent.now}
