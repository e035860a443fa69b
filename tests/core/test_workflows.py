"""The workflow tree (conveyor_core.workflows) against a real Redis: it climbs
from any job to the top group, through hand-overs too, and stays bounded
however many groups a workflow holds, saying where it stopped."""

from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.groups import Group, start_group
from conveyor_core.store import JobStore
from conveyor_core.workflows import (
    GROUPS_PER_JOB,
    MAX_TREE_GROUPS,
    group_of_job,
    read_workflow,
)
from tests.support import jobs

QUEUE = "arq:queue"
CATALOG = load_catalog(jobs.MODULES.split(","))
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 1000}
EFFECT = ("effect", {"work_s": 0})


async def running_group(store: JobStore, size: int) -> Group:
    """A group whose members all run (their records exist, as a handler's does)."""
    group = await start_group(store, [EFFECT] * size, then=EFFECT)
    claimed = (await store.claim(QUEUE, size, **CLAIM)).jobs
    assert [c.job_id for c in claimed] == group.member_ids
    return group


def test_a_jobs_id_says_its_group() -> None:
    gid = "g" + "ab" * 16
    assert [group_of_job(f"{gid}.{role}") for role in ("0", "17", "then", "success")] == [gid] * 4
    assert group_of_job("plain-job") is None
    assert group_of_job(f"{gid}.other") is None
    assert group_of_job("gnothex.then") is None


async def test_a_tree_stops_at_its_bounds_and_says_so(redis: ArqRedis) -> None:
    store = JobStore(redis, CATALOG)
    top = await running_group(store, 3)
    for member in top.member_ids:
        for _ in range(8):  # 24 nested groups and the top one: past the bound
            await start_group(store, [EFFECT], parent_id=member)

    tree = await read_workflow(store, top.id)

    assert tree is not None
    assert tree.truncated is True
    nested = [g for m in tree.groups[0].members for g in m.groups]
    assert len(nested) == 24  # every one named, with its counts
    read = [g for g in nested if not g.truncated]
    assert len(read) == MAX_TREE_GROUPS - 1  # the top group is the first read
    assert all(len(g.members) == 1 for g in read)
    assert all(g.members == [] and g.counts.pending == 1 for g in nested if g.truncated)


async def test_a_job_that_started_more_groups_than_shown_says_how_many(redis: ArqRedis) -> None:
    store = JobStore(redis, CATALOG)
    top = await running_group(store, 1)
    for _ in range(GROUPS_PER_JOB + 2):
        await start_group(store, [EFFECT], parent_id=top.member_id(0))

    tree = await read_workflow(store, top.member_id(0))

    assert tree is not None
    (member,) = tree.groups[0].members
    assert (len(member.groups), member.more_groups) == (GROUPS_PER_JOB, 2)
    assert tree.truncated is False


async def test_a_group_a_place_was_handed_over_to_climbs_to_the_outer_group(
    redis: ArqRedis,
) -> None:
    store = JobStore(redis, CATALOG)
    outer = await running_group(store, 2)
    place = outer.member_id(1)
    inner = await start_group(store, [EFFECT] * 2, then=EFFECT, parent_id=place, hands_to=place)

    tree = await read_workflow(store, inner.member_id(0))

    assert tree is not None
    (top,) = tree.groups
    assert top.id == outer.id
    assert top.handed == {1: f"{inner.id}.then"}
    assert top.total == 2
    assert top.counts.pending == 3  # two members and the hand-over's continuation
    (nested,) = top.members[1].groups
    assert (nested.id, nested.hands_to) == (inner.id, place)
    assert [m.id for m in nested.members] == inner.member_ids


async def test_an_unknown_id_is_no_workflow(redis: ArqRedis) -> None:
    store = JobStore(redis, CATALOG)
    assert await read_workflow(store, "no-such-job") is None
    assert await read_workflow(store, "g" + "0" * 32) is None
    assert await read_workflow(store, "g" + "0" * 32 + ".then") is None
