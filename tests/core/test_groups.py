"""Groups against a real Redis, one node and a real cluster alike: members
counted as they end, the continuation enqueued exactly once by the last end,
each failure policy, results in order, and cancel and requeue of a whole
group."""

import asyncio
import json
import re
from dataclasses import replace
from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from redis.crc import key_slot

from conveyor_core import keys
from conveyor_core.catalog import JOB_ID_PATTERN, Catalog, load_catalog
from conveyor_core.cluster import ClusterClient
from conveyor_core.context import JobContext
from conveyor_core.enqueue import enqueue
from conveyor_core.group_ids import (
    continuation_id,
    continuation_of,
    continued_by,
    derived_group_id,
    group_of,
    is_group_id,
    keyed_group_id,
    member_id,
    placed,
    shard_of_group,
)
from conveyor_core.groups import (
    Call,
    ChildFailure,
    GroupError,
    GroupState,
    NotAContinuationError,
    cancel_group,
    read_group,
    requeue_group,
    start_group,
)
from conveyor_core.jobs import JobState
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.redis import create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.store import GROUP_CHUNK_MAX, ArqJob, Claimed, JobStore
from tests.support import jobs

pytestmark = pytest.mark.xdist_group("cluster")

CATALOG = load_catalog(jobs.MODULES.split(","))
EFFECT = CATALOG["effect"]
QUEUE = EFFECT.queue
CLAIM = {"lock_ttl_ms": 10_000, "cancelled_retention_ms": 60_000, "scan_limit": 5000}
# What a group costs once, whatever its size: the last end's read of the
# group, the continuation's start (SET NX, ZADD, history, wake-up), the
# group's finish (state, expiry, notice), the continuation's job key read.
PER_GROUP_COMMANDS = 16
ERROR = '{"type": "ValueError", "message": "bad chunk", "traceback": "..."}'


@pytest.fixture
def store(node_or_cluster_redis: ArqRedis) -> JobStore:
    """A store on one Redis node, then on a real cluster (3 primaries, 3 replicas)."""
    return JobStore(node_or_cluster_redis, CATALOG)


def effects(n: int) -> list[Call]:
    return [Call("effect", {"work_s": i}) for i in range(n)]


async def claim_all(store: JobStore) -> dict[str, Claimed]:
    claimed: dict[str, Claimed] = {}
    while jobs_ := (await store.claim(QUEUE, 500, **CLAIM)).jobs:
        claimed |= {c.job_id: c for c in jobs_}
    return claimed


async def end(store: JobStore, claimed: Claimed, *, result: Any = None, dead: bool = False) -> None:
    if dead:
        ended = await store.dead(EFFECT, claimed.job_id, ERROR, token=claimed.token)
    else:
        ended = await store.complete(
            EFFECT, claimed.job_id, json.dumps(result), token=claimed.token
        )
    assert ended.moved


async def continuation_context(store: JobStore, job_id: str) -> JobContext:
    raw = await store.redis.get(f"arq:job:{job_id}")
    assert raw is not None, f"continuation {job_id} was not enqueued"
    job = ArqJob.decode(raw)
    assert job is not None
    catalog = store.catalog
    return JobContext(job_id, 1, catalog[job.function], store, catalog, meta=job.meta)


async def test_member_ids_say_their_group_and_place() -> None:
    group_id = derived_group_id("job-1", 0)
    assert group_id == derived_group_id("job-1", 0) != derived_group_id("job-1", 1)
    assert group_of(member_id(group_id, 41)) == (group_id, 41)
    assert group_of(f"{group_id}.then") is None
    assert group_of("0123abcd.3") is None
    assert group_of("send_digest:1732460000123") is None


async def test_the_last_members_end_enqueues_the_continuation_once(store: JobStore) -> None:
    group = await start_group(store, effects(5), then=Call("effect", {"work_s": 99}))
    (then_id,) = group.continuation_ids
    claimed = await claim_all(store)
    assert sorted(claimed) == sorted(group.member_ids)

    for job_id in group.member_ids[:4]:
        await end(store, claimed[job_id], result=job_id)
        assert not await store.redis.exists(f"arq:job:{then_id}")
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.RUNNING
    assert (read.counts.pending, read.counts.complete) == (1, 4)

    await end(store, claimed[group.member_ids[4]], result="last")
    # Enqueued by the same script: in the queue, due now, exactly once.
    assert await store.redis.zscore(QUEUE, then_id) is not None
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.DONE
    assert read.counts.model_dump() == {"pending": 0, "complete": 5, "dead": 0, "cancelled": 0}
    assert read.finished_at is not None

    # A member's end can never come twice (fencing), and a stale one is refused whole.
    assert not (await store.complete(EFFECT, group.member_ids[4], "null")).moved
    (cont,) = (await store.claim(QUEUE, 10, **CLAIM)).jobs
    assert cont.job_id == then_id
    # A job's record says its group: a child's by its id, a continuation's by its metadata.
    for job_id in (group.member_ids[0], then_id):
        job = await store.get(job_id)
        assert job is not None
        assert job.group_id == group.id
    ctx = await continuation_context(store, then_id)
    assert ctx.group_id == group.id
    assert await ctx.group_results() == [*group.member_ids[:4], "last"]


async def test_concurrent_ends_count_every_member_and_start_one_continuation(
    store: JobStore,
) -> None:
    group = await start_group(store, effects(300), then=Call("effect", {"work_s": 0}))
    claimed = await claim_all(store)
    await asyncio.gather(*(end(store, c, result=i) for i, c in enumerate(claimed.values())))
    read = await read_group(store, group.id)
    assert read is not None
    assert (read.state, read.counts.complete) == (GroupState.DONE, 300)
    queued = await store.redis.zrange(QUEUE, 0, -1)
    assert queued == [group.continuation_ids[0].encode()]


async def test_results_come_in_member_order_read_in_chunks(store: JobStore) -> None:
    group = await start_group(store, effects(1203), then=Call("effect", {"work_s": 0}))
    claimed = await claim_all(store)
    for job_id in reversed(group.member_ids):  # ended in the opposite order
        await end(store, claimed[job_id], result={"index": group_of(job_id)[1]})  # type: ignore[index]
    ctx = await continuation_context(store, group.continuation_ids[0])
    results = await ctx.group_results()
    assert results == [{"index": i} for i in range(1203)]


async def test_policy_fail_names_the_member_and_never_runs_the_continuation(
    store: JobStore,
) -> None:
    group = await start_group(
        store, effects(3), then=Call("effect", {"work_s": 0}), on_child_failure="fail"
    )
    claimed = await claim_all(store)
    bad = group.member_ids[1]
    await end(store, claimed[bad], dead=True)
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.FAILED  # at once, while the others run
    assert read.failed is not None
    assert (read.failed.member_id, read.failed.state) == (bad, "dead")
    assert (read.failed.error_type, read.failed.message) == ("ValueError", "bad chunk")
    for job_id in (group.member_ids[0], group.member_ids[2]):
        await end(store, claimed[job_id], result="ok")
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.FAILED
    assert read.counts.model_dump() == {"pending": 0, "complete": 2, "dead": 1, "cancelled": 0}
    assert not await store.redis.exists(f"arq:job:{group.continuation_ids[0]}")


async def test_requeuing_the_dead_member_reopens_a_failed_group(store: JobStore) -> None:
    group = await start_group(store, effects(2), then=Call("effect", {"work_s": 0}))
    claimed = await claim_all(store)
    await end(store, claimed[group.member_ids[0]], dead=True)
    await end(store, claimed[group.member_ids[1]], result="ok")

    action = await requeue_group(store, group.id)
    assert action is not None
    assert (action.state, action.done) == (GroupState.RUNNING, 1)
    read = await read_group(store, group.id)
    assert read is not None
    assert read.failed is None
    assert (read.counts.pending, read.counts.dead) == (1, 0)

    (again,) = (await store.claim(QUEUE, 5, **CLAIM)).jobs
    assert again.job_id == group.member_ids[0]
    await end(store, again, result="healed")
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.DONE
    ctx = await continuation_context(store, group.continuation_ids[0])
    assert await ctx.group_results() == ["healed", "ok"]


async def test_policy_run_lists_failures_in_place(store: JobStore) -> None:
    group = await start_group(
        store, effects(3), then=Call("effect", {"work_s": 0}), on_child_failure="run"
    )
    claimed = await claim_all(store)
    await end(store, claimed[group.member_ids[0]], result=0)
    await end(store, claimed[group.member_ids[1]], dead=True)
    await store.cancel(group.member_ids[2])  # running: asked to stop
    assert (await store.cancelled(EFFECT, group.member_ids[2])).moved
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.DONE
    assert (read.counts.dead, read.counts.cancelled) == (1, 1)
    ctx = await continuation_context(store, group.continuation_ids[0])
    first, dead, cancelled = await ctx.group_results()
    assert first == 0
    assert dead == ChildFailure(group.member_ids[1], 1, "dead", "ValueError", "bad chunk")
    assert isinstance(cancelled, ChildFailure)
    assert (cancelled.index, cancelled.state) == (2, "cancelled")


async def test_policy_ignore_leaves_failures_out(store: JobStore) -> None:
    group = await start_group(
        store, effects(3), then=Call("effect", {"work_s": 0}), on_child_failure="ignore"
    )
    claimed = await claim_all(store)
    for i, job_id in enumerate(group.member_ids):
        await end(store, claimed[job_id], result=i, dead=i == 1)
    ctx = await continuation_context(store, group.continuation_ids[0])
    assert await ctx.group_results() == [0, 2]


async def test_a_requeued_member_of_a_finished_group_runs_on_its_own(store: JobStore) -> None:
    group = await start_group(
        store, effects(2), then=Call("effect", {"work_s": 0}), on_child_failure="run"
    )
    claimed = await claim_all(store)
    await end(store, claimed[group.member_ids[0]], dead=True)
    await end(store, claimed[group.member_ids[1]], result="ok")
    then_id = group.continuation_ids[0]
    assert await store.redis.zscore(QUEUE, then_id) is not None

    outcome, _ = await store.requeue(group.member_ids[0], {})
    assert outcome == "requeued"
    claimed = await claim_all(store)
    await end(store, claimed[group.member_ids[0]], result="again")
    read = await read_group(store, group.id)
    assert read is not None
    # Counted once only: the group stays done, its counts as they were.
    assert read.state is GroupState.DONE
    assert read.counts.model_dump() == {"pending": 0, "complete": 1, "dead": 1, "cancelled": 0}
    # The continuation (claimed, so still in arq's queue) is there once, as it was.
    assert await store.redis.zrange(QUEUE, 0, -1) == [then_id.encode()]
    assert (await store.get(then_id)).state is JobState.IN_PROGRESS  # type: ignore[union-attr]


async def test_cancel_acts_on_the_whole_group(store: JobStore) -> None:
    group = await start_group(store, effects(4), then=Call("effect", {"work_s": 0}))
    running = (await store.claim(QUEUE, 1, **CLAIM)).jobs[0]
    await end(store, running, result="done first")

    action = await cancel_group(store, group.id)
    assert action is not None
    assert (action.state, action.done) == (GroupState.RUNNING, 3)
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.CANCELLED
    assert read.counts.model_dump() == {"pending": 0, "complete": 1, "dead": 0, "cancelled": 3}
    assert not await store.redis.exists(f"arq:job:{group.continuation_ids[0]}")
    assert await store.redis.zcard(QUEUE) == 0
    for job_id in group.member_ids:
        job = await store.get(job_id)
        assert job is not None
        assert job.state in (JobState.COMPLETE, JobState.CANCELLED)


async def test_a_batch_calls_back_on_complete_always_and_on_success_only_without_failures(
    store: JobStore,
) -> None:
    async def run_batch(fail: bool) -> tuple[bool, bool]:
        batch = await start_group(
            store,
            effects(3),
            then=Call("effect", {"work_s": 1}),
            on_success=Call("effect", {"work_s": 2}),
            on_child_failure="run",
            kind="batch",
        )
        claimed = await claim_all(store)
        for i, job_id in enumerate(batch.member_ids):
            await end(store, claimed[job_id], result=i, dead=fail and i == 0)
        complete_id, success_id = batch.continuation_ids
        read = await read_group(store, batch.id)
        assert read is not None
        assert (read.kind, read.state) == ("batch", GroupState.DONE)
        on_complete = bool(await store.redis.exists(f"arq:job:{complete_id}"))
        on_success = bool(await store.redis.exists(f"arq:job:{success_id}"))
        await store.redis.delete(QUEUE)
        return on_complete, on_success

    assert await run_batch(fail=False) == (True, True)
    assert await run_batch(fail=True) == (True, False)


async def test_a_job_starts_a_group_and_its_next_try_resumes_it(store: JobStore) -> None:
    ctx = JobContext("parent-job", 1, EFFECT, store, CATALOG)
    first = await ctx.group(
        [("effect", {"work_s": i}) for i in range(3)], then=("effect", {"work_s": 9})
    )
    assert first.created
    # The members carry the parent; the parent's record lists the group.
    raw = await store.redis.get(f"arq:job:{first.member_ids[0]}")
    assert raw is not None
    member = ArqJob.decode(raw)
    assert member is not None
    assert member.meta["parent_id"] == "parent-job"

    claimed = await claim_all(store)
    await end(store, claimed[first.member_ids[0]], result="kept")
    # A job that starts a group lists it (here a member's, once it ran).
    nested = await (await context_of(store, first.member_ids[1])).group(effects(2))
    starter = await store.get(first.member_ids[1])
    assert starter is not None
    assert starter.groups == [nested.id]

    retry = JobContext("parent-job", 2, EFFECT, store, CATALOG)
    again = await retry.group(
        [("effect", {"work_s": i}) for i in range(3)], then=("effect", {"work_s": 9})
    )
    assert (again.id, again.created) == (first.id, False)
    # The finished member and the running ones are not submitted twice.
    assert not await store.redis.exists(f"arq:job:{first.member_ids[0]}")
    assert await store.redis.zcard(QUEUE) == 4  # two running, the nested group's two
    assert await store.redis.hget(keys.group_key(first.id), "remaining") == b"2"  # type: ignore[misc]


async def test_an_empty_group_runs_its_continuation_at_once(store: JobStore) -> None:
    group = await start_group(store, [], then=Call("effect", {"work_s": 0}))
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state is GroupState.DONE
    ctx = await continuation_context(store, group.continuation_ids[0])
    assert await ctx.group_results() == []


async def test_nothing_is_written_for_an_invalid_member(store: JobStore) -> None:
    with pytest.raises(GroupError) as caught:
        await start_group(store, [*effects(3), Call("effect", {"work_s": -1})])
    assert caught.value.field == "children[3].payload"
    with pytest.raises(GroupError) as caught:
        await start_group(store, effects(1), then=Call("no_such_type", {}))
    assert caught.value.field == "then.job_type"
    assert await store.redis.dbsize() == 0


async def test_a_job_of_no_group_has_no_group_results(store: JobStore) -> None:
    ctx = JobContext("plain-job", 1, EFFECT, store, CATALOG)
    with pytest.raises(NotAContinuationError):
        await ctx.group_results()


async def _commands(redis: ArqRedis) -> int:
    """Commands the server ran (scripts' own commands included), bar INFO itself."""
    stats = await redis.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config")
    )


async def test_fan_in_costs_at_most_two_commands_per_member(own_redis: RedisProcess) -> None:
    """Ending 1,000 members and reading their results against ending 1,000
    plain jobs: the group's own cost is its counting and its reads."""
    redis = create_redis(RedisSettings(url=own_redis.url))
    store = JobStore(redis, CATALOG)
    try:
        plain = [(await enqueue(store, EFFECT, jobs.Effect(work_s=0))).job_id for _ in range(1000)]
        claimed = await claim_all(store)
        await redis.config_resetstat()
        for job_id in plain:
            await end(store, claimed[job_id], result=job_id)
        plain_cost = await _commands(redis)

        group = await start_group(store, effects(1000), then=Call("effect", {"work_s": 0}))
        claimed = await claim_all(store)
        await redis.config_resetstat()
        for job_id in group.member_ids:
            await end(store, claimed[job_id], result=job_id)
        ctx = await continuation_context(store, group.continuation_ids[0])
        assert len(await ctx.group_results()) == 1000
        group_cost = await _commands(redis)
    finally:
        await redis.aclose()
    # Two per member (its count, its change notice), one MGET per 500 results
    # read, and a few per group (the continuation's start and its own read).
    assert group_cost - plain_cost <= 2 * 1000 + 2 + PER_GROUP_COMMANDS


async def context_of(store: JobStore, job_id: str) -> JobContext:
    """A try's context for a waiting job (a member or a continuation)."""
    return await continuation_context(store, job_id)


async def test_a_child_hands_its_place_over_to_the_group_it_starts(store: JobStore) -> None:
    outer = await start_group(store, effects(2), then=Call("effect", {"work_s": 0}))
    first, second = outer.member_ids
    ctx = await context_of(store, first)
    inner = await ctx.group(effects(2), then=Call("effect", {"work_s": 1}), hand_over=True)
    inner_then = inner.continuation_ids[0]
    claimed = await claim_all(store)
    await end(store, claimed[first], result="handed over")
    await end(store, claimed[second], result="second")
    read = await read_group(store, outer.id)
    assert read is not None
    # The first place waits for the inner group's continuation.
    assert (read.state, read.counts.pending, read.handed) == (
        GroupState.RUNNING,
        1,
        {0: inner_then},
    )

    for job_id in inner.member_ids:
        await end(store, claimed[job_id], result=job_id)
    (cont,) = (await store.claim(QUEUE, 10, **CLAIM)).jobs
    assert cont.job_id == inner_then
    assert not await store.redis.exists(f"arq:job:{outer.continuation_ids[0]}")
    await end(store, cont, result="inner summary")

    read = await read_group(store, outer.id)
    assert read is not None
    assert read.state is GroupState.DONE
    assert read.counts.model_dump() == {"pending": 0, "complete": 3, "dead": 0, "cancelled": 0}
    then = await continuation_context(store, outer.continuation_ids[0])
    assert await then.group_results() == ["inner summary", "second"]


async def test_a_failed_inner_group_fails_the_place_until_it_is_requeued(store: JobStore) -> None:
    outer = await start_group(store, effects(1), then=Call("effect", {"work_s": 0}))
    (place,) = outer.member_ids
    ctx = await context_of(store, place)
    inner = await ctx.group(effects(2), then=Call("effect", {"work_s": 1}), hand_over=True)
    claimed = await claim_all(store)
    await end(store, claimed[place], result="handed over")
    await end(store, claimed[inner.member_ids[0]], dead=True)
    await end(store, claimed[inner.member_ids[1]], result="ok")

    read = await read_group(store, outer.id)
    assert read is not None
    assert read.state is GroupState.FAILED
    assert read.failed is not None
    assert (read.failed.member_id, read.failed.error_type) == (place, "GroupFailed")

    # Requeuing the inner group's dead child re-opens both groups.
    action = await requeue_group(store, inner.id)
    assert action is not None
    assert action.state is GroupState.RUNNING
    read = await read_group(store, outer.id)
    assert read is not None
    assert (read.state, read.counts.pending, read.failed) == (GroupState.RUNNING, 1, None)
    (again,) = (await store.claim(QUEUE, 10, **CLAIM)).jobs
    await end(store, again, result="healed")
    (cont,) = [c for c in (await store.claim(QUEUE, 10, **CLAIM)).jobs]
    assert cont.job_id == inner.continuation_ids[0]
    await end(store, cont, result="inner done")
    read = await read_group(store, outer.id)
    assert read is not None
    assert read.state is GroupState.DONE
    then = await continuation_context(store, outer.continuation_ids[0])
    assert await then.group_results() == ["inner done"]


async def test_a_continuation_passes_the_place_on_down_a_chain(store: JobStore) -> None:
    outer = await start_group(store, effects(1), then=Call("effect", {"work_s": 0}))
    (place,) = outer.member_ids
    step_one = await (await context_of(store, place)).group(
        effects(1), then=Call("effect", {"work_s": 1}), hand_over=True
    )
    claimed = await claim_all(store)
    await end(store, claimed[place], result="handed over")
    await end(store, claimed[step_one.member_ids[0]], result="a")
    # The continuation holds the place, and hands it on to the next step.
    step_two = await (await context_of(store, step_one.continuation_ids[0])).group(
        effects(1), then=Call("effect", {"work_s": 2}), hand_over=True
    )
    claimed = await claim_all(store)
    await end(store, claimed[step_one.continuation_ids[0]], result="step one")
    await end(store, claimed[step_two.member_ids[0]], result="b")
    read = await read_group(store, outer.id)
    assert read is not None
    assert read.state is GroupState.RUNNING
    (last,) = (await store.claim(QUEUE, 10, **CLAIM)).jobs
    assert last.job_id == step_two.continuation_ids[0]
    await end(store, last, result="step two")
    read = await read_group(store, outer.id)
    assert read is not None
    assert (read.state, read.counts.complete) == (GroupState.DONE, 3)
    then = await continuation_context(store, outer.continuation_ids[0])
    assert await then.group_results() == ["step two"]


async def test_only_a_job_with_a_place_hands_it_over(store: JobStore) -> None:
    ctx = JobContext("plain-job", 1, EFFECT, store, CATALOG)
    with pytest.raises(GroupError) as caught:
        await ctx.group(effects(1), then=Call("effect", {"work_s": 0}), hand_over=True)
    assert caught.value.field == "hand_over"


async def test_cancel_and_requeue_reach_the_groups_places_were_handed_to(store: JobStore) -> None:
    outer = await start_group(store, effects(1), then=Call("effect", {"work_s": 0}))
    (place,) = outer.member_ids
    inner = await (await context_of(store, place)).group(
        effects(2), then=Call("effect", {"work_s": 1}), hand_over=True
    )
    claimed = await claim_all(store)
    await end(store, claimed[place], result="handed over")
    await end(store, claimed[inner.member_ids[0]], dead=True)

    # Requeue from the top: the inner group's dead child goes back.
    action = await requeue_group(store, outer.id)
    assert action is not None
    assert action.done == 1
    assert (await store.get(inner.member_ids[0])).state is JobState.QUEUED  # type: ignore[union-attr]

    action = await cancel_group(store, outer.id)
    assert action is not None
    assert action.done == 2  # the inner group's two children: one waiting, one running
    # The running one's worker hears the cancel and ends it: both groups finish.
    assert (await store.cancelled(EFFECT, inner.member_ids[1])).moved
    for group_id in (outer.id, inner.id):
        read = await read_group(store, group_id)
        assert read is not None
        assert (read.state, read.counts.pending) == (GroupState.CANCELLED, 0)


async def test_a_creation_cut_short_is_completed_by_a_resubmit_under_its_id(
    store: JobStore,
) -> None:
    """A fault between chunks leaves a group with some members: starting it
    again under its id submits the rest, and each member is counted once."""
    seed = keyed_group_id("ci/batch", "run-7")
    children = effects(GROUP_CHUNK_MAX + 10)
    first = await start_group(store, children[:GROUP_CHUNK_MAX], group_id=seed)
    # On a cluster the id carries the tag of its members' queue shard, the same
    # every time; on one node it keeps its untagged shape.
    group_id = first.id
    assert group_id == (f"{{{QUEUE}}}{seed}" if store.one_slot_per_call else seed)
    # As if the request had died after its first chunk: the hash counts all.
    size = str(len(children))
    await store.redis.hset(keys.group_key(group_id), mapping={"total": size, "remaining": size})  # type: ignore[misc]
    assert first.created

    again = await start_group(store, children, group_id=seed)
    assert (again.id, again.created) == (group_id, False)
    assert await store.redis.zcard(QUEUE) == len(children)
    claimed = await claim_all(store)
    for job_id in again.member_ids:
        await end(store, claimed[job_id], result=None)
    read = await read_group(store, group_id)
    assert read is not None
    assert (read.state, read.counts.complete) == (GroupState.DONE, len(children))


async def test_limited_members_and_continuations_are_held_by_their_limits(
    store: JobStore,
) -> None:
    """Members and continuations of limited types get their flow entries, as a
    submit would give them: `capped` runs two at a time, `per_tenant` one per
    tenant."""
    capped = CATALOG["capped"]
    group = await start_group(
        store,
        [Call("capped", {"work_s": 0}) for _ in range(3)],
        then=Call("per_tenant", {"tenant_id": "acme", "work_s": 0}),
    )
    claimed = {c.job_id: c for c in (await store.claim(capped.queue, 10, **CLAIM)).jobs}
    assert len(claimed) == 2  # the third waits for a running one to end
    for job_id, c in claimed.items():
        assert (await store.complete(capped, job_id, "null", token=c.token)).moved
    (third,) = (await store.claim(capped.queue, 10, **CLAIM)).jobs
    assert (await store.complete(capped, third.job_id, "null", token=third.token)).moved

    then_id = group.continuation_ids[0]
    flow = await store.redis.hget(keys.queue_key(capped.queue, keys.FLOW_SUFFIX), then_id)  # type: ignore[misc]
    assert flow == b"per_tenant\nacme"
    (cont,) = (await store.claim(capped.queue, 10, **CLAIM)).jobs
    assert cont.job_id == then_id


async def test_a_retry_is_not_an_end_only_the_final_one_counts(store: JobStore) -> None:
    group = await start_group(store, effects(1), then=Call("effect", {"work_s": 0}))
    (member,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    retried = await store.retry_later(EFFECT, member.job_id, 0, ERROR, token=member.token)
    assert retried.moved
    read = await read_group(store, group.id)
    assert read is not None
    assert (read.state, read.counts.pending, read.counts.dead) == (GroupState.RUNNING, 1, 0)

    (again,) = (await store.claim(QUEUE, 1, **CLAIM)).jobs
    assert (again.job_id, again.job_try) == (member.job_id, 2)
    await end(store, again, result="second try")
    read = await read_group(store, group.id)
    assert read is not None
    assert (read.state, read.counts.complete) == (GroupState.DONE, 1)


# A queue in another slot than QUEUE's, for continuations and members of another queue.
ELSEWHERE = "elsewhere-0" if key_slot(b"elsewhere-0") != key_slot(QUEUE.encode()) else "elsewhere-1"
CATALOG_X = Catalog([*CATALOG, replace(EFFECT, name="effect_elsewhere", queue=ELSEWHERE)])


@pytest.fixture
def store_x(node_or_cluster_redis: ArqRedis) -> JobStore:
    """As `store`, with a job type of another queue (another slot on a cluster)."""
    return JobStore(node_or_cluster_redis, CATALOG_X)


async def test_ids_carry_the_members_shard_tag() -> None:
    seed = derived_group_id("job-1", 0)
    group_id = placed(seed, [QUEUE])
    assert group_id == f"{{{QUEUE}}}{seed}" == placed(group_id, ["other"])
    assert is_group_id(group_id)
    assert shard_of_group(group_id) == QUEUE
    assert keys.queue_of(member_id(group_id, 3)) == QUEUE
    assert group_of(member_id(group_id, 3)) == (group_id, 3)
    # A continuation of its group's shard, and one of another: its own tag first.
    assert continuation_id(group_id, "then", QUEUE) == f"{group_id}.then"
    other = continuation_id(group_id, "then", ELSEWHERE)
    assert other == f"{{{ELSEWHERE}}}{group_id}.then"
    assert keys.queue_of(other) == ELSEWHERE
    assert continued_by(other) == group_id
    assert continuation_of(continuation_id(group_id, "success", ELSEWHERE)) == group_id
    assert group_of(other) is None
    assert re.fullmatch(JOB_ID_PATTERN, other)
    # Untagged ids (members of several queues, or groups from before tags) still read.
    assert group_of(member_id(seed, 2)) == (seed, 2)
    assert continued_by(f"{seed}.then") == seed
    assert placed(seed, None) == seed


async def test_a_continuation_of_another_slot_starts_once_through_the_outbox(
    store_x: JobStore,
) -> None:
    """On a cluster the last member's end puts a continuation of another slot
    in its shard's outbox, and a drain starts it in its own; a drain again
    (as if the first taker died before it removed the entry) starts nothing.
    On one node it is started in the member's own script."""
    store = store_x
    group = await start_group(store, effects(3), then=Call("effect_elsewhere", {"work_s": 1}))
    (then_id,) = group.continuation_ids
    # Its id names its own queue on a cluster (it has no tag on one node).
    assert keys.queue_of(then_id) == (ELSEWHERE if store.one_slot_per_call else None)
    claimed = await claim_all(store)
    for job_id in group.member_ids:
        await end(store, claimed[job_id], result=job_id)
    outbox = keys.outbox_key(QUEUE)
    redis = store.redis
    if store.one_slot_per_call:
        assert await redis.zscore(ELSEWHERE, then_id) is None
        entry = (await redis.zrange(outbox, 0, -1))[0]
        assert await store.drain_outbox(QUEUE) == 1
        await redis.zadd(outbox, {entry: 0})  # left behind by a taker that died
        assert await store.drain_outbox(QUEUE) == 0
    assert await redis.zcard(outbox) == 0
    assert await redis.zscore(ELSEWHERE, then_id) is not None
    # It reads its group's results, in order, from the members' slot.
    context = await continuation_context(store, then_id)
    assert await context.group_results() == group.member_ids
    # Its end (in its own slot) counts nowhere: it holds no place.
    (cont,) = (await store.claim(ELSEWHERE, 10, **CLAIM)).jobs
    ended = await store.complete(
        CATALOG_X["effect_elsewhere"], cont.job_id, "null", token=cont.token
    )
    assert ended.moved
    assert await store.drain_outbox(QUEUE) == 0
    read = await read_group(store, group.id)
    assert read is not None
    assert read.state == GroupState.DONE


async def test_a_cancel_while_a_drain_starts_a_continuation_cancels_it(
    cluster_redis: ClusterClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain took a continuation from its outbox, and the group is cancelled
    before the drain starts it (the cancel finds nothing to cancel yet): the
    drain sees the cancel after the start, and cancels what it started."""
    store = JobStore(cast(ArqRedis, cluster_redis), CATALOG_X)
    group = await start_group(store, effects(1), then=Call("effect_elsewhere", {"work_s": 1}))
    (member,) = (await claim_all(store)).values()
    await end(store, member, result=1)
    start = store._group_continue

    async def cancelled_first(**call: Any) -> Any:
        assert await cancel_group(store, group.id) is not None  # between take and start
        return await start(**call)

    monkeypatch.setattr(store, "_group_continue", cancelled_first)
    assert await store.drain_outbox(QUEUE) == 1
    (then_id,) = group.continuation_ids
    read = await store.get(then_id)
    assert read is not None
    assert read.state == JobState.CANCELLED
    assert await store.redis.zscore(ELSEWHERE, then_id) is None
    assert await store.redis.zcard(keys.outbox_key(QUEUE)) == 0


async def test_a_cancelled_group_leaves_no_continuation_in_the_outbox(store_x: JobStore) -> None:
    store = store_x
    group = await start_group(store, effects(1), then=Call("effect_elsewhere", {"work_s": 1}))
    (member,) = (await claim_all(store)).values()
    await end(store, member, result=1)
    assert await cancel_group(store, group.id) is not None
    await store.drain_outbox(QUEUE)
    assert await store.redis.zcard(keys.outbox_key(QUEUE)) == 0
    (then_id,) = group.continuation_ids
    if store.one_slot_per_call:  # never started
        assert await store.redis.zscore(ELSEWHERE, then_id) is None
    else:  # started by the member's end, then cancelled with its group
        read = await store.get(then_id)
        assert read is not None
        assert read.state == JobState.CANCELLED


async def test_members_of_several_queues_are_one_nodes_only(store_x: JobStore) -> None:
    children = [Call("effect", {"work_s": 0}), Call("effect_elsewhere", {"work_s": 1})]
    if store_x.one_slot_per_call:
        with pytest.raises(GroupError) as refused:
            await start_group(store_x, children, then=Call("effect", {"work_s": 2}))
        assert refused.value.field == "children[1].job_type"
        assert await store_x.redis.zcard(QUEUE) == 0
        return
    group = await start_group(store_x, children, then=Call("effect", {"work_s": 2}))
    assert shard_of_group(group.id) is None  # untagged: its members are in two queues
    first = (await store_x.claim(QUEUE, 10, **CLAIM)).jobs
    second = (await store_x.claim(ELSEWHERE, 10, **CLAIM)).jobs
    assert [c.job_id for c in [*first, *second]] == group.member_ids
    for c, job_type in [(c, EFFECT) for c in first] + [
        (c, CATALOG_X["effect_elsewhere"]) for c in second
    ]:
        assert (await store_x.complete(job_type, c.job_id, '"ok"', token=c.token)).moved
    (then_id,) = group.continuation_ids
    assert await store_x.redis.zscore(QUEUE, then_id) is not None


async def test_a_hand_over_joins_the_outer_groups_shard(store_x: JobStore) -> None:
    """On a cluster a group that takes a place over lives in the outer group's
    shard, so the place counts in one call, and one whose members are of
    another queue is refused, naming `hand_over`; on one node either runs."""
    outer = await start_group(store_x, effects(1), then=Call("effect", {"work_s": 0}))
    ctx = await context_of(store_x, outer.member_ids[0])
    inner = await ctx.group(effects(2), then=Call("effect", {"work_s": 1}), hand_over=True)
    elsewhere = [Call("effect_elsewhere", {"work_s": 0})]
    if store_x.one_slot_per_call:
        assert shard_of_group(inner.id) == shard_of_group(outer.id) == QUEUE
        with pytest.raises(GroupError) as refused:
            await ctx.group(elsewhere, then=Call("effect", {"work_s": 1}), hand_over=True)
        assert refused.value.field == "hand_over"
    else:
        assert shard_of_group(inner.id) is shard_of_group(outer.id) is None
        other = await ctx.group(elsewhere, then=Call("effect", {"work_s": 1}), hand_over=True)
        assert other.created


async def test_requeue_and_cancel_reach_a_continuation_of_another_slot(store_x: JobStore) -> None:
    """A whole group's requeue and cancel act on a continuation in its own
    queue's slot (one bulk call there), and its end or requeue touches no
    key of its group's slot."""
    store = store_x
    elsewhere = CATALOG_X["effect_elsewhere"]
    group = await start_group(
        store, effects(2), then=Call("effect_elsewhere", {"work_s": 0}), on_child_failure="run"
    )
    for member in (await claim_all(store)).values():
        await end(store, member, result=1)
    await store.drain_outbox(QUEUE)  # on one node, nothing is there
    (cont,) = (await store.claim(ELSEWHERE, 10, **CLAIM)).jobs
    assert (await store.dead(elsewhere, cont.job_id, ERROR, token=cont.token)).moved

    requeued = await requeue_group(store, group.id)
    assert requeued is not None
    assert requeued.done == 1
    assert await store.redis.zscore(ELSEWHERE, cont.job_id) is not None
    cancelled = await cancel_group(store, group.id)
    assert cancelled is not None
    assert cancelled.done == 1
    read = await store.get(cont.job_id)
    assert read is not None
    assert read.state == JobState.CANCELLED
