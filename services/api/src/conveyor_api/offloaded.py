"""Offloaded payloads and results (claim-check) as clients see them.

`GET /v1/jobs/{id}` shows a job's payload and result as they were submitted
and returned, read back from the blob store (and checked), up to
`inline_blob_bytes`; a larger one is shown as its reference with an `href`:
`GET /v1/jobs/{id}/payload` (or `/result`) streams it, or redirects to a
presigned URL where the store can presign. Listings show references only.
"""

from typing import Any, Literal

import orjson

from conveyor_core.blobs import (
    BLOB_STORE_ERRORS,
    BlobIntegrityError,
    BlobNotFoundError,
    BlobRef,
    BlobStore,
)
from conveyor_core.claimcheck import BLOB_FIELD, reference_of
from conveyor_core.jobs import JobPublic

Part = Literal["payload", "result"]
# Why a blob cannot be shown: gone, changed, not JSON, or the store out of reach.
UNREADABLE: tuple[type[Exception], ...] = (
    BlobNotFoundError,
    BlobIntegrityError,
    orjson.JSONDecodeError,
    *BLOB_STORE_ERRORS,
)


def link(job_id: str, part: Part, ref: BlobRef) -> dict[str, Any]:
    """A reference as a client reads it: where to fetch the bytes."""
    return {BLOB_FIELD: {**ref.as_dict(), "href": f"/v1/jobs/{job_id}/{part}"}}


async def _shown(
    blobs: BlobStore | None, job_id: str, part: Part, value: Any, inline_max_bytes: int
) -> Any:
    ref = reference_of(value, job_id)
    if ref is None:  # inline (or not a reference to this job's own blob)
        return value
    if blobs is None or ref.size > inline_max_bytes:
        return link(job_id, part, ref)
    try:
        return orjson.loads(await blobs.get(ref))
    except UNREADABLE:
        # Gone, changed or out of reach: the reference tells what was there,
        # and fetching it says why; the job itself stays readable.
        return link(job_id, part, ref)


async def shown(job: JobPublic, blobs: BlobStore | None, inline_max_bytes: int) -> JobPublic:
    """The job with its offloaded payload and result read back (or linked)."""
    if reference_of(job.payload) is None and reference_of(job.result) is None:
        return job
    payload = await _shown(blobs, job.id, "payload", job.payload, inline_max_bytes)
    result = await _shown(blobs, job.id, "result", job.result, inline_max_bytes)
    return job.model_copy(update={"payload": payload, "result": result})
