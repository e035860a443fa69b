"""A workflow as one tree: the groups around a job, for the console and the CLI.

A workflow is what groups (groups.py) make of jobs: a job starts a group,
whose members and continuations may start groups of their own (nested
groups, hand-overs, chains). `read_workflow` answers "what does the workflow
this job (or group) belongs to look like now": it climbs from the job to the
top group (a group's `hands_to` place, or the job that started it, while that
job is itself in a group), then reads the tree down from there.

Every read is bounded, so a group of 100,000 members costs what a group of
ten does: each group shows its counts and one page of members, nested groups
a smaller page; the tree stops after MAX_TREE_GROUPS groups and
MAX_TREE_DEPTH levels, and says where it stopped (`truncated`). A job's
groups are the `group:{id}` fields of its record (group_create.lua), read
with one HKEYS per shown job, pipelined.
"""

from collections.abc import Sequence

from pydantic import BaseModel, Field

from conveyor_core import keys
from conveyor_core.group_ids import continuation_of, group_of, is_group_id, member_id
from conveyor_core.groups import GroupPublic, read_group
from conveyor_core.jobs import JobPublic, JobState
from conveyor_core.store import JobStore

# How far the climb to the top group goes, and how deep the tree is read.
MAX_TREE_DEPTH = 6
# The most groups one tree reads (the others are named, not read).
MAX_TREE_GROUPS = 20
# Members shown per nested group (the top group's page is the caller's).
NESTED_PAGE = 10
# The most members a page shows.
MAX_PAGE = 100
# The most groups shown under one job (a job that started more says so).
GROUPS_PER_JOB = 10


class WorkflowJob(BaseModel):
    """A job in the tree: a member (with its index), a continuation (with
    when it runs), or the job that started the top group."""

    id: str
    job_type: str | None = None
    state: JobState | None = Field(
        description="Absent when the job has no record: a continuation not enqueued "
        "(yet, or ever: see its group's state), or a job whose record expired."
    )
    index: int | None = Field(default=None, description="A member's place in its group.")
    when: str | None = Field(default=None, description="A continuation's: always, success.")
    percent: int | None = None
    error: str | None = Field(default=None, description="`type: message` of a failed job.")
    groups: list["WorkflowGroup"] = Field(
        default_factory=list, description="The groups this job started (nested, or a chain)."
    )
    more_groups: int = Field(default=0, description="Groups it started beyond those shown.")


class WorkflowGroup(GroupPublic):
    """A group in the tree: its record, a page of its members, its continuations."""

    members: list[WorkflowJob] = Field(default_factory=list)
    offset: int = 0
    next_offset: int | None = Field(default=None, description="Absent on the last page.")
    continuation_jobs: list[WorkflowJob] = Field(default_factory=list)
    truncated: bool = Field(
        default=False, description="Past the tree's bounds: counts only, no members read."
    )


class WorkflowPublic(BaseModel):
    """The workflow around `focus`: the job that started it (if it is a job
    of no group) and its top groups."""

    focus: str = Field(description="The job or group id asked for.")
    root: WorkflowJob | None = Field(
        default=None, description="The job that started the top group, when it is in none."
    )
    groups: list[WorkflowGroup] = Field(
        description="The top groups (the root job's, or one); none for a job that started none."
    )
    submitted_by: str | None = Field(default=None, description="The api key that started it.")
    truncated: bool = Field(default=False, description="Some groups were past the tree's bounds.")


def group_of_job(job_id: str) -> str | None:
    """The group a job is a member or a continuation of (its id says), or None."""
    if (member := group_of(job_id)) is not None:
        return member[0]
    return continuation_of(job_id)


async def _started_groups(store: JobStore, job_ids: Sequence[str]) -> list[list[str]]:
    """Per job, the ids of the groups it started (in its record), sorted. One
    HKEYS per job: no more than the read of its record (HGETALL) just made."""
    if not job_ids:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hkeys(keys.job_key(job_id))
        replies = await pipe.execute()
    return [
        sorted(
            name.removeprefix("group:")
            for name in (k.decode() for k in fields)
            if name.startswith("group:")
        )
        for fields in replies
    ]


def _job(job_id: str, job: JobPublic | None, **extra: int | str | None) -> WorkflowJob:
    if job is None:
        return WorkflowJob(id=job_id, state=None, **extra)
    failed = job.error is not None and job.state is not JobState.COMPLETE
    extra["job_type"] = job.job_type
    return WorkflowJob(
        id=job_id,
        state=job.state,
        percent=100 if job.state is JobState.COMPLETE else job.progress.percent,
        error=f"{job.error.type}: {job.error.message}" if failed and job.error else None,
        **extra,
    )


class _Reader:
    """One tree read: counts the groups read, so the tree stays bounded."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.groups_read = 0
        self.truncated = False

    async def group(self, group: GroupPublic, offset: int, limit: int, depth: int) -> WorkflowGroup:
        self.groups_read += 1
        node = WorkflowGroup(**group.model_dump(), offset=offset)
        if depth >= MAX_TREE_DEPTH:
            node.truncated = self.truncated = True
            return node
        ids = [member_id(group.id, i) for i in range(offset, min(offset + limit, group.total))]
        conts = [c.id for c in group.continuations]
        jobs = await self.store.get_many(ids + conts) if ids or conts else []
        node.members = [
            _job(job_id, job, index=offset + i)
            for i, (job_id, job) in enumerate(zip(ids, jobs[: len(ids)], strict=True))
        ]
        node.continuation_jobs = [
            _job(c.id, job, when=c.when, job_type=c.job_type)
            for c, job in zip(group.continuations, jobs[len(ids) :], strict=True)
        ]
        after = offset + len(ids)
        node.next_offset = after if after < group.total else None
        await self.nested([*node.members, *node.continuation_jobs], depth + 1)
        return node

    async def nested(
        self, jobs: Sequence[WorkflowJob], depth: int, offset: int = 0, limit: int = NESTED_PAGE
    ) -> None:
        """Each job's started groups, read (a page each) while in bounds."""
        started = await _started_groups(self.store, [j.id for j in jobs])
        for job, group_ids in zip(jobs, started, strict=True):
            job.more_groups = max(len(group_ids) - GROUPS_PER_JOB, 0)
            for group_id in group_ids[:GROUPS_PER_JOB]:
                group = await read_group(self.store, group_id)
                if group is None:
                    continue
                if self.groups_read >= MAX_TREE_GROUPS:
                    self.truncated = True
                    job.groups.append(WorkflowGroup(**group.model_dump(), truncated=True))
                    continue
                job.groups.append(await self.group(group, offset, limit, depth))


async def top_group(store: JobStore, group: GroupPublic) -> GroupPublic:
    """The outermost group around `group`: through the place it took over
    (`hands_to`), or the job that started it, while that job is in a group."""
    for _ in range(MAX_TREE_DEPTH):
        holder = group.hands_to or group.parent_id
        outer_id = group_of_job(holder) if holder else None
        outer = await read_group(store, outer_id) if outer_id else None
        if outer is None:
            return group
        group = outer
    return group


async def read_workflow(
    store: JobStore, focus: str, *, offset: int | None = None, limit: int = 20
) -> WorkflowPublic | None:
    """The workflow around a job or a group id (a job in no group and above
    none is a workflow of itself alone); None when there is no such job or
    group. `offset` and `limit` page the top group's members (a job that
    started several groups shows that page of each); without an `offset`,
    the page that holds `focus` when it is a member of the top group."""
    limit = max(0, min(limit, MAX_PAGE))
    reader = _Reader(store)
    start_id = focus if is_group_id(focus) else group_of_job(focus)
    start = await read_group(store, start_id) if start_id else None
    if start is None:
        # A job of no group: the workflow is the groups it started (none: itself alone).
        job = await store.get(focus)
        if job is None:
            return None
        starter = _job(focus, job)
        await reader.nested([starter], 0, offset or 0, limit)
        groups, starter.groups = starter.groups, []
        return WorkflowPublic(
            focus=focus,
            root=starter,
            groups=groups,
            submitted_by=job.submitted_by,
            truncated=reader.truncated,
        )
    top = await top_group(store, start)
    root: WorkflowJob | None = None
    if top.parent_id and group_of_job(top.parent_id) is None:
        root = _job(top.parent_id, await store.get(top.parent_id))
    if offset is None:
        place = group_of(focus)
        at = place[1] if place is not None and place[0] == top.id else 0
        offset = at - at % limit if limit else 0
    node = await reader.group(top, offset, limit, 0)
    return WorkflowPublic(
        focus=focus,
        root=root,
        groups=[node],
        submitted_by=top.submitted_by,
        truncated=reader.truncated,
    )
