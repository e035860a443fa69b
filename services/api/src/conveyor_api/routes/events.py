"""`/v1/events`: the changes of many jobs on one Server-Sent Events stream.

A browser opens at most about six HTTP/1.1 connections per origin, so a page
that watches a batch of jobs cannot hold one `/v1/jobs/{id}/events` stream
per job. This stream carries them all, read with one pipelined round trip per
wake-up, whichever of its jobs changed.
"""

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import StringConstraints

from conveyor_api import tenants
from conveyor_api.auth import ApiKey, Scope, require
from conveyor_api.deps import EventsDep, RedactorDep, StoreDep
from conveyor_api.events import JobChanges, live_stream, stream_deadline
from conveyor_api.routes.jobs import SSE_KEEPALIVE_S, masked
from conveyor_core.catalog import ID_MAX_CHARS, JOB_ID_PATTERN
from conveyor_core.jobs import TERMINAL_STATES, JobPublic
from conveyor_core.redaction import Redactor
from conveyor_core.redis import REDIS_DOWN_ERRORS

router = APIRouter(prefix="/v1/events", tags=["jobs"])
ReaderDep = Annotated[ApiKey, Depends(require(Scope.JOBS_READ))]

# Bounds one stream's cost per wake-up and its URL's length (about 4 KB of ids).
MAX_JOBS_PER_STREAM = 100

JobIdText = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=JOB_ID_PATTERN)
]
JobIds = Annotated[
    list[JobIdText],
    Query(
        min_length=1,
        max_length=MAX_JOBS_PER_STREAM,
        description=f"The jobs to watch (repeat the parameter; at most {MAX_JOBS_PER_STREAM}).",
    ),
]

STREAM_DESCRIPTION = """\
`event: job` with a job as JSON whenever it changes (each job's current state
first); `event: missing` with `{"id": ...}` for a job that does not exist or
expired (it is not watched); `event: end` once every job is finished or
missing; `event: error` with a problem if the stream cannot go on. Comments
keep an idle stream open. The server ends a stream after its maximum lifetime
(`CONVEYOR_API_SSE_MAX_LIFETIME_S`) without `end`: reconnect to go on.
"""


@router.get(
    "",
    summary="Stream the changes of many jobs (Server-Sent Events) until they all finish",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": STREAM_DESCRIPTION},
        429: {
            "description": "The api key is over its rate, or it (or this api process) "
            "holds its most live streams; retry after Retry-After"
        },
    },
)
async def watch_jobs(
    job_id: JobIds,
    request: Request,
    store: StoreDep,
    events: EventsDep,
    redact: RedactorDep,
    reader: ReaderDep,
) -> StreamingResponse:
    job_ids = list(dict.fromkeys(job_id))
    # Read up front: Redis being down is a 503 answer rather than a stream, and
    # only the jobs that exist (for this key) and are not finished are watched.
    first = [_visible(job, redact, reader) for job in await store.get_many(job_ids)]
    body = _stream(job_ids, first, store, events, redact, reader, stream_deadline(request))
    return live_stream(request, body)


def _visible(job: JobPublic | None, redact: Redactor, reader: ApiKey) -> JobPublic | None:
    """The job as the caller may see it: another key's job, to an own-jobs key,
    is as missing as a gone one."""
    return masked(job, redact) if job and tenants.reads(reader, job) else None


async def _stream(
    job_ids: list[str],
    first: list[JobPublic | None],
    store: StoreDep,
    events: EventsDep,
    redact: Redactor,
    reader: ApiKey,
    deadline: float,
) -> AsyncIterator[bytes]:
    sent_versions: dict[str, int] = {}
    live = [j for j, job in zip(job_ids, first, strict=True) if job and not _finished(job)]
    with events.watch_many(live) as changes:
        for event in _events_for(job_ids, first, changes, sent_versions):
            yield event
        while changes.watching:
            marked = changes.take()
            if marked:
                try:
                    jobs = await store.get_many(marked)
                except REDIS_DOWN_ERRORS:
                    yield _error_event(
                        503, "Redis unavailable", "The job broker stopped answering."
                    )
                    return
                public = [_visible(job, redact, reader) for job in jobs]
                for event in _events_for(marked, public, changes, sent_versions):
                    yield event
            if not changes.watching:
                break
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return  # its lifetime is over: the client reconnects
            if not await changes.wait(min(SSE_KEEPALIVE_S, left_s)):
                yield format_sse_event(comment="keep-alive")
        yield format_sse_event(data_str="{}", event="end")


def _finished(job: JobPublic) -> bool:
    return job.state in TERMINAL_STATES


def _events_for(
    job_ids: list[str],
    jobs: list[JobPublic | None],
    changes: JobChanges,
    sent_versions: dict[str, int],
) -> list[bytes]:
    """The events for what was just read; forgets the jobs that need no more watching."""
    out = []
    for job_id, job in zip(job_ids, jobs, strict=True):
        if job is None:
            changes.forget(job_id)
            out.append(format_sse_event(data_str=json.dumps({"id": job_id}), event="missing"))
            continue
        if job.version != sent_versions.get(job_id):
            sent_versions[job_id] = job.version
            out.append(format_sse_event(data_str=job.model_dump_json(), event="job"))
        if _finished(job):
            changes.forget(job_id)
    return out


def _error_event(status: int, title: str, detail: str) -> bytes:
    problem = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return format_sse_event(data_str=json.dumps(problem), event="error")
