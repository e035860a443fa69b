"""`/v1/documents`: upload a text, Markdown or PDF file to be processed, and read it back.

Mounted by the api (the seed module's API_ROUTERS); the worker never imports it.

An upload is checked (size, type by content, a PDF that opens) before
anything is stored: a bad one leaves nothing behind and enqueues nothing.
Its bytes stream to the blob store in chunks (Starlette spools a multipart
file to disk past 1 MB), so the api never holds a whole file in memory.
Clients may also PUT a file straight to the store with a presigned URL and
then register it; downloads are a presigned GET where the store can sign,
else a stream checked against the document's checksum.
"""

import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, BinaryIO, cast
from urllib.parse import quote
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
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, EmailStr, Field
from starlette.concurrency import run_in_threadpool

from conveyor_api import tenants
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import RedisDep, SettingsDep, StoreDep
from conveyor_api.settings import Settings as ApiSettings
from conveyor_core import stored_bytes
from conveyor_core.blobs import BlobNotFoundError, BlobSettings, BlobStore, BlobTooLargeError
from conveyor_core.catalog import ID_MAX_CHARS, ID_PATTERN
from conveyor_core.enqueue import enqueue
from conveyor_core.groups import GroupState, read_group
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.logging import bound
from conveyor_core.metrics import BLOB_BYTES_WRITTEN
from conveyor_core.store import JobStore
from conveyor_core.stored_bytes import ByteQuotaError
from conveyor_seed import PROCESS_DOCUMENT, DocumentRef
from conveyor_seed.documents import (
    CHUNK_BYTES,
    DocumentError,
    DocumentPublic,
    DocumentStore,
    retention_for,
    sniff,
    upload_blob_key,
)
from conveyor_seed.settings import DocumentSettings, MailPolicySettings, domain_of

router = APIRouter(prefix="/v1/documents", tags=["documents"])

DocumentId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
# Longest file name kept; the name is shown back and used in the mail's subject.
MAX_NAME_CHARS = 255
# What GET shows of the text unless asked for more (or less).
DEFAULT_TEXT_CHARS = 10_000


def get_documents(request: Request, redis: RedisDep) -> DocumentStore:
    """One store per app, on the api's Redis client and the configured blob store."""
    documents: DocumentStore | None = getattr(request.app.state, "seed_documents", None)
    if documents is None:
        blobs = BlobStore.open(BlobSettings())
        documents = request.app.state.seed_documents = DocumentStore(redis, blobs)
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
        429: {"description": "Over the key's rate, or its quota of outstanding jobs or bytes"},
        503: {"description": "Redis is unavailable or may evict; retry after Retry-After"},
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
    _check_address(notify_email, mail_policy)
    if file.size is not None and file.size > limits.max_bytes:
        raise HTTPException(413, f"The file is over the limit of {limits.max_bytes} bytes.")
    name = _clean_name(file.filename)
    try:
        # Reading the file and opening a PDF is blocking work: off the event loop.
        content_type = await run_in_threadpool(sniff, name, file.file)
    except DocumentError as exc:
        raise HTTPException(exc.status, str(exc)) from None

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk

    return await _accept(
        Upload(name, content_type, chunks(), file.size or 0, notify_email, retention_s),
        documents,
        store,
        limits,
        uploader,
        api_settings,
        response,
    )


@dataclass(frozen=True, slots=True)
class Upload:
    """A checked file to store as a document: its name, type, bytes (streamed),
    size as far as known, and what the uploader asked for."""

    name: str
    content_type: str
    chunks: AsyncIterator[bytes]
    size_bytes: int
    notify_email: str | None
    retention_s: int | None


async def _accept(
    upload: Upload,
    documents: DocumentStore,
    store: JobStore,
    limits: DocumentSettings,
    uploader: ApiKey,
    api_settings: ApiSettings,
    response: Response,
) -> "DocumentAccepted":
    """Store a checked upload and enqueue its processing: the one way both
    upload routes make a document (admitted, within the key's byte quota)."""
    await store.admit()  # refused (Redis may evict): before the document is written
    await _may_store(store, uploader, upload.size_bytes)
    retention_s = retention_for(upload.retention_s, limits.retention_s)
    document_id = uuid4().hex
    try:
        document = await documents.create(
            document_id,
            name=upload.name,
            content_type=upload.content_type,
            content=upload.chunks,
            notify_email=str(upload.notify_email or ""),
            retention_s=retention_s,
            max_bytes=limits.max_bytes,
            uploaded_by=uploader.name,
        )
    except BlobTooLargeError:
        raise HTTPException(
            413, f"The file is over the limit of {limits.max_bytes} bytes."
        ) from None
    accepted = await _process(document_id, documents, store, uploader, api_settings, response)
    await _stored(store, uploader, document.size_bytes, retention_s)
    return accepted


async def _may_store(store: JobStore, uploader: ApiKey, size_bytes: int) -> None:
    """Refuse an upload the key's quota of stored bytes has no room for."""
    quota = tenants.byte_quota_of(uploader)
    if quota is None:
        return
    try:
        await stored_bytes.check(store.redis, quota, size_bytes)
    except ByteQuotaError as exc:
        raise tenants.over_byte_quota(uploader, exc) from None


async def _stored(store: JobStore, uploader: ApiKey, size_bytes: int, retention_s: int) -> None:
    """Count a stored document's bytes (and against its key's quota, if it has one)."""
    BLOB_BYTES_WRITTEN.labels("document").inc(size_bytes)
    if uploader.max_stored_bytes is not None:
        until_s = time.time() + retention_s
        await stored_bytes.count(store.redis, uploader.name, size_bytes, until_s)


def _check_address(notify_email: str | None, mail_policy: MailPolicySettings) -> None:
    """A summary may be mailed only to an allowed domain: 422 naming the field."""
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


async def _process(
    document_id: str,
    documents: DocumentStore,
    store: JobStore,
    uploader: ApiKey,
    api_settings: ApiSettings,
    response: Response,
) -> "DocumentAccepted":
    """Enqueue a stored document's processing; the answer to an upload."""
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
    if not document.processed and not job_dead and (group_id := document.get("group_id")):
        job_dead = await _chunks_failed(store, group_id)
    limit = min(text_chars, settings.text_max_chars)
    text = await documents.text(document, limit)
    return document.public(text=text, text_chars=limit, job_dead=job_dead)


async def _chunks_failed(store: JobStore, group_id: str) -> bool:
    """Whether a long document's group of chunks gave up: failed or cancelled
    (no continuation will run), or its continuation died."""
    group = await read_group(store, group_id)
    if group is None or group.state in (GroupState.FAILED, GroupState.CANCELLED):
        return group is not None
    if group.state is GroupState.DONE and group.continuations:
        then = await store.get(group.continuations[0].id)
        return then is not None and then.state is JobState.DEAD
    return False


@router.get(
    "/{document_id}/content",
    summary="Download a document's file",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The file, streamed and checked (a store that cannot presign)"},
        307: {"description": "A presigned URL of the blob store to GET the file from"},
        404: {"description": "None"},
    },
)
async def download_document(
    document_id: DocumentId, documents: DocumentsDep, reader: ReaderDep
) -> Response:
    document = await documents.get(document_id)
    if document is None or not tenants.reads_owned_by(reader, document.get("uploaded_by")):
        raise HTTPException(404, f"No document with id {document_id!r} (it may have expired).")
    url = await documents.blobs.presign("GET", document.content.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    disposition = f"attachment; filename*=UTF-8''{quote(document.name)}"
    return StreamingResponse(
        documents.blobs.stream(document.content),
        media_type=document.content_type,
        headers={"Content-Disposition": disposition, "Content-Length": str(document.size_bytes)},
    )


class DirectUpload(BaseModel):
    """Answer of `POST /v1/documents/uploads`: where to PUT the file, then register it."""

    upload_id: str
    url: str = Field(description="PUT the file's bytes here, before `expires_at`.")
    method: str = "PUT"
    expires_at: datetime
    max_bytes: int
    register_url: str = Field(description="Then POST the document's details here.")


class DirectUploadRegistration(BaseModel):
    """Body of `POST /v1/documents/uploads/{upload_id}`: what the uploaded file is."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    notify_email: EmailStr | None = None
    retention_s: int | None = Field(default=None, ge=1)


@router.post(
    "/uploads",
    status_code=201,
    summary="Start a direct upload to the blob store",
    responses={409: {"description": "This blob store cannot presign: upload through the api"}},
)
async def start_direct_upload(
    documents: DocumentsDep, limits: DocumentSettingsDep, uploader: UploaderDep
) -> DirectUpload:
    upload_id = uuid4().hex
    url = await documents.blobs.presign("PUT", upload_blob_key(upload_id))
    if url is None:
        raise HTTPException(
            409, "This blob store cannot presign URLs: upload with POST /v1/documents instead."
        )
    expires = datetime.now(UTC) + timedelta(seconds=documents.blobs.presign_expiry_s)
    return DirectUpload(
        upload_id=upload_id,
        url=url,
        expires_at=expires,
        max_bytes=limits.max_bytes,
        register_url=f"/v1/documents/uploads/{upload_id}",
    )


@router.post(
    "/uploads/{upload_id}",
    status_code=202,
    summary="Register a file uploaded straight to the blob store, and process it",
    responses={
        404: {"description": "Nothing was uploaded under this id (or it was registered)"},
        413: {"description": "The file is over CONVEYOR_DOCUMENTS_MAX_BYTES"},
        415: {"description": "Not text, Markdown or PDF (judged by content)"},
        422: {"description": "Empty file, corrupt PDF, or a bad field"},
        429: {"description": "Over the key's rate, or its quota of outstanding jobs or bytes"},
    },
)
async def register_direct_upload(
    upload_id: DocumentId,
    registration: DirectUploadRegistration,
    response: Response,
    store: StoreDep,
    documents: DocumentsDep,
    limits: DocumentSettingsDep,
    mail_policy: MailPolicyDep,
    uploader: UploaderDep,
    api_settings: SettingsDep,
) -> "DocumentAccepted":
    _check_address(registration.notify_email, mail_policy)
    name = _clean_name(registration.name)
    key = upload_blob_key(upload_id)
    try:
        with tempfile.SpooledTemporaryFile(max_size=CHUNK_BYTES) as spooled:
            size = 0
            async for chunk in documents.blobs.read_unchecked(key):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise HTTPException(
                        413, f"The file is over the limit of {limits.max_bytes} bytes."
                    )
                spooled.write(chunk)
            spooled.seek(0)
            content_type = await run_in_threadpool(sniff, name, cast(BinaryIO, spooled))
            spooled.seek(0)

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await run_in_threadpool(spooled.read, CHUNK_BYTES):
                    yield chunk

            upload = Upload(
                name,
                content_type,
                chunks(),
                size,
                registration.notify_email,
                registration.retention_s,
            )
            return await _accept(upload, documents, store, limits, uploader, api_settings, response)
    except BlobNotFoundError:
        raise HTTPException(404, f"Nothing was uploaded as {upload_id!r}.") from None
    except DocumentError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    finally:
        await documents.blobs.delete(key)
