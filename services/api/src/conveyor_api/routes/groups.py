"""`/v1/groups` and `/v1/batches`: start a group of jobs with a continuation
(fan-out and fan-in), or a batch with callbacks, in one request; read one
(counts by state, its members a page at a time, why it failed), watch it
(SSE), cancel or requeue it whole. See conveyor_core.groups."""

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import BaseModel, Field

from conveyor_api import audit, tenants
from conveyor_api.auth import ApiKey, Caller, Scope, authorize, require
from conveyor_api.deps import EventsDep, StoreDep
from conveyor_api.events import live_stream, stream_deadline
from conveyor_api.routes.jobs import IdempotencyKey
from conveyor_core.catalog import ID_MAX_CHARS
from conveyor_core.enqueue import fingerprint
from conveyor_core.group_ids import keyed_group_id, member_id
from conveyor_core.groups import (
    FailurePolicy,
    GroupError,
    GroupPublic,
    GroupState,
    cancel_group,
    group_fingerprint,
    placed_group_id,
    read_group,
    requeue_group,
    start_group,
)
from conveyor_core.jobs import HIGHEST_PRIORITY, LOWEST_PRIORITY, JobState
from conveyor_core.logging import bound
from conveyor_core.redis import REDIS_DOWN_ERRORS
from conveyor_core.store import JobStore

router = APIRouter(tags=["groups"])

# One request starts at most this many jobs (the body's size limit,
# max_body_bytes, usually binds first).
MAX_REQUEST_JOBS = 20_000
# A group's page of members.
MAX_MEMBERS_PAGE = 500
SSE_KEEPALIVE_S = 15.0
NO_SUCH_GROUP: dict[int | str, dict[str, Any]] = {404: {"description": "No such group"}}

SubmitterDep = Annotated[Caller, Depends(authorize(Scope.JOBS_SUBMIT))]
ReadKeyDep = Annotated[ApiKey, Depends(require(Scope.JOBS_READ))]
AdminDep = Annotated[ApiKey, Depends(require(Scope.JOBS_ADMIN))]
# `{queue shard}g` and 32 hex digits (conveyor_core.group_ids), or untagged.
GroupId = Annotated[
    str,
    Path(
        min_length=33,
        max_length=ID_MAX_CHARS,
        pattern=r"^(\{[A-Za-z0-9_.:-]+(~[0-9]{1,2})?\})?g[0-9a-f]{32}$",
    ),
]


class CallIn(BaseModel):
    """One job: a catalog type and its payload (validated against the type's model)."""

    job_type: str = Field(max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=HIGHEST_PRIORITY, le=LOWEST_PRIORITY)


class GroupCreate(BaseModel):
    """`POST /v1/groups`: members run in parallel; `then` runs once all ended."""

    children: list[CallIn] = Field(min_length=1, max_length=MAX_REQUEST_JOBS)
    then: CallIn | None = None
    on_child_failure: FailurePolicy = Field(
        default="fail",
        description="fail: a dead or cancelled child fails the group, `then` does not run; "
        "run: `then` runs with the failures listed; ignore: failed children are left out.",
    )


class BatchCreate(BaseModel):
    """`POST /v1/batches`: jobs as one batch, with optional callbacks."""

    jobs: list[CallIn] = Field(min_length=1, max_length=MAX_REQUEST_JOBS)
    on_complete: CallIn | None = Field(default=None, description="Runs once every job ended.")
    on_success: CallIn | None = Field(
        default=None, description="Runs once every job ended, only if every one completed."
    )


class MemberPublic(BaseModel):
    """A member of a group, as its page lists it."""

    id: str
    index: int
    job_type: str | None = None
    state: JobState | None = Field(description="Absent once its record expired.")


class GroupRead(GroupPublic):
    """A group with a page of its members (in order)."""

    members: list[MemberPublic]
    next_offset: int | None = Field(description="Absent on the last page.")


# Field names the requests use for what conveyor_core.groups calls members and continuations.
BATCH_FIELDS = {"children": "jobs", "then": "on_complete"}


def _loc(field: str, names: dict[str, str]) -> list[str | int]:
    """conveyor_core.groups' name of a field (`children[3].payload`) as the
    request's (`children`, 3, `payload`; a batch's `jobs`)."""
    head, _, rest = field.partition(".")
    name, _, index = head.partition("[")
    loc: list[str | int] = [names.get(name, name)]
    if index:
        loc.append(int(index.rstrip("]")))
    if rest:
        loc.append(rest)
    return loc


def _invalid(field: str, message: str, names: dict[str, str]) -> RequestValidationError:
    """A 422 naming the body field (`children.3.payload`) at fault."""
    loc = ("body", *_loc(field, names))
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _admitted(caller: Caller, calls: Sequence[tuple[str, CallIn]], names: dict[str, str]) -> None:
    """Every call's type is public, the key may submit it (at its priority),
    and its payload is within the size limit: else the problem names the field."""
    catalog, key = caller.services.store.catalog, caller.key
    max_bytes = caller.services.settings.max_payload_bytes
    public = {t.name for t in catalog.public()}
    checked: set[tuple[str, int | None]] = set()
    for field, call in calls:
        if call.job_type not in public:
            raise _invalid(f"{field}.job_type", f"unknown job type {call.job_type!r}", names)
        if (call.job_type, call.priority) not in checked:
            tenants.submit_priority(key, catalog[call.job_type], call.priority)
            checked.add((call.job_type, call.priority))
        if len(orjson.dumps(call.payload)) > max_bytes:
            shown = ".".join(str(part) for part in _loc(f"{field}.payload", names))
            raise HTTPException(413, f"{shown}: over the limit of {max_bytes} bytes as JSON")


async def _started(
    caller: Caller,
    children: list[CallIn],
    continuations: dict[str, CallIn | None],
    policy: FailurePolicy,
    kind: str,
    names: dict[str, str],
    idempotency_key: str | None,
    body: BaseModel,
) -> Response:
    """Check the whole request, then start the group: one pass of checks, one
    round trip per chunk of members. Under an Idempotency-Key the group's id
    is the key's: a resubmit finds it (and completes it, if the first
    request was cut short), a different body under it is a 409."""
    calls = [(f"children[{i}]", c) for i, c in enumerate(children)]
    calls += [(name, c) for name, c in continuations.items() if c is not None]
    _admitted(caller, calls, names)
    store, key = caller.services.store, caller.key
    await caller.spend()

    def as_call(c: CallIn | None) -> tuple[str, dict[str, Any]] | None:
        return (c.job_type, c.payload) if c is not None else None

    scope = f"{key.name}/{kind}"
    group_id = None
    if idempotency_key:
        # The key's group id, placed in its members' queue shard (group_ids.py).
        catalog = store.catalog
        types = [catalog[c.job_type] for c in children if c.job_type in catalog]
        then_types = [
            catalog[c.job_type]
            for c in continuations.values()
            if c is not None and c.job_type in catalog
        ]
        try:
            group_id = placed_group_id(
                store, keyed_group_id(scope, idempotency_key), types, then_types
            )
        except GroupError as exc:
            raise _invalid(exc.field, exc.message, names) from None
    body_fingerprint = fingerprint(body.model_dump(mode="json"))
    found = await group_fingerprint(store, group_id) if group_id is not None else ""
    if found and found != body_fingerprint:
        raise HTTPException(
            409,
            f"Idempotency-Key {idempotency_key!r} was used with a different body "
            f"({kind} {group_id}).",
        )
    quota = tenants.quota_of(key)
    if quota is not None and not found:  # a resubmit's jobs are counted already
        outstanding = await store.redis.zcard(quota.key)
        if outstanding + len(children) > quota.max_jobs:
            raise tenants.over_quota(key, caller.services.settings.retry_after_s)
    try:
        group = await start_group(
            store,
            [(c.job_type, c.payload) for c in children],
            then=as_call(continuations.get("then")),
            on_success=as_call(continuations.get("on_success")),
            on_child_failure=policy,
            kind="batch" if kind == "batch" else "group",
            submitted_by=key.name,
            request_id=bound("request_id"),
            quota=quota,
            group_id=group_id,
            fingerprint=body_fingerprint,
        )
    except GroupError as exc:
        raise _invalid(exc.field, exc.message, names) from None
    public = await read_group(store, group.id)
    if public is None:  # expired within the request: not likely, but not a 500
        raise HTTPException(404, f"Group {group.id} is gone.")
    path = "batches" if kind == "batch" else "groups"
    return Response(
        public.model_dump_json(),
        status_code=201 if group.created else 200,
        headers={"Location": f"/v1/{path}/{group.id}"},
        media_type="application/json",
    )


# What starting a group or a batch may answer besides its 201.
START_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Same Idempotency-Key and body: the existing group"},
    403: {"description": "The key may not submit one of the types, or at that priority"},
    409: {"description": "Same Idempotency-Key, different body"},
    413: {"description": "A payload is over the size limit"},
    429: {"description": "Over the key's rate, or its quota of outstanding jobs"},
    503: {"description": "Redis is unavailable; retry after Retry-After"},
}


@router.post(
    "/v1/groups",
    status_code=201,
    response_model=GroupPublic,
    summary="Start a group: children in parallel, then a continuation",
    responses=START_RESPONSES,
)
async def create_group(
    body: GroupCreate, caller: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    continuations = {"then": body.then}
    return await _started(
        caller,
        body.children,
        continuations,
        body.on_child_failure,
        "group",
        {},
        idempotency_key,
        body,
    )


@router.post(
    "/v1/batches",
    status_code=201,
    response_model=GroupPublic,
    summary="Submit jobs as one batch, with callbacks on completion and on success",
    responses=START_RESPONSES,
)
async def create_batch(
    body: BatchCreate, caller: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    continuations = {"then": body.on_complete, "on_success": body.on_success}
    return await _started(
        caller, body.jobs, continuations, "run", "batch", BATCH_FIELDS, idempotency_key, body
    )


async def _visible(store: JobStore, group_id: str, key: ApiKey) -> GroupPublic:
    """The group, or a 404 problem (also for another key's, to an own-jobs key)."""
    group = await read_group(store, group_id)
    if group is None or not tenants.reads_owned_by(key, group.submitted_by):
        raise HTTPException(404, f"No group with id {group_id!r} (it may have expired).")
    return group


async def _read(store: JobStore, group_id: str, key: ApiKey, offset: int, limit: int) -> GroupRead:
    group = await _visible(store, group_id, key)
    ids = [member_id(group.id, i) for i in range(offset, min(offset + limit, group.total))]
    jobs = await store.get_many(ids) if ids else []
    members = [
        MemberPublic(
            id=job_id,
            index=offset + i,
            job_type=job.job_type if job else None,
            state=job.state if job else None,
        )
        for i, (job_id, job) in enumerate(zip(ids, jobs, strict=True))
    ]
    after = offset + len(ids)
    return GroupRead(
        **group.model_dump(), members=members, next_offset=after if after < group.total else None
    )


Offset = Annotated[int, Query(ge=0, description="The first member's index.")]
Limit = Annotated[int, Query(ge=0, le=MAX_MEMBERS_PAGE, description="Members per page.")]


@router.get(
    "/v1/groups/{group_id}",
    summary="Read a group and a page of its members",
    responses=NO_SUCH_GROUP,
)
async def read_group_route(
    group_id: GroupId, store: StoreDep, reader: ReadKeyDep, offset: Offset = 0, limit: Limit = 50
) -> GroupRead:
    return await _read(store, group_id, reader, offset, limit)


@router.get(
    "/v1/batches/{group_id}", summary="Read a batch and a page of its jobs", responses=NO_SUCH_GROUP
)
async def read_batch_route(
    group_id: GroupId, store: StoreDep, reader: ReadKeyDep, offset: Offset = 0, limit: Limit = 50
) -> GroupRead:
    return await _read(store, group_id, reader, offset, limit)


class GroupActionPublic(BaseModel):
    """What a cancel or requeue of a whole group did."""

    group: GroupPublic
    done: int = Field(description="Jobs cancelled (or asked to stop), or requeued.")


@router.post(
    "/v1/groups/{group_id}/cancel",
    summary="Cancel a whole group: no continuation runs; its jobs are cancelled",
    responses={**NO_SUCH_GROUP, 409: {"description": "The group is already cancelled"}},
)
async def cancel_group_route(
    group_id: GroupId, store: StoreDep, admin: AdminDep
) -> GroupActionPublic:
    await _visible(store, group_id, admin)
    action = await cancel_group(store, group_id)
    if action is None:
        raise HTTPException(404, f"No group with id {group_id!r} (it may have expired).")
    if action.state in (GroupState.CANCELLED,) and action.done == 0:
        raise HTTPException(409, f"Group {group_id} is already cancelled.")
    await audit.record(store.redis, admin.name, "cancel_group", group_id, action.done)
    return GroupActionPublic(group=await _visible(store, group_id, admin), done=action.done)


@router.post(
    "/v1/groups/{group_id}/requeue",
    summary="Requeue a whole group's dead jobs (a group they failed runs again)",
    responses=NO_SUCH_GROUP,
)
async def requeue_group_route(
    group_id: GroupId, store: StoreDep, admin: AdminDep
) -> GroupActionPublic:
    await _visible(store, group_id, admin)
    action = await requeue_group(store, group_id)
    if action is None:
        raise HTTPException(404, f"No group with id {group_id!r} (it may have expired).")
    await audit.record(store.redis, admin.name, "requeue_group", group_id, action.done)
    return GroupActionPublic(group=await _visible(store, group_id, admin), done=action.done)


@router.get(
    "/v1/groups/{group_id}/events",
    summary="Watch a group: its record on every change (SSE), until it finishes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: group` with the group as JSON on every change; "
            "`event: error` with a status if the stream cannot go on. The stream ends "
            "when the group has finished, or after its maximum lifetime: reconnect.",
        },
        **NO_SUCH_GROUP,
        429: {"description": "The api key is over its rate, or its streams are all open"},
    },
)
async def group_events(
    group_id: GroupId, request: Request, store: StoreDep, events: EventsDep, reader: ReadKeyDep
) -> StreamingResponse:
    await _visible(store, group_id, reader)
    return live_stream(request, _stream(group_id, store, events, stream_deadline(request)))


async def _stream(
    group_id: str, store: JobStore, events: EventsDep, deadline: float
) -> AsyncIterator[bytes]:
    sent = ""
    with events.watch_group(group_id) as changed:  # the counting script announces each end
        while True:
            changed.clear()  # before the read: a change after it wakes the wait below
            try:
                group = await read_group(store, group_id)
            except REDIS_DOWN_ERRORS:
                yield format_sse_event(data_str='{"status": 503}', event="error")
                return
            if group is None:
                yield format_sse_event(data_str='{"status": 404}', event="error")
                return
            body = group.model_dump_json()
            if body != sent:
                sent = body
                yield format_sse_event(data_str=body, event="group")
            if group.state is not GroupState.RUNNING and group.counts.pending == 0:
                return
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return
            try:
                async with asyncio.timeout(min(SSE_KEEPALIVE_S, left_s)):
                    await changed.wait()
            except TimeoutError:
                yield format_sse_event(comment="keep-alive")
