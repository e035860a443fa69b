"""Claim-check: a large payload or result goes to the blob store, the job keeps a reference.

A job type with `offload_above_bytes` set has its payload (at submit) and its
result (at the end of its try) written as a blob when their JSON is larger:
`jobs/{job id}/payload` and `jobs/{job id}/result.{try token}` (a stale
try's late result never overwrites the one the record refers to). arq's job key and the
record then hold only `{"__conveyor_blob__": {store, key, size, sha256}}`,
which the worker resolves (and checks) before validating the payload, and the
api shows transparently. Jobs of other types, or under the threshold, are
stored exactly as before: no extra Redis command, no blob.

A job's blobs live as long as its record: once the record is gone (its
retention ran out, a bulk delete), `sweep` deletes them after a grace.
"""

import logging
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix

from conveyor_core import keys
from conveyor_core.blobs import (
    BlobIntegrityError,
    BlobNotFoundError,
    BlobRef,
    BlobSettings,
    BlobStore,
)
from conveyor_core.catalog import JobType, PermanentJobError
from conveyor_core.metrics import BLOB_BYTES_WRITTEN, BLOB_OFFLOADS

logger = logging.getLogger(__name__)

# The one field of an offloaded payload or result: its blob's reference.
BLOB_FIELD = "__conveyor_blob__"
# Every job's blobs are under this prefix, then the job's id.
JOBS_PREFIX = "jobs/"
# A blob with no record this long after it was written is swept: longer than
# a submit takes between writing its payload blob and its job.
SWEEP_GRACE_S = 3600.0
# Where the next sweep resumes (a blob key); lost or expired, it starts over.
SWEEP_CURSOR_KEY = keys.PREFIX + "blob-sweep-cursor:jobs"
SWEEP_CURSOR_TTL_S = 7 * 86_400


class OffloadedBlobError(PermanentJobError):
    """A job's offloaded payload is missing or not what its reference says:
    no retry can bring it back, so the job goes dead at once."""


class NoBlobStoreError(RuntimeError):
    """This process has no blob store to read an offloaded payload from: a
    setting to fix (CONVEYOR_BLOBS_*), so the job is retried, not dead."""


def open_blob_store(settings: BlobSettings) -> BlobStore | None:
    """The service's blob store, or None (logged) when its folder cannot be
    made: the service still starts, and job types that offload keep their
    payloads inline (the api) or retry them (the worker) until it is fixed."""
    try:
        return BlobStore.from_settings(settings)
    except OSError as exc:
        logger.warning(
            "no blob store (CONVEYOR_BLOBS_URL %s): %s; job types that offload "
            "keep their payloads inline until it is set",
            settings.url,
            exc,
        )
        return None


def payload_blob_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/payload"


def result_blob_key(job_id: str, token: str = "") -> str:
    """A try's result: one key per try (its fencing token), so a stale try's
    result cannot overwrite the blob the record refers to."""
    suffix = "." + token.replace(":", "-") if token else ""
    return f"{JOBS_PREFIX}{job_id}/result{suffix}"


def job_blobs_prefix(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/"


def job_id_of(blob_key: str) -> str:
    return blob_key.removeprefix(JOBS_PREFIX).partition("/")[0]


def as_reference(ref: BlobRef) -> dict[str, Any]:
    """What the job keeps in place of the offloaded value."""
    return {BLOB_FIELD: ref.as_dict()}


def reference_of(value: Any, job_id: str | None = None) -> BlobRef | None:
    """The blob an offloaded payload or result refers to; None for an inline
    value. With `job_id`, only a reference to that job's own blobs counts: a
    job written to Redis by hand cannot point the worker at another's bytes."""
    if not isinstance(value, dict) or len(value) != 1 or BLOB_FIELD not in value:
        return None
    raw = value[BLOB_FIELD]
    try:
        ref = BlobRef.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        return None
    if job_id is not None and not ref.key.startswith(job_blobs_prefix(job_id)):
        return None
    return ref


def offloads(job_type: JobType, size_bytes: int) -> bool:
    threshold = job_type.offload_above_bytes
    return threshold is not None and size_bytes > threshold


async def offload_payload(
    blobs: BlobStore | None, job_type: JobType, job_id: str, data: dict[str, Any]
) -> tuple[dict[str, Any], BlobRef | None]:
    """The payload as the job keeps it: `data` itself, or a reference to the
    blob now holding it (when its type offloads and it is over the threshold)."""
    if blobs is None or job_type.offload_above_bytes is None:
        return data, None
    raw = orjson.dumps(data)
    if not offloads(job_type, len(raw)):
        return data, None
    ref = await blobs.put(payload_blob_key(job_id), raw)
    BLOB_BYTES_WRITTEN.labels("payload").inc(ref.size)
    BLOB_OFFLOADS.labels("payload").inc()
    return as_reference(ref), ref


async def offload_result(
    blobs: BlobStore | None, job_type: JobType, job_id: str, result_json: str, token: str = ""
) -> str:
    """The result of the try holding `token`, as the record keeps it (JSON):
    itself, or a reference."""
    if blobs is None or not offloads(job_type, len(result_json)):
        return result_json
    ref = await blobs.put(result_blob_key(job_id, token), result_json.encode())
    BLOB_BYTES_WRITTEN.labels("result").inc(ref.size)
    BLOB_OFFLOADS.labels("result").inc()
    return orjson.dumps(as_reference(ref)).decode()


async def resolve_payload(
    blobs: BlobStore | None, payload: dict[str, Any], job_id: str
) -> dict[str, Any]:
    """The payload job `job_id` was submitted with: read back and checked when
    it was offloaded (OffloadedBlobError when it is gone or changed, or the
    reference names a blob not the job's own)."""
    if reference_of(payload) is None:
        return payload
    ref = reference_of(payload, job_id)
    if ref is None:
        raise OffloadedBlobError(
            f"the payload refers to a blob that is not job {job_id}'s own payload"
        )
    if blobs is None:
        raise NoBlobStoreError(
            f"the payload is offloaded to blob {ref.key}, and this worker has no blob store "
            "(CONVEYOR_BLOBS_URL)"
        )
    try:
        data = orjson.loads(await blobs.get(ref))
    except BlobNotFoundError:
        raise OffloadedBlobError(f"the offloaded payload's blob {ref.key} is missing") from None
    except BlobIntegrityError as exc:
        raise OffloadedBlobError(f"the offloaded payload failed its check: {exc}") from None
    except orjson.JSONDecodeError:
        raise OffloadedBlobError(f"the offloaded payload's blob {ref.key} is not JSON") from None
    if not isinstance(data, dict):
        raise OffloadedBlobError(f"the offloaded payload's blob {ref.key} is not a JSON object")
    return data


async def resolve(blobs: BlobStore, value: Any, job_id: str) -> Any:
    """Job `job_id`'s offloaded value read back (checked); an inline one as it is."""
    ref = reference_of(value, job_id)
    if ref is None:
        return value
    return orjson.loads(await blobs.get(ref))


async def _record_exists(redis: ArqRedis, job_id: str) -> bool:
    # Waiting for its first try a job has only arq's job key; finished, arq's
    # result key and the record (the keys of one job share a slot).
    found = await redis.exists(
        job_key_prefix + job_id, keys.job_key(job_id), result_key_prefix + job_id
    )
    return bool(found)


async def delete_if_gone(blobs: BlobStore, redis: ArqRedis, job_ids: list[str]) -> int:
    """Delete the blobs of these jobs whose record is gone (a bulk delete's);
    returns how many jobs' blobs went."""
    gone = [job_id for job_id in job_ids if not await _record_exists(redis, job_id)]
    for job_id in gone:
        await blobs.delete(*[info.key async for info in blobs.list(job_blobs_prefix(job_id))])
    return len(gone)


async def sweep(
    blobs: BlobStore, redis: ArqRedis, older_than_s: float = SWEEP_GRACE_S, budget: int = 1000
) -> int:
    """Delete job blobs whose record is gone (retention ran out, deleted), once
    they are `older_than_s` old; returns how many went. Each call looks at the
    next `budget` blobs after where the last one stopped (kept in Redis), so
    every job's blobs are reached in turn however many there are."""

    async def referenced(blob_key: str) -> bool:
        return await _record_exists(redis, job_id_of(blob_key))

    after = await redis.get(SWEEP_CURSOR_KEY)
    swept = await blobs.sweep(
        JOBS_PREFIX, referenced, older_than_s, budget, after.decode() if after else ""
    )
    await redis.set(SWEEP_CURSOR_KEY, swept.resume_after, ex=SWEEP_CURSOR_TTL_S)
    return swept.deleted
