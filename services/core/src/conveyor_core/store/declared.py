"""What a script call declares in KEYS beyond the keys its script reads there.

Every key a script touches is passed in KEYS, so a server that refuses
undeclared keys (Dragonfly's default) runs it. A script often builds a key's
name itself (lua/lib/keys.lua, `K.job .. id`): the caller passes the same
name too, and tests/core/test_script_keys.py proves, on a real Redis, that
each call's keys touched are declared, except those written there with the
reason the caller cannot know them (the ids a claim pops, a job's fairness
key read from its record...).
"""

from collections.abc import Iterable

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix

from conveyor_core import keys
from conveyor_core.catalog import JobType
from conveyor_core.group_ids import continuation_id, group_of, is_group_id, shard_of_group
from conveyor_core.jobs import JobState

# The index an end of a try moves a job to (a queued job has none: arq's queue holds it).
INDEX_AFTER = {"snoozed": JobState.RETRYING.value, **{s: s for s in keys.INDEXED_STATES}}


# A group's continuations, by their role (group_ids.continuation_id).
ROLES = ("then", "success")


def own_keys(job_id: str) -> list[str]:
    """A job's own keys, which a script about the job declares: its record
    and arq's job key, lock and result key, and the hash of the group it
    counts in (`group_keys`)."""
    return [
        keys.job_key(job_id),
        job_key_prefix + job_id,
        in_progress_key_prefix + job_id,
        result_key_prefix + job_id,
        *group_keys(job_id),
    ]


def group_keys(job_id: str) -> list[str]:
    """The group keys a job's end or requeue may touch, known from its id
    (lib/group.lua): a member's group hash and what the last member's end
    starts there, its continuations' arq job keys in the group's slot and
    (a cluster's tagged group) its shard's outbox for those of another; a
    `then` continuation in its group's slot, its group's hash (which says
    whether it holds a place in an outer group; one of another shard,
    `{other}{shard}g....then`, holds none and reads no group). None for a
    job of no group."""
    member = group_of(job_id)
    if member is not None:
        group_id = member[0]
        shard = shard_of_group(group_id)
        return [
            keys.group_key(group_id),
            *(job_key_prefix + continuation_id(group_id, role, shard or "") for role in ROLES),
            *([keys.outbox_key(shard)] if shard is not None else []),
        ]
    group_id, _, role = job_id.rpartition(".")
    return [keys.group_key(group_id)] if role == "then" and is_group_id(group_id) else []


def flow_keys(queue: str, job_type: JobType) -> list[str]:
    """The keys of a limited job type's that its job's end may touch (running
    count, hold, ring of keys) and the queue's marks' flag (the end drops it
    with the last mark); none for a type with no limits. Those of the job's
    fairness key are the payload's, which the end of a try is not given."""
    if job_type.limits is None:
        return []
    name = job_type.name
    return [
        keys.running_count_key(queue, name),
        keys.hold_key(queue, name),
        keys.ring_key(queue, name),
        keys.marked_key(queue),
    ]


def fairness_keys(queue: str, flow: str) -> list[str]:
    """A keyed job's own queue and its type's ring of keys (fair_enter), from its flow entry."""
    job_type, _, key = flow.partition("\n")
    return [keys.key_queue_key(queue, job_type, key), keys.ring_key(queue, job_type)] if key else []


def queue_moves(queue: str) -> list[str]:
    """The queue's keys a script that moves a job from the state its record
    holds (read in the call) may touch: its flow hash, the holds the claim
    marked, and every index."""
    return [
        keys.queue_key(queue, keys.FLOW_SUFFIX),
        keys.queue_key(queue, keys.HELD_SUFFIX),
        *keys.index_keys(queue),
    ]


def limited_keys(queue: str, job_types: Iterable[JobType]) -> list[str]:
    """`flow_keys` of every limited type of a queue shard's (each key once):
    what a call that finds a job's type in its record (settle, bulk) may touch of it."""
    return list(dict.fromkeys(key for job_type in job_types for key in flow_keys(queue, job_type)))


def claim_keys(queue: str, job_types: Iterable[JobType]) -> list[str]:
    """What a claim of a queue shard may touch beyond its queue, paused flag,
    flow and waiting hashes, that its caller knows from the catalog: the
    indexes (a start leaves retrying for in_progress; a job whose worker died
    with a cancel pending is cancelled), and with limited types the marks'
    flag, when it last looked for lapsed locks, and each limited type's
    running count, start log, hold and ring. The claimed jobs' own keys and
    their fairness keys' are found in the call."""
    limited = [t.name for t in job_types if t.limits is not None]
    per_type = [
        key
        for name in limited
        for key in (
            keys.running_count_key(queue, name),
            keys.start_log_key(queue, name),
            keys.hold_key(queue, name),
            keys.ring_key(queue, name),
        )
    ]
    flags = [keys.marked_key(queue), keys.running_checked_key(queue)] if limited else []
    return [*keys.index_keys(queue), *flags, *per_type]
