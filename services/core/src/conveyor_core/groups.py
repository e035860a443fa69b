"""Groups: fan-out and fan-in, chains, and batches, on one primitive.

A *group* is an ordered list of member jobs, up to two continuations, and a
policy for a member's failure. A job starts one from its handler:

    group = await ctx.group(
        [Call("summarize", {"chunk": i}) for i in range(n)],
        then=Call("combine", {"document_id": doc}),
        on_child_failure="fail",
    )

and the continuation, once every member has ended, reads their results in
order:

    results = await ctx.group_results()

An HTTP client starts one with `POST /v1/groups`; a *batch* (`POST
/v1/batches`) is a group with callbacks: `on_complete` (a continuation that
always runs, failures listed) and `on_success` (one that runs only when every
member completed).

What a member's failure does (`on_child_failure`; dead or cancelled: a retry
is not an end, only a member's final end counts):

- `"fail"`: the continuation does not run; the group is `failed`, naming the
  member and its error, as soon as one fails (the others still run).
  Requeuing the dead members re-opens it: once none is left, it is
  `running` again, and its continuation runs when they complete.
- `"run"`: the continuation runs anyway; each failed member is a
  `ChildFailure` in its place in `group_results()`.
- `"ignore"`: the continuation runs; failed members are left out.

How it works (lua/lib/group.lua): the group is a Redis hash (keys.py,
GROUP_PREFIX) counting down its members. A member's id is
`{group id}.{index}`: the transition that ends a job (every final state goes
through it) sees from the id alone that it is a member, and counts it in the
same script; the last member's end enqueues the continuation in that same
script, as a submit would (arq's job key, SET NX, its queue entry, the
wake-up). So the continuation runs exactly once however workers die:
fencing makes each member's end happen once, and nothing is left for a
process to do after it. A job of no group pays nothing. Ids stand in for a
list of members, which an earlier design kept in Redis (a list, and a hash
of job id -> group per queue, read at each job's end): the id says the
group and the place (conveyor_core.group_ids), so a member's end needs no
read, every job's end stays as cheap as before, and the group stores no list.

Costs per member beyond its own commands: its end one HINCRBY and one
SPUBLISH (progress for live streams); the continuation reads the results
with one MGET per RESULTS_CHUNK members.

One slot per call (Redis Cluster), the same code on one node: on a
cluster a group's id carries the hash tag of one shard of its members'
queue (`{queue}g...`, group_ids.py, `placed_group_id`), and every member
goes to that shard, so the group's hash, its members' keys and its events
channel share one slot: the member's end counts it, and the last one starts
a continuation of the same shard, in one script as on one node, and the
results' MGET keeps to that slot. What else the design could have done, and
why not: members of several queues routed through a per-group slot and an
outbox would cost every member's end a second call; instead, on a cluster a
group's members share one queue (GroupError naming the first member of
another: a 422 over HTTP). A continuation of another slot (another queue or
shard) is not started by the member's script but put in the outbox of the
group's shard, in its slot; a worker of that shard starts it in its own
(store/groups.py, `drain_outbox`): SET NX on its fixed id, and a check for
its result and record, make a second drain (its taker died) harmless, so it
still starts once. A group that takes a place over joins the outer group's
shard (its `then` too), so a place counts in one call. What is in another
slot (the record of the job that starts the group, the caller's quota) is
written by a call of its own. On one node ids keep their untagged shape
(`g...`): the scripts count both shapes, and a worker of the previous
release, still running during a rolling upgrade, counts only that one.

Creating a group writes its hash first, then its members GROUP_CHUNK_MAX
per Lua call. A group started by a job has an id derived from the job's id
and the group's ordinal in the try, so a try cut short and run again
resumes the same group: members that exist (or finished) are skipped.

A continuation (or any member) may start a group of its own: a chain, or a
nested group. A member's end is its handler's end, unless it hands its place
over (`ctx.group(..., hand_over=True)`): then its place in its group also
waits for the new group's `then` continuation, whose result takes the
place's (or for the new group's failure or cancel, which ends the place as
dead or cancelled). A continuation that holds a place may hand it on down a
chain. The outer group counts one end more per hand-over (`handed`), so the
place ends once the last step ends.

Cancel (`cancel_group`) marks the group cancelled, so no continuation
starts, then cancels its members and any continuation already enqueued;
requeue (`requeue_group`) puts its dead members (and a dead continuation)
back. Both reach the groups its places were handed over to, and act a
bounded chunk per Redis call. Deleting a member that never ended (a bulk
delete) counts it as cancelled.

Members are due at once, with their job types' priorities (or the Call's);
idempotency keys, debounce, deferral and offloaded payloads are not offered
to members. A continuation's `group_results()` reads its members' results
while they are kept (their job types' `keep_result_s`): one whose result has
expired reads as a `ChildFailure` in state "expired".

The public interface (job authors, the api, the console and the CLI):

- `Call`, `ChildFailure`, `Group`, `FailurePolicy` (also from `conveyor_core`);
  `JobContext.group(children, then=, on_child_failure=, hand_over=)`,
  `.group_results()`, `.iter_group_results()` and `.group_id`.
- `start_group(store, children, then=, on_child_failure=, on_success=, ...)
  -> Group`; `read_group(store, group_id) -> GroupPublic | None` (state,
  counts by state, continuations, why it failed, `hands_to`, `handed`);
  `iter_group_results(store, group_id, total, policy)`; `cancel_group` and
  `requeue_group(store, group_id) -> GroupAction | None`.
- Ids: `conveyor_core.group_ids` (`member_id`, `group_of`, `continued_by`).
  A job as read (`JobPublic`) names its `group_id` and the `groups` it started.
- Changes: the group's hash is announced on its events channel
  (`keys.group_events_channel(group_id)`, in its hash's slot), as a job's is.
"""

import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from arq.constants import result_key_prefix
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, Field

from conveyor_core import keys, serializer
from conveyor_core.catalog import Catalog, JobType
from conveyor_core.claimcheck import reference_of, resolve
from conveyor_core.enqueue import job_meta
from conveyor_core.flow import flow_entry
from conveyor_core.group_ids import (
    continuation_id,
    continued_by,
    group_of,
    is_group_id,
    member_id,
    new_group_id,
    placed,
    shard_of_group,
)
from conveyor_core.jobs import (
    DEAD_RETENTION_S,
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    JobState,
    ms_to_datetime,
    now_ms,
)
from conveyor_core.metrics import JOBS_ENQUEUED
from conveyor_core.scores import PRIORITIES, queue_score
from conveyor_core.store import (
    BULK_BATCH_MAX,
    GROUP_CHUNK_MAX,
    ArqJob,
    JobStore,
    MemberRow,
    Quota,
)
from conveyor_core.tracing import messaging_attributes, tracer

FailurePolicy = Literal["fail", "run", "ignore"]
FAILURE_POLICIES: tuple[FailurePolicy, ...] = get_args(FailurePolicy)
GroupKind = Literal["group", "batch"]
# When a continuation starts: once every member ended, or only if none failed.
When = Literal["always", "success"]

# The most members one group takes (a request's, or a handler's).
MAX_GROUP_MEMBERS = 100_000
# A continuation reads its members' results this many per round trip.
RESULTS_CHUNK = 500
# The job metadata (the reserved kwarg) that makes a job a group's continuation.
GROUP_META = "group_id"
GROUP_TOTAL_META = "group_total"
GROUP_POLICY_META = "group_policy"


class GroupState(StrEnum):
    """A group's state (the same names in the api and the console)."""

    RUNNING = "running"  # members not all ended
    DONE = "done"  # every member ended; the continuations whose gate held were enqueued
    FAILED = "failed"  # policy "fail" and a member failed: no continuation will run
    CANCELLED = "cancelled"  # cancelled: no continuation will run


class GroupError(ValueError):
    """A group that cannot be started as asked: the field at fault and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotAContinuationError(RuntimeError):
    """`group_results()` asked by a job that no group enqueued."""


@dataclass(frozen=True, slots=True)
class Call:
    """One job to run: a member of a group, or a continuation."""

    job_type: str | JobType
    payload: BaseModel | Mapping[str, Any]
    # 0 (highest) to 9 (lowest); None: the job type's.
    priority: int | None = None


Child = Call | tuple[str | JobType, BaseModel | Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ChildFailure:
    """A member that did not complete, in its place in `group_results()`
    (policy "run"): dead, cancelled, or expired (its result is no longer kept)."""

    job_id: str
    index: int
    state: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Group:
    """A started group: its id, size and continuations' ids."""

    id: str
    total: int
    continuation_ids: tuple[str, ...]
    # False when the group existed: its creation was resumed.
    created: bool

    def member_id(self, index: int) -> str:
        return member_id(self.id, index)

    @property
    def member_ids(self) -> list[str]:
        return [member_id(self.id, i) for i in range(self.total)]


class GroupCounts(BaseModel):
    """Members by how they ended, and those not ended yet."""

    pending: int
    complete: int
    dead: int
    cancelled: int


class GroupContinuation(BaseModel):
    """A continuation, as the group will enqueue it (or did)."""

    id: str
    job_type: str
    when: When = Field(description="always: once all members ended; success: only if none failed")


class GroupFailure(BaseModel):
    """The member that failed a group under policy "fail", and why."""

    member_id: str
    state: str
    error_type: str | None = None
    message: str | None = None


class GroupPublic(BaseModel):
    """A group (or batch) as clients read it."""

    id: str
    kind: GroupKind
    state: GroupState
    on_child_failure: FailurePolicy
    total: int
    counts: GroupCounts
    continuations: list[GroupContinuation]
    failed: GroupFailure | None = None
    hands_to: str | None = Field(
        default=None,
        description="The place (a job of an outer group) this group took over: "
        "its continuation's end ends that place.",
    )
    handed: dict[int, str] = Field(
        default_factory=dict,
        description="Places of this group handed over to an inner group: index -> the "
        "inner group's continuation, whose result takes the place's.",
    )
    submitted_by: str | None = None
    parent_id: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


async def group_fingerprint(store: JobStore, group_id: str) -> str:
    """The fingerprint the group was started with ('' for none, or no group)."""
    raw = await store.redis.hget(keys.group_key(group_id), "fingerprint")  # type: ignore[misc]
    return raw.decode() if raw else ""


def _call_of(child: Child, field: str) -> Call:
    if isinstance(child, Call):
        return child
    if isinstance(child, tuple) and len(child) == 2:
        return Call(child[0], child[1])
    raise GroupError(field, "give a Call or a (job type, payload) pair")


@dataclass(frozen=True, slots=True)
class _Prepared:
    job_type: JobType
    payload: dict[str, Any]
    priority: int


def _prepare(catalog: Catalog, call: Call, field: str) -> _Prepared:
    """The call validated against its job type (GroupError naming the field)."""
    job_type = call.job_type
    if isinstance(job_type, str):
        if job_type not in catalog:
            raise GroupError(f"{field}.job_type", f"unknown job type {job_type!r}")
        job_type = catalog[job_type]
    try:
        model = job_type.payload.model_validate(call.payload)
    except ValueError as exc:
        raise GroupError(f"{field}.payload", str(exc)) from None
    priority = job_type.priority if call.priority is None else call.priority
    if priority not in PRIORITIES:
        raise GroupError(
            f"{field}.priority",
            f"must be {HIGHEST_PRIORITY} (highest) to {LOWEST_PRIORITY} (lowest), not {priority}",
        )
    return _Prepared(job_type, model.model_dump(mode="json"), priority)


def _check_shape(
    size: int, policy: str, group_id: str | None, hands_to: str | None, has_then: bool
) -> None:
    """A group's shape, before its calls are looked at (GroupError naming the field)."""
    if policy not in FAILURE_POLICIES:
        raise GroupError("on_child_failure", f"must be one of {', '.join(FAILURE_POLICIES)}")
    if size > MAX_GROUP_MEMBERS:
        raise GroupError("children", f"at most {MAX_GROUP_MEMBERS} members, not {size}")
    if group_id is not None and not is_group_id(group_id):
        raise GroupError("group_id", "not a group id (g and 32 hex digits)")
    if hands_to is not None and (group_of(hands_to) is None or not has_then):
        raise GroupError("hand_over", "needs a place in a group (a member id) and a `then`")


def placed_group_id(
    store: JobStore,
    seed: str,
    members: Sequence[JobType],
    continuations: Sequence[JobType] = (),
    outer: str | None = None,
) -> str:
    """The group's id. On a cluster: `seed` tagged with the queue shard its
    members go to (group_ids.placed), so that its hash, its members and
    their keys share one slot; members of several queues are refused, naming
    the first member of another; a group that takes a place over (`outer`,
    the outer group) joins the outer group's shard, with its `then`, as the
    place counts in one call (else refused, naming `hand_over`). On one node
    every key is in one place: `seed` as it is, the shape every release has
    counted, so that during a rolling upgrade a worker of the previous
    release still counts the members of a group a new one started."""
    if not store.one_slot_per_call:
        return seed
    queues = list(dict.fromkeys(m.queue for m in members))
    if not queues and continuations:
        queues = [continuations[0].queue]
    if len(queues) > 1:
        first = queues[0]
        at = next(i for i, m in enumerate(members) if m.queue != first)
        raise GroupError(
            f"children[{at}].job_type",
            f"on a Redis Cluster a group's members share one queue (a slot): "
            f"{members[at].name!r} is of queue {queues[1]!r}, the first "
            f"member's of {first!r}; start a group per queue",
        )
    if not queues:
        return seed  # no member, no continuation: its hash alone
    (queue,) = queues
    if outer is None:
        return placed(seed, store.catalog.shards(queue))
    outer_shard = shard_of_group(outer)
    then_queue = continuations[0].queue if continuations else queue
    if outer_shard is not None and keys.queue_of_shard(outer_shard) == queue == then_queue:
        return placed(seed, [outer_shard])
    raise GroupError(
        "hand_over",
        "on a Redis Cluster a group that takes a place over runs its members and "
        f"its `then` in the outer group's queue ({outer_shard or queue!r}), "
        "as the place counts in the outer group in one call",
    )


def _continuation_shard(catalog: Catalog, group_id: str, role: str, call: _Prepared) -> str:
    """The queue shard a continuation joins: its group's when it is of the
    group's queue, else one of its queue's (the same for the same group); of
    an untagged group (one node), shard 0, where an untagged id is looked for."""
    queue = call.job_type.queue
    shard = shard_of_group(group_id)
    if shard is None:
        return queue
    if keys.queue_of_shard(shard) == queue:
        return shard
    shards = catalog.shards(queue)
    return shards[zlib.crc32(f"{group_id}.{role}".encode()) % len(shards)]


async def start_group(
    store: JobStore,
    children: Sequence[Child],
    *,
    then: Child | None = None,
    on_child_failure: FailurePolicy = "fail",
    on_success: Child | None = None,
    kind: GroupKind = "group",
    group_id: str | None = None,
    parent_id: str | None = None,
    submitted_by: str | None = None,
    request_id: str | None = None,
    quota: Quota | None = None,
    hands_to: str | None = None,
    fingerprint: str = "",
) -> Group:
    """Validate every member and continuation, then create the group and its
    members (a chunk of GROUP_CHUNK_MAX per round trip). Nothing is written
    when one is invalid (GroupError names it: `children[3].payload`).

    `then` runs once every member ended, as `on_child_failure` says;
    `on_success` only when every member completed. A `group_id` that exists
    resumes that group (Group.created is False). `parent_id` names the job
    that starts it (its record lists the group), `submitted_by` the api key.
    `hands_to` (a member id) is the place in an outer group that this group
    takes over: its `then` continuation's end (or its failure) ends that place.
    `fingerprint` (of the request that starts it) is kept, so a resubmit
    under the same id can be told from another request (`group_fingerprint`).
    """
    _check_shape(len(children), on_child_failure, group_id, hands_to, then is not None)
    outer = group_of(hands_to) if hands_to is not None else None
    catalog = store.catalog
    members = [
        _prepare(catalog, _call_of(c, f"children[{i}]"), f"children[{i}]")
        for i, c in enumerate(children)
    ]
    continuations: list[tuple[str, When, _Prepared]] = []
    if then is not None:
        when: When = "success" if on_child_failure == "fail" else "always"
        continuations.append(("then", when, _prepare(catalog, _call_of(then, "then"), "then")))
    if on_success is not None:
        prepared = _prepare(catalog, _call_of(on_success, "on_success"), "on_success")
        continuations.append(("success", "success", prepared))
    group_id = placed_group_id(
        store,
        group_id or new_group_id(),
        [m.job_type for m in members],
        [c[2].job_type for c in continuations],
        outer[0] if outer else None,
    )
    shard = shard_of_group(group_id)
    at_ms = now_ms()
    queue = (
        members[0].job_type.queue
        if members
        else (continuations[0][2].job_type.queue if continuations else "")
    )
    with tracer.start_as_current_span(
        f"send {queue}",
        kind=SpanKind.PRODUCER,
        attributes=messaging_attributes("send", queue, group_id, kind),
    ):
        meta = job_meta(request_id, parent_id, submitted_by)
        fields: dict[str, str | bytes | int] = {
            "kind": kind,
            "policy": on_child_failure,
            "continuations": len(continuations),
            "queues": ",".join(sorted({m.job_type.queue for m in members})),
            "submitted_by": submitted_by or "",
            "parent_id": parent_id or "",
            "fingerprint": fingerprint,
        }
        continuation_ids = []
        for n, (role, when, prepared) in enumerate(continuations, 1):
            joins = _continuation_shard(catalog, group_id, role, prepared)
            job_id = continuation_id(group_id, role, joins)
            continuation_ids.append(job_id)
            cont_meta = {
                **meta,
                GROUP_META: group_id,
                GROUP_TOTAL_META: str(len(members)),
                GROUP_POLICY_META: on_child_failure,
            }
            job = ArqJob(prepared.job_type.name, prepared.payload, cont_meta, at_ms)
            limits = prepared.job_type.limits
            fields |= {
                f"c{n}:id": job_id,
                f"c{n}:type": prepared.job_type.name,
                f"c{n}:queue": joins,
                # In another slot than the group's hash: started through its
                # shard's outbox (a cluster's; lib/group.lua).
                f"c{n}:outbox": int(
                    not store.same_slot(keys.queue_key(joins, ""), keys.group_key(group_id))
                ),
                f"c{n}:priority": prepared.priority,
                f"c{n}:flow": flow_entry(prepared.job_type.name, limits, prepared.payload),
                f"c{n}:when": when,
                f"c{n}:bytes": job.encode(),
            }
        created = await store.create_group(
            group_id,
            len(members),
            fields,
            parent_id=parent_id,
            hands_to=hands_to,
            hands_to_group=outer[0] if outer else None,
        )
        for start in range(0, len(members), GROUP_CHUNK_MAX):
            rows = [
                MemberRow(
                    member_id(group_id, i),
                    shard or m.job_type.queue,
                    queue_score(m.priority, at_ms),
                    ArqJob(m.job_type.name, m.payload, meta, at_ms).encode(),
                    flow_entry(m.job_type.name, m.job_type.limits, m.payload),
                    m.job_type.name,
                )
                for i, m in enumerate(members[start : start + GROUP_CHUNK_MAX], start)
            ]
            await store.submit_members(group_id, rows, resuming=not created, quota=quota)
    if created:
        for (name, queue), count in Counter(
            (m.job_type.name, m.job_type.queue) for m in members
        ).items():
            JOBS_ENQUEUED.labels(name, queue).inc(count)
    return Group(group_id, len(members), tuple(continuation_ids), created)


def _int(raw: dict[str, bytes], name: str) -> int:
    value = raw.get(name)
    return int(value) if value else 0


def _text(raw: dict[str, bytes], name: str) -> str:
    value = raw.get(name)
    return value.decode() if value else ""


def _handed(raw: dict[str, bytes]) -> dict[int, str]:
    """Index -> the continuation that took the place over."""
    return {
        int(name.removeprefix("handed:")): value.decode()
        for name, value in raw.items()
        if name.startswith("handed:")
    }


def _public(group_id: str, raw: dict[str, bytes]) -> GroupPublic:
    total, remaining = _int(raw, "total"), max(_int(raw, "remaining"), 0)
    dead, cancelled = _int(raw, "dead"), _int(raw, "cancelled")
    # A place handed over ends twice (its job, and what it was handed to).
    ends = total + _int(raw, "handed")
    failed = None
    if member := _text(raw, "failed_member"):
        error = serializer.loads(raw["failed_error"]) if raw.get("failed_error") else None
        error = error if isinstance(error, dict) else {}
        failed = GroupFailure(
            member_id=member,
            state=_text(raw, "failed_state"),
            error_type=error.get("type"),
            message=error.get("message"),
        )
    continuations = [
        GroupContinuation(
            id=_text(raw, f"c{n}:id"),
            job_type=_text(raw, f"c{n}:type"),
            when="success" if _text(raw, f"c{n}:when") == "success" else "always",
        )
        for n in range(1, _int(raw, "continuations") + 1)
    ]
    policy = _text(raw, "policy")
    return GroupPublic(
        id=group_id,
        kind="batch" if _text(raw, "kind") == "batch" else "group",
        state=GroupState(_text(raw, "state") or GroupState.RUNNING),
        on_child_failure=policy if policy in FAILURE_POLICIES else "fail",
        total=total,
        counts=GroupCounts(
            pending=remaining,
            complete=max(ends - remaining - dead - cancelled, 0),
            dead=dead,
            cancelled=cancelled,
        ),
        continuations=continuations,
        failed=failed,
        hands_to=_text(raw, "hands_to") or None,
        handed=_handed(raw),
        submitted_by=_text(raw, "submitted_by") or None,
        parent_id=_text(raw, "parent_id") or None,
        created_at=ms_to_datetime(_int(raw, "created_at_ms") or None),
        finished_at=ms_to_datetime(_int(raw, "finished_at_ms") or None),
    )


async def read_group(store: JobStore, group_id: str) -> GroupPublic | None:
    """The group as clients read it; None when there is none (or it expired)."""
    if not is_group_id(group_id):
        return None
    raw = await store.group_hash(group_id)
    return _public(group_id, raw) if raw.get("total") is not None else None


def _as_result(job_id: str, index: int, raw: bytes | None, policy: str) -> Any:
    """A member's entry in group_results(): its result, or a ChildFailure."""
    job = ArqJob.decode(raw) if raw else None
    if job is None or job.success is None:
        return ChildFailure(
            job_id, index, "expired", "ResultExpired", "its result is no longer kept"
        )
    if job.success:
        return job.result
    error = job.result if isinstance(job.result, dict) else {}
    error_type = str(error.get("type", "Error"))
    state = "cancelled" if error_type == serializer.CANCELLED_ERROR_TYPE else JobState.DEAD.value
    return ChildFailure(job_id, index, state, error_type, str(error.get("message", "")))


async def iter_group_results(
    store: JobStore, group_id: str, total: int, policy: str, chunk: int = RESULTS_CHUNK
) -> AsyncIterator[Any]:
    """The members' results in order, read `chunk` per round trip (one MGET
    of arq's result keys); a failed member as a ChildFailure, left
    out under policy "ignore". An offloaded result is read back from the
    blob store (claimcheck.py). A place handed over to an inner group reads
    that group's continuation's result (a ChildFailure when it never ran)."""
    handed: dict[int, str] = {}
    if await store.redis.hget(keys.group_key(group_id), "handed"):  # type: ignore[misc]
        handed = _handed(await store.group_hash(group_id))
    for start in range(0, total, chunk):
        ids = [
            handed.get(i) or member_id(group_id, i) for i in range(start, min(start + chunk, total))
        ]
        replies = await store.redis.mget([result_key_prefix + job_id for job_id in ids])
        for i, (job_id, raw) in enumerate(zip(ids, replies, strict=True), start):
            entry = _as_result(job_id, i, raw, policy)
            if i in handed and isinstance(entry, ChildFailure) and entry.state == "expired":
                why = "the group this place was handed over to did not complete"
                entry = ChildFailure(job_id, i, JobState.DEAD.value, "GroupFailed", why)
            if isinstance(entry, ChildFailure):
                if policy == "ignore":
                    continue
            elif store.blobs is not None and reference_of(entry, job_id) is not None:
                entry = await resolve(store.blobs, entry, job_id)
            yield entry


@dataclass(frozen=True, slots=True)
class GroupAction:
    """What a cancel or requeue of a whole group did."""

    # The group's state before (its state after, for a requeue).
    state: GroupState
    done: int
    skipped: int


async def _bulk_over(
    store: JobStore, action: str, queue_ids: Sequence[tuple[str, Sequence[str]]]
) -> tuple[int, int]:
    done = skipped = 0
    for queue, ids in queue_ids:
        # A cancelled job is kept as long as its queue's types keep results.
        kept_s = [t.keep_result_s for t in store.catalog.for_queue(queue)]
        retention_ms = int(max(kept_s, default=DEAD_RETENTION_S) * 1000)
        for start in range(0, len(ids), BULK_BATCH_MAX):
            batch = await store.bulk_batch(
                action, queue, ids[start : start + BULK_BATCH_MAX], retention_ms
            )
            done, skipped = done + batch.done, skipped + batch.skipped
    return done, skipped


def _targets(group: GroupPublic, raw: dict[str, bytes]) -> list[tuple[str, Sequence[str]]]:
    """(queue, job ids) to act on: every member in each of the group's queues
    (bulk.lua skips the ids not in a queue), and each continuation in its own."""
    members = [member_id(group.id, i) for i in range(group.total)]
    out: list[tuple[str, Sequence[str]]] = [
        (queue, members) for queue in _text(raw, "queues").split(",") if queue
    ]
    for n, continuation in enumerate(group.continuations, 1):
        out.append((keys.queue_of_shard(_text(raw, f"c{n}:queue")), [continuation.id]))
    return out


async def _inner(
    store: JobStore,
    group: GroupPublic,
    act: Callable[[JobStore, str], Awaitable["GroupAction | None"]],
) -> tuple[int, int]:
    """`act` on each group a place of `group` was handed over to (and theirs, in turn)."""
    done = skipped = 0
    for handed_to in group.handed.values():
        inner_id = continued_by(handed_to)
        if inner_id is not None and (inner := await act(store, inner_id)) is not None:
            done, skipped = done + inner.done, skipped + inner.skipped
    return done, skipped


async def cancel_group(store: JobStore, group_id: str) -> GroupAction | None:
    """Cancel a whole workflow: no continuation of the group starts from now
    on; its members and any continuation already enqueued are cancelled
    (running ones are asked to stop), and so are the groups its places were
    handed over to. None when there is no such group."""
    raw = await store.group_hash(group_id) if is_group_id(group_id) else {}
    if raw.get("total") is None:
        return None
    group = _public(group_id, raw)
    before = await store.cancel_group_hash(group_id)
    if not before:
        return None
    done, skipped = await _bulk_over(store, "cancel", _targets(group, raw))
    inner_done, inner_skipped = await _inner(store, group, cancel_group)
    return GroupAction(GroupState(before), done + inner_done, skipped + inner_skipped)


async def requeue_group(store: JobStore, group_id: str) -> GroupAction | None:
    """Requeue a whole workflow's dead jobs: the group's members and
    continuation, and those of the groups its places were handed over to; a
    group that failed for them runs again. None when there is no such group."""
    raw = await store.group_hash(group_id) if is_group_id(group_id) else {}
    if raw.get("total") is None:
        return None
    group = _public(group_id, raw)
    done, skipped = await _bulk_over(store, "requeue", _targets(group, raw))
    inner_done, inner_skipped = await _inner(store, group, requeue_group)
    after = await read_group(store, group_id)
    state = after.state if after else group.state
    return GroupAction(state, done + inner_done, skipped + inner_skipped)
