"""`/v1/jobs`: submit, read, list, cancel, requeue and watch jobs."""

import asyncio
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.sse import format_sse_event
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Send
from starlette.types import Scope as AsgiScope

from conveyor_api import audit, offloaded, tenants
from conveyor_api.auth import (
    ApiKey,
    Caller,
    Scope,
    authorize,
    bearer_key,
    name_the_caller,
    require,
)
from conveyor_api.cursors import TamperedCursorError
from conveyor_api.deps import CatalogDep, CursorsDep, EventsDep, RedactorDep, Services, StoreDep
from conveyor_api.edge import FastRoute
from conveyor_api.events import live_stream, stream_deadline
from conveyor_api.problems import FieldError
from conveyor_core.blobs import BlobIntegrityError, BlobNotFoundError
from conveyor_core.catalog import ID_MAX_CHARS, JOB_ID_PATTERN, JobType
from conveyor_core.claimcheck import reference_of
from conveyor_core.debounce import (
    DEBOUNCE_KEY_MAX_CHARS,
    MAX_DEBOUNCE_WINDOW_S,
    Debounce,
    DebounceError,
    DebounceMode,
)
from conveyor_core.enqueue import ScheduleError, enqueue, ready_at_ms
from conveyor_core.jobs import (
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    TERMINAL_STATES,
    JobPublic,
    JobState,
)
from conveyor_core.logging import bound
from conveyor_core.redaction import Redactor, clean, clean_traceback
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import InvalidCursorError, JobFilter, Submitted
from conveyor_core.stored_bytes import ByteQuotaError

TAGS: list[str | Enum] = ["jobs"]

# Keep-alive comments on idle SSE streams, so proxies do not cut them.
SSE_KEEPALIVE_S = 15.0

JobId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=JOB_ID_PATTERN)]
IDEMPOTENCY_KEY_MAX_CHARS = 255
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_CHARS,
        description="Resubmitting with the same key returns the first job instead of a new one.",
    ),
]

# Which job a debounced submit answers with: the window's job, kept as it was
# or given this submit's payload (absent when the submit created the job).
DEBOUNCE_HEADER = "Conveyor-Debounce"


# The caller of a route that spends its rate in its own round trip to Redis.
SubmitterDep = Annotated[Caller, Depends(authorize(Scope.JOBS_SUBMIT))]
ReaderDep = Annotated[Caller, Depends(authorize(Scope.JOBS_READ))]
# An operator's action: needs jobs:admin, and is written to the audit log by name.
AdminDep = Annotated[ApiKey, Depends(require(Scope.JOBS_ADMIN))]
# A reader's key, its rate spent by the dependency itself (for the routes that
# read more than the read script does): its policy says which jobs it sees.
ReadKeyDep = Annotated[ApiKey, Depends(require(Scope.JOBS_READ))]


class JobList(BaseModel):
    """A page of jobs; pass `next_cursor` as `cursor` for the next one."""

    items: list[JobPublic]
    next_cursor: str | None = Field(description="Absent on the last page.")


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(404, f"No job with id {job_id!r} (it may have expired).")


async def _existing(store: StoreDep, job_id: str, key: ApiKey) -> JobPublic:
    """The job, or a 404 problem (also for another key's job, to an own-jobs key)."""
    job = await store.get(job_id)
    if job is None or not tenants.reads(key, job):
        raise _not_found(job_id)
    return job


def masked(job: JobPublic, redact: Redactor) -> JobPublic:
    """The job as clients see it: secret-looking payload, result and checkpoint fields masked,
    and its error's message and traceback scrubbed and bounded (a refused
    recipient's address, a command's arguments), however the worker stored them."""
    update: dict[str, Any] = {"payload": redact(job.payload), "result": redact(job.result)}
    if job.checkpoint is not None:  # the handler's data too (the next try reads it unmasked)
        update["checkpoint"] = job.checkpoint.model_copy(
            update={"cursor": redact(job.checkpoint.cursor)}
        )
    if job.error is not None:
        update["error"] = job.error.model_copy(
            update={
                "message": clean(job.error.message),
                "traceback": clean_traceback(job.error.traceback),
            }
        )
    return job.model_copy(update=update)


async def job_response(
    job: JobPublic,
    services: Services,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The job as clients see it (an offloaded payload or result read back, see
    offloaded.py), serialized once (by pydantic, to JSON bytes): FastAPI would
    validate the returned model again, then encode it twice."""
    job = await offloaded.shown(job, services.store.blobs, services.settings.inline_blob_bytes)
    return Response(
        masked(job, services.redact).model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _query_error(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("query", field), "msg": message, "type": "value_error"}]
    )


async def submitted_job(
    caller: Caller,
    job_type: JobType,
    payload: BaseModel,
    *,
    defer_by_s: float | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
    debounce: Debounce | None = None,
) -> Response:
    """A submit's answer, once the request is valid (its route's, or its fast route's).

    One round trip to Redis: the submit script spends the caller's rate, keeps
    its quota and answers with the record as created (no read back).
    """
    store, settings = caller.services.store, caller.services.settings
    priority = tenants.submit_priority(caller.key, job_type, priority)
    try:  # the schedule's range, before anything is written
        ready_at_ms(defer_by_s, run_at, max_defer_s=settings.max_defer_s)
    except ScheduleError as exc:
        raise _query_error(exc.field, exc.message) from None
    size_bytes = len(payload.model_dump_json())
    # A type that offloads keeps large payloads in the blob store, not in Redis.
    offloads = job_type.offload_above_bytes is not None and store.blobs is not None
    max_bytes = settings.max_upload_bytes if offloads else settings.max_payload_bytes
    if size_bytes > max_bytes:
        raise HTTPException(
            413,
            f"The {job_type.name} payload is {size_bytes} bytes as JSON, over the limit of "
            f"{max_bytes}; pass large data as a document instead.",
        )
    try:
        submitted = await _enqueued(
            caller, job_type, payload, defer_by_s, run_at, idempotency_key, priority, debounce
        )
    except ByteQuotaError as exc:
        raise tenants.over_byte_quota(caller.key, exc) from None
    except DebounceError as exc:  # a debounce this job type does not offer
        raise _query_error(exc.field, exc.message) from None
    if submitted.retry_after_s is not None:
        raise caller.over_rate(submitted.retry_after_s)
    if submitted.over_quota:
        raise tenants.over_quota(caller.key, settings.retry_after_s)
    if not submitted.same_payload:
        raise HTTPException(
            409,
            f"Idempotency-Key {idempotency_key!r} was used with a different payload "
            f"(job {submitted.job_id}).",
        )
    job = submitted.job
    if job is None:  # found under the Idempotency-Key: read what it is now
        job = await store.get(submitted.job_id)
    if job is None:  # its retention ran out since the key was used
        raise _not_found(submitted.job_id)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if submitted.debounced:
        headers[DEBOUNCE_HEADER] = "replaced" if submitted.replaced else "kept"
    status = 201 if submitted.created else 200
    return await job_response(job, caller.services, status, headers)


def debounce_of(
    key: str | None, window_s: float | None, mode: DebounceMode, delay: bool
) -> Debounce | None:
    """A submit's debounce from its query, or a 422 naming the field at fault."""
    if key is None:
        if window_s is not None or delay:
            raise _query_error("debounce_key", "give a debounce_key with a debounce window")
        return None
    if window_s is None:
        raise _query_error("debounce_window_s", "a debounce_key needs its window")
    try:
        return Debounce(key, window_s, mode, delay)
    except DebounceError as exc:
        raise _query_error(exc.field, exc.message) from None


async def _enqueued(
    caller: Caller,
    job_type: JobType,
    payload: BaseModel,
    defer_by_s: float | None,
    run_at: datetime | None,
    idempotency_key: str | None,
    priority: int | None,
    debounce: Debounce | None,
) -> Submitted:
    store, settings = caller.services.store, caller.services.settings
    return await enqueue(
        store,
        job_type,
        payload,
        defer_by_s=defer_by_s,
        run_at=run_at,
        idempotency_key=idempotency_key,
        request_id=bound("request_id"),
        max_defer_s=settings.max_defer_s,
        rate_limit=caller.rate_limit(),  # spent by the submit script, in its step
        priority=priority,
        submitted_by=caller.key.name,
        quota=tenants.quota_of(caller.key),
        byte_quota=tenants.byte_quota_of(caller.key),
        debounce=debounce,
    )


def submit_endpoint(
    job_type: JobType,
) -> Callable[..., Coroutine[Any, Any, Response]]:
    """`POST /v1/jobs/{job_type.name}`, its body typed by the job type's payload
    model (valid requests usually take its fast route, `FastJobRoutes`)."""
    payload_model = job_type.payload

    async def submit(
        payload: payload_model,  # type: ignore[valid-type]
        caller: SubmitterDep,
        defer_by_s: Annotated[
            float | None,
            Query(ge=0, description="Run this many seconds from now (at most a year by default)."),
        ] = None,
        run_at: Annotated[
            AwareDatetime | None, Query(description="Run at this time (ISO 8601, with offset).")
        ] = None,
        idempotency_key: IdempotencyKey = None,
        priority: Annotated[
            int | None,
            Query(
                ge=HIGHEST_PRIORITY,
                le=LOWEST_PRIORITY,
                description=f"0 (highest) to 9 (lowest); the job type's is {job_type.priority}.",
            ),
        ] = None,
        debounce_key: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=DEBOUNCE_KEY_MAX_CHARS,
                description="Collapse submits of this type with this key within a window "
                "into one job (see debounce_mode); answered with `Conveyor-Debounce: kept` "
                "or `replaced` when an earlier job was.",
            ),
        ] = None,
        debounce_window_s: Annotated[
            float | None,
            Query(gt=0, le=MAX_DEBOUNCE_WINDOW_S, description="The debounce window, seconds."),
        ] = None,
        debounce_mode: Annotated[
            DebounceMode,
            Query(
                description="keep-first: the window's first job answers every submit in it. "
                "replace: the waiting job takes the latest payload, and the window starts again."
            ),
        ] = "keep-first",
        debounce_delay: Annotated[
            bool,
            Query(
                description="replace only: the job starts a window after the burst's last submit."
            ),
        ] = False,
    ) -> Response:
        return await submitted_job(
            caller,
            job_type,
            payload,
            defer_by_s=defer_by_s,
            run_at=run_at,
            idempotency_key=idempotency_key,
            priority=priority,
            debounce=debounce_of(debounce_key, debounce_window_s, debounce_mode, debounce_delay),
        )

    submit.__name__ = f"submit_{job_type.name}"
    return submit


def add_routes(api: APIRouter, job_types: list[JobType]) -> None:
    """`/v1/jobs` for this catalog, added to `api` itself: the routes on single
    jobs, a submit route per type (so OpenAPI shows each payload), then a 404
    for unknown types.

    Added to the app's own router, not included as a router of their own: an
    included router is matched once to be chosen and again to pick its route,
    on every request. The routes on single jobs come first, so that a read
    does not try every job type's path; none of them takes a POST at
    `/v1/jobs/{name}`, so each submit still reaches its own route."""
    _add_single_job_routes(api)
    for job_type in job_types:
        api.add_api_route(
            f"/v1/jobs/{job_type.name}",
            submit_endpoint(job_type),
            methods=["POST"],
            status_code=201,
            response_model=JobPublic,
            tags=TAGS,
            summary=f"Submit a {job_type.name} job",
            description=job_type.description,
            responses={
                200: {"description": "Same Idempotency-Key and payload: the existing job"},
                404: {
                    "description": "The job under this Idempotency-Key is gone (expired or deleted)"
                },
                403: {"description": "The key may not submit this type, or at this priority"},
                409: {"description": "Same Idempotency-Key, different payload"},
                413: {"description": "The payload is over the size limit"},
                429: {"description": "Over the key's rate, or its quota of outstanding jobs"},
                503: {"description": "Redis is unavailable or may evict; retry after Retry-After"},
            },
        )

    @api.post(
        "/v1/jobs/{job_type}",
        summary="Any other job type: 404",
        responses={404: {"description": "Not in the catalog"}},
        status_code=404,
        include_in_schema=False,
        tags=TAGS,
        dependencies=[Depends(require(Scope.JOBS_SUBMIT))],
    )
    async def unknown_job_type(job_type: str, catalog: CatalogDep) -> None:
        if job_type in catalog:  # internal: only jobs, schedules and module routes enqueue it
            raise HTTPException(
                404, f"Job type {job_type!r} is internal: clients cannot submit it."
            )
        known = ", ".join(t.name for t in catalog.public())
        raise HTTPException(404, f"Unknown job type {job_type!r}; known types: {known}.")


async def list_jobs(
    store: StoreDep,
    redact: RedactorDep,
    catalog: CatalogDep,
    reader: ReadKeyDep,
    cursors: CursorsDep,
    state: JobState | None = None,
    queue: Annotated[str | None, Query(max_length=200, description="A catalog queue.")] = None,
    job_type: Annotated[str | None, Query(max_length=200)] = None,
    error_type: Annotated[
        str | None, Query(max_length=200, description="The last error's type, exactly.")
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Part of the job id or of the last error's message."),
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Finished (else started, else enqueued) at or after this time."),
    ] = None,
    until: Annotated[AwareDatetime | None, Query(description="... and before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="A previous page's `next_cursor`.")
    ] = None,
) -> JobList:
    """Newest first; queued, deferred and in-progress jobs oldest first (next to run first).

    The cost is bounded: a page reads at most a few times `limit` index
    entries, so a filter on a rare `job_type` may give a short page with a
    `next_cursor` to go on.
    """
    if job_type is not None and job_type not in catalog:
        raise _query_error("job_type", f"unknown job type {job_type!r}")
    if queue is not None and queue not in catalog.queues():
        raise _query_error("queue", f"no queue named {queue!r} in the catalog")
    try:
        store_cursor = cursors.verify(cursor)
    except TamperedCursorError:
        raise FieldError(400, "cursor", "not a cursor from a previous page") from None
    where = JobFilter(
        state=state,
        queue=queue,
        job_type=job_type,
        error_type=error_type,
        text=q or None,
        since_ms=int(since.timestamp() * 1000) if since else None,
        until_ms=int(until.timestamp() * 1000) if until else None,
        submitted_by=tenants.owner(reader),
    )
    try:
        page = await store.list(where=where, limit=limit, cursor=store_cursor)
    except InvalidCursorError:  # signed, yet not readable: issued by an older version
        raise FieldError(400, "cursor", "not a cursor from a previous page") from None
    items = [masked(job, redact) for job in page.items]
    return JobList(items=items, next_cursor=cursors.sign(page.next_cursor))


async def read_job(job_id: JobId, caller: ReaderDep) -> Response:
    """One round trip to Redis: the read script spends the rate limit and reads."""
    return await job_read(caller, job_id)


async def job_read(caller: Caller, job_id: str) -> Response:
    """A read's answer, once the request is valid (its route's, or its fast route's)."""
    read = await caller.services.store.read(job_id, caller.rate_limit())
    if read.retry_after_s is not None:
        raise caller.over_rate(read.retry_after_s)
    if read.found is None or not tenants.reads(caller.key, read.found[1]):
        raise _not_found(job_id)
    return await job_response(read.found[1], caller.services)


async def read_job_payload(job_id: JobId, caller: ReaderDep) -> Response:
    return await _offloaded_part(caller, job_id, "payload")


async def read_job_result(job_id: JobId, caller: ReaderDep) -> Response:
    return await _offloaded_part(caller, job_id, "result")


async def _offloaded_part(caller: Caller, job_id: str, part: offloaded.Part) -> Response:
    """An offloaded payload or result as JSON: a redirect to a presigned URL
    where the store can presign, else streamed from the store (and checked)."""
    read = await caller.services.store.read(job_id, caller.rate_limit())
    if read.retry_after_s is not None:
        raise caller.over_rate(read.retry_after_s)
    if read.found is None or not tenants.reads(caller.key, read.found[1]):
        raise _not_found(job_id)
    job, blobs = read.found[1], caller.services.store.blobs
    ref = reference_of(job.payload if part == "payload" else job.result, job_id)
    if ref is None or blobs is None:
        raise HTTPException(404, f"Job {job_id!r} has no offloaded {part}: read the job itself.")
    if (url := await blobs.presign("GET", ref.key)) is not None:
        return RedirectResponse(url, status_code=307)
    stream = blobs.stream(ref)
    try:  # the first chunk, so a missing blob is a 404 rather than a cut stream
        first = await anext(stream)
    except BlobNotFoundError:
        raise HTTPException(404, f"Job {job_id!r}'s {part} is gone from the blob store.") from None
    except BlobIntegrityError:
        raise HTTPException(
            409, f"Job {job_id!r}'s {part} in the blob store is not what the job refers to."
        ) from None
    except StopAsyncIteration:
        first = b""

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        async for chunk in stream:
            yield chunk

    return StreamingResponse(
        chunks(), media_type="application/json", headers={"Content-Length": str(ref.size)}
    )


async def cancel_job(
    job_id: JobId, store: StoreDep, redact: RedactorDep, response: Response, caller: AdminDep
) -> JobPublic:
    if tenants.owner(caller):
        await _existing(store, job_id, caller)
    outcome, job = await store.cancel(job_id)
    if job is None:
        raise _not_found(job_id)
    if outcome not in ("cancelled_now", "cancelling", "cancel_requested"):
        raise HTTPException(409, f"Job {job_id} is already {outcome}.")
    if outcome != "cancel_requested":  # asked before: no change to record
        await audit.record(store.redis, caller.name, "cancel", job_id, 1)
    response.status_code = 200 if outcome == "cancelled_now" else 202
    return masked(job, redact)


async def retry_job(
    job_id: JobId,
    store: StoreDep,
    redact: RedactorDep,
    caller: AdminDep,
    start_over: Annotated[
        bool,
        Query(
            description="Drop the job's checkpoint, so its next try starts from the "
            "beginning; by default it resumes from its last checkpoint."
        ),
    ] = False,
) -> JobPublic:
    if tenants.owner(caller):
        await _existing(store, job_id, caller)
    meta = {"request_id": bound("request_id")} if bound("request_id") else {}
    outcome, job = await store.requeue(job_id, meta, start_over=start_over)
    if job is None:
        raise _not_found(job_id)
    if outcome == "unknown_type":
        raise HTTPException(409, f"Job type {job.job_type!r} is no longer in the catalog.")
    if outcome != "requeued":
        raise HTTPException(409, f"Only dead jobs can be requeued; job {job_id} is {outcome}.")
    await audit.record(store.redis, caller.name, "requeue", job_id, 1)
    return masked(job, redact)


async def job_events(
    job_id: JobId,
    request: Request,
    store: StoreDep,
    events: EventsDep,
    redact: RedactorDep,
    reader: ReadKeyDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=20,
            description="The last event's id, when reconnecting: its version is not sent again.",
        ),
    ] = None,
) -> StreamingResponse:
    await _existing(store, job_id, reader)
    sent_version = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    body = _stream(job_id, store, events, redact, sent_version, stream_deadline(request))
    return live_stream(request, body)


async def _stream(
    job_id: str,
    store: StoreDep,
    events: EventsDep,
    redact: Redactor,
    sent_version: int,
    deadline: float,
) -> AsyncIterator[bytes]:
    with events.watch(job_id) as changed:
        while True:
            changed.clear()  # before the read: a change after it wakes the wait below
            try:
                job = await store.get(job_id)
            except REDIS_DOWN_ERRORS:
                yield _error_event(503, "Redis unavailable", "The job broker stopped answering.")
                return
            if job is None:
                yield _error_event(404, "Not Found", f"Job {job_id} expired.")
                return
            if job.version != sent_version:
                sent_version = job.version
                yield format_sse_event(
                    data_str=masked(job, redact).model_dump_json(),
                    event="job",
                    id=str(job.version),
                )
            if job.state in TERMINAL_STATES:
                return
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return  # its lifetime is over: the client reconnects with Last-Event-ID
            try:
                async with asyncio.timeout(min(SSE_KEEPALIVE_S, left_s)):
                    await changed.wait()
            except TimeoutError:
                yield format_sse_event(comment="keep-alive")


def _error_event(status: int, title: str, detail: str) -> bytes:
    problem = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return format_sse_event(data_str=json.dumps(problem), event="error")


def _add_single_job_routes(api: APIRouter) -> None:
    api.add_api_route(
        "/v1/jobs",
        list_jobs,
        methods=["GET"],
        tags=TAGS,
        summary="List jobs",
        responses={400: {"description": "The cursor is not one a previous page gave"}},
    )

    api.add_api_route(
        "/v1/jobs/{job_id}",
        read_job,
        methods=["GET"],
        tags=TAGS,
        summary="Read a job",
        response_model=JobPublic,
        responses={404: {"description": "No such job"}},
    )

    api.add_api_route(
        "/v1/jobs/{job_id}",
        cancel_job,
        methods=["DELETE"],
        tags=TAGS,
        summary="Cancel a job",
        responses={
            200: {"description": "Cancelled: it will not run"},
            202: {"description": "Running: asked to stop; watch it reach `cancelled`"},
            404: {"description": "No such job"},
            409: {"description": "Already finished"},
        },
    )

    for part, endpoint in (("payload", read_job_payload), ("result", read_job_result)):
        api.add_api_route(
            f"/v1/jobs/{{job_id}}/{part}",
            endpoint,
            methods=["GET"],
            tags=TAGS,
            summary=f"Read a job's offloaded {part} (a large one, kept in the blob store)",
            response_class=StreamingResponse,
            responses={
                200: {"content": {"application/json": {}}, "description": f"The {part}"},
                307: {"description": "Fetch it from the presigned URL in Location"},
                404: {"description": f"No such job, or its {part} is not offloaded"},
            },
        )

    api.add_api_route(
        "/v1/jobs/{job_id}/retry",
        retry_job,
        methods=["POST"],
        tags=TAGS,
        status_code=202,
        summary="Requeue a dead job: a new try with the same payload, resuming from its "
        "last checkpoint unless `start_over`",
        responses={
            404: {"description": "No such job"},
            409: {"description": "The job is not dead"},
        },
    )

    api.add_api_route(
        "/v1/jobs/{job_id}/events",
        job_events,
        methods=["GET"],
        tags=TAGS,
        summary="Stream a job's changes (Server-Sent Events) until it finishes",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "`event: job` with the job as JSON on every change (its "
                "`id` is the job's version; changes that come faster than the stream "
                "sends them arrive as one, the latest); `event: error` with a problem if "
                "the stream cannot go on. The server ends a stream after its maximum lifetime: "
                "reconnect with `Last-Event-ID` to go on.",
            },
            404: {"description": "No such job"},
            429: {
                "description": "The api key is over its rate, or it (or this api process) "
                "holds its most live streams; retry after Retry-After"
            },
        },
    )


# The job id in a path, as `JobId` declares it: a fast route checks it itself.
FAST_JOB_ID = re.compile(JOB_ID_PATTERN)
JOBS_PREFIX = "/v1/jobs/"
IDEMPOTENCY_KEY_HEADER = b"idempotency-key"


async def _no_request() -> Message:
    raise RuntimeError("a fast route's answer reads no request")


class FastJobRoutes:
    """The two busiest routes, `POST /v1/jobs/{type}` and `GET /v1/jobs/{id}`,
    answered from the api's middleware (edge.Edge) without FastAPI's request
    handling: its exception layers, routing, dependency solving and parameter
    parsing took about a third of these routes' CPU under load (py-spy).

    Only for the requests that need none of it: a valid key with the route's
    scope, a valid job id (read); no query and an `application/json` body the
    payload model accepts (submit). Anything else (a 401, 403 or 422 to
    answer, a schedule or priority in the query) is left to the FastAPI route,
    which stays the one documented in OpenAPI and answers as it always did.
    Both call the same `submitted_job` and `job_read`, and the errors these
    raise are answered by the app's own exception handlers.
    """

    def __init__(self, app: FastAPI, job_types: Iterable[JobType]) -> None:
        self.state = app.state
        self.exception_handlers = app.exception_handlers
        routes = {
            (route.path, method): route
            for route in app.routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }
        self.submits = {
            f"{JOBS_PREFIX}{t.name}": (t, routes[(f"{JOBS_PREFIX}{t.name}", "POST")])
            for t in job_types
        }
        self.read_route = routes[(JOBS_PREFIX + "{job_id}", "GET")]

    def __call__(self, method: str, path: str) -> FastRoute | None:
        """The fast route for this method and path, if any (edge.FastRoutes)."""
        if method == "POST":
            return self.submit if path in self.submits else None
        if method == "GET" and path.startswith(JOBS_PREFIX):
            return None if "/" in path[len(JOBS_PREFIX) :] else self.read
        return None

    async def submit(
        self,
        scope: AsgiScope,
        headers: dict[bytes, bytes],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> bool:
        job_type, route = self.submits[scope["path"]]
        content_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if scope["query_string"] or content_type != b"application/json":
            return False
        key = bearer_key(self.state.keyring, headers.get(b"authorization"))
        if key is None or Scope.JOBS_SUBMIT not in key.scopes:
            return False
        idempotency_key = None
        if (header := headers.get(IDEMPOTENCY_KEY_HEADER)) is not None:
            idempotency_key = header.decode("latin-1")
            if not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX_CHARS:
                return False
        try:  # as FastAPI does: Python's parser, then the model in Python mode
            payload = job_type.payload.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # the route's 422 names the fields
            return False
        scope["route"] = route
        name_the_caller(key)
        caller = Caller(key, self.state.services)
        answer = submitted_job(caller, job_type, payload, idempotency_key=idempotency_key)
        await self._answer(scope, answer, send)
        return True

    async def read(
        self,
        scope: AsgiScope,
        headers: dict[bytes, bytes],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> bool:
        job_id = scope["path"][len(JOBS_PREFIX) :]
        if len(job_id) > ID_MAX_CHARS or not FAST_JOB_ID.fullmatch(job_id):
            return False
        key = bearer_key(self.state.keyring, headers.get(b"authorization"))
        if key is None or Scope.JOBS_READ not in key.scopes:
            return False
        scope["route"] = self.read_route
        name_the_caller(key)
        await self._answer(scope, job_read(Caller(key, self.state.services), job_id), send)
        return True

    async def _answer(self, scope: AsgiScope, answer: Awaitable[Response], send: Send) -> None:
        """The route's answer, or what the app's exception handlers answer to its
        error (a bug, which none handles, goes on to the app's last resort)."""
        try:
            response = await answer
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = handler(Request(scope), exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, _no_request, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        """The handler Starlette's ExceptionMiddleware would pick for `exc` (those
        for 500 and Exception are the app's last resort's, as in FastAPI)."""
        handlers = self.exception_handlers
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
        if status != 500 and status in handlers:
            return handlers[status]
        for cls in type(exc).__mro__:
            if cls is not Exception and cls in handlers:
                return handlers[cls]
        return None
