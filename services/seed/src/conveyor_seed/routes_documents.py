"""`/v1/documents`: upload a text, Markdown or PDF file to be processed, and read it back.

Mounted by the api (the seed module's API_ROUTERS); the worker never imports it.

An upload is checked (size, type by content, a PDF that opens) before
anything is stored: a bad one leaves nothing behind and enqueues nothing.
"""

from typing import Annotated
from uuid import uuid4

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, EmailStr
from starlette.concurrency import run_in_threadpool

from conveyor_api import tenants
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import RedisDep, SettingsDep, StoreDep
from conveyor_core.catalog import ID_MAX_CHARS, ID_PATTERN
from conveyor_core.enqueue import enqueue
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.logging import bound
from conveyor_seed import PROCESS_DOCUMENT, DocumentRef
from conveyor_seed.documents import (
    DocumentError,
    DocumentPublic,
    DocumentStore,
    retention_for,
    sniff,
)
from conveyor_seed.settings import DocumentSettings, MailPolicySettings, domain_of

router = APIRouter(prefix="/v1/documents", tags=["documents"])

DocumentId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
# Longest file name kept; the name is shown back and used in the mail's subject.
MAX_NAME_CHARS = 255
# What GET shows of the text unless asked for more (or less).
DEFAULT_TEXT_CHARS = 10_000


def get_documents(request: Request, redis: RedisDep) -> DocumentStore:
    """One store per app, on the api's Redis client."""
    documents: DocumentStore | None = getattr(request.app.state, "seed_documents", None)
    if documents is None:
        documents = request.app.state.seed_documents = DocumentStore(redis)
    return documents


def get_document_settings(request: Request) -> DocumentSettings:
    """Read once per app, at its first document request."""
    settings: DocumentSettings | None = getattr(request.app.state, "seed_document_settings", None)
    if settings is None:
        settings = request.app.state.seed_document_settings = DocumentSettings()
    return settings


def get_mail_policy(request: Request) -> MailPolicySettings:
    """Read once per app, at its first upload."""
    policy: MailPolicySettings | None = getattr(request.app.state, "seed_mail_policy", None)
    if policy is None:
        policy = request.app.state.seed_mail_policy = MailPolicySettings()
    return policy


DocumentsDep = Annotated[DocumentStore, Depends(get_documents)]
DocumentSettingsDep = Annotated[DocumentSettings, Depends(get_document_settings)]
MailPolicyDep = Annotated[MailPolicySettings, Depends(get_mail_policy)]
UploaderDep = Annotated[ApiKey, Depends(require(Scope.DOCUMENTS_WRITE))]
ReaderDep = Annotated[ApiKey, Depends(require(Scope.DOCUMENTS_READ))]


class DocumentAccepted(BaseModel):
    """Answer of `POST /v1/documents`: the stored document and its processing job."""

    document: DocumentPublic
    job: JobPublic


def _clean_name(filename: str | None) -> str:
    # Keep the base name only: a client's directory is none of our business.
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(ch for ch in name if ch.isprintable())[:MAX_NAME_CHARS] or "upload"


@router.post(
    "",
    status_code=202,
    summary="Upload a document to process",
    responses={
        400: {"description": "The body is not well-formed multipart/form-data"},
        413: {"description": "The file is over CONVEYOR_DOCUMENTS_MAX_BYTES"},
        415: {"description": "Not text, Markdown or PDF (judged by content)"},
        422: {
            "description": "Empty file, corrupt PDF, missing field, or an address that is "
            "not valid or not in an allowed domain (CONVEYOR_MAIL_ALLOWED_DOMAINS)"
        },
        429: {"description": "Over the key's rate, or its quota of outstanding jobs"},
        503: {"description": "Redis is unavailable; retry after Retry-After"},
    },
)
async def upload_document(
    file: Annotated[UploadFile, File(description="A text, Markdown or PDF file.")],
    response: Response,
    store: StoreDep,
    documents: DocumentsDep,
    limits: DocumentSettingsDep,
    mail_policy: MailPolicyDep,
    uploader: UploaderDep,
    api_settings: SettingsDep,
    notify_email: Annotated[
        EmailStr | None, Form(description="Mail the summary here when it is ready.")
    ] = None,
    retention_s: Annotated[
        int | None,
        Form(ge=1, description="Keep the document this long (at most the configured retention)."),
    ] = None,
) -> DocumentAccepted:
    if notify_email is not None and not mail_policy.allows(notify_email):
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "notify_email"),
                    "msg": f"mail to {domain_of(notify_email)!r} addresses is not allowed "
                    "(CONVEYOR_MAIL_ALLOWED_DOMAINS)",
                    "type": "value_error",
                }
            ]
        )
    if file.size is not None and file.size > limits.max_bytes:
        raise HTTPException(413, f"The file is over the limit of {limits.max_bytes} bytes.")
    content = await file.read(limits.max_bytes + 1)
    if len(content) > limits.max_bytes:
        raise HTTPException(413, f"The file is over the limit of {limits.max_bytes} bytes.")
    name = _clean_name(file.filename)
    try:
        # Opening a PDF is CPU work; keep it off the event loop.
        content_type = await run_in_threadpool(sniff, name, content)
    except DocumentError as exc:
        raise HTTPException(exc.status, str(exc)) from None

    document_id = uuid4().hex
    await documents.create(
        document_id,
        name=name,
        content_type=content_type,
        content=content,
        notify_email=str(notify_email or ""),
        retention_s=retention_for(retention_s, limits.retention_s),
        uploaded_by=uploader.name,
    )
    submitted = await enqueue(
        store,
        PROCESS_DOCUMENT,
        DocumentRef(document_id=document_id),
        idempotency_key=document_id,
        request_id=bound("request_id"),
        submitted_by=uploader.name,
        quota=tenants.quota_of(uploader),
    )
    if submitted.over_quota:  # nothing would process it: keep nothing
        await documents.remove(document_id)
        raise tenants.over_quota(uploader, api_settings.retry_after_s)
    await documents.update(document_id, job_id=submitted.job_id)
    document = await documents.get(document_id)
    job = await store.get(submitted.job_id)
    if document is None or job is None:  # removed in the instant since; unlikely
        raise HTTPException(404, f"Document {document_id} is gone already.")
    response.headers["Location"] = f"/v1/documents/{document_id}"
    return DocumentAccepted(document=document.public(text_chars=0), job=job)


@router.get(
    "/{document_id}",
    summary="Read a document",
    responses={404: {"description": "None"}},
)
async def read_document(
    document_id: DocumentId,
    documents: DocumentsDep,
    store: StoreDep,
    settings: DocumentSettingsDep,
    reader: ReaderDep,
    text_chars: Annotated[
        int, Query(ge=0, description="Show at most this many characters of the text.")
    ] = DEFAULT_TEXT_CHARS,
) -> DocumentPublic:
    document = await documents.get(document_id)
    # Another key's document, to an own-jobs key, is as absent as an expired one.
    if document is None or not tenants.reads_owned_by(reader, document.get("uploaded_by")):
        raise HTTPException(404, f"No document with id {document_id!r} (it may have expired).")
    job_dead = False
    if not document.processed and (job_id := document.get("job_id")):
        job = await store.get(job_id)
        job_dead = job is not None and job.state is JobState.DEAD
    limit = min(text_chars, settings.text_max_chars)
    return document.public(text_chars=limit, job_dead=job_dead)
