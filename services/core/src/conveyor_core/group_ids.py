"""Group ids and the job ids they give their members (groups.py): the id
says a job's group and its place, so the Lua that ends a job
(lua/lib/group.lua) and every reader tell a member from its id alone.

On a Redis Cluster a group's id is `{shard}g` and 32 hex digits: the hash
tag of the queue shard its members go to (keys.job_id_for), so its hash
(`conveyor:group:{shard}g...`), its members and their keys share one slot.
Its member at index n is `{group id}.{n}`; its continuations are
`{group id}.then` and `{group id}.success` when they join the same shard,
and carry their own shard's tag first otherwise (`{other}{shard}g....then`):
a job id's first tag always names the shard its keys live in. No other job
id has that shape: random ids are `{shard}` and hex, a scheduled run's
`{shard}{job type}:{ms}`.

On one node a group's id is untagged, `g` and 32 hex digits, and so are its
members' and continuations' (groups.py, `placed_group_id`, says why); every
reader, and the scripts, take both shapes.
"""

import hashlib
import zlib
from uuid import uuid4

_HEX_CHARS = 32  # after the "g"


def member_id(group_id: str, index: int) -> str:
    """The id of a group's member at `index` (lua/lib/group.lua reads it back)."""
    return f"{group_id}.{index}"


def continuation_id(group_id: str, role: str, shard: str) -> str:
    """The id of a group's continuation (`role`: "then" or "success") that
    joins queue shard `shard`: the group's own tag when it is the same shard
    (or the group has none), else that shard's tag first."""
    tag = shard_of_group(group_id)
    prefix = "" if tag is None or tag == shard else f"{{{shard}}}"
    return f"{prefix}{group_id}.{role}"


def _own(job_id: str) -> str:
    """`job_id` without a continuation's own tag (`{other}{shard}g...`)."""
    if (
        job_id.startswith("{")
        and (end := job_id.find("}")) > 0
        and job_id[end + 1 : end + 2] == "{"
    ):
        return job_id[end + 1 :]
    return job_id


def group_of(job_id: str) -> tuple[str, int] | None:
    """(group id, index) of a member's id; None for a job of no group."""
    group_id, dot, index = job_id.rpartition(".")
    if not dot or not index.isdigit() or not is_group_id(group_id):
        return None
    return group_id, int(index)


def continued_by(job_id: str) -> str | None:
    """The group whose `then` continuation `job_id` is, or None."""
    group_id, _, role = _own(job_id).rpartition(".")
    return group_id if role == "then" and is_group_id(group_id) else None


def continuation_of(job_id: str) -> str | None:
    """The group whose continuation (`then` or `success`) `job_id` is, or None."""
    group_id, _, role = _own(job_id).rpartition(".")
    return group_id if role in ("then", "success") and is_group_id(group_id) else None


def shard_of_group(group_id: str) -> str | None:
    """The queue shard a group id's tag names; None for an untagged id."""
    if not group_id.startswith("{"):
        return None
    end = group_id.find("}")
    return group_id[1:end] if end > 1 else None


def is_group_id(value: str) -> bool:
    tag_end = value.find("}") + 1 if value.startswith("{") else 0
    if value.startswith("{") and tag_end <= 2:
        return False
    body = value[tag_end:]
    return (
        len(body) == _HEX_CHARS + 1
        and body[0] == "g"
        and all(c in "0123456789abcdef" for c in body[1:])
    )


def new_group_id() -> str:
    """An untagged id; on a cluster `placed` tags it with its members' shard."""
    return "g" + uuid4().hex


def placed(group_id: str, shards: list[str] | None) -> str:
    """`group_id` (untagged) tagged with one of a queue's `shards`, the same
    one for the same id (a resubmit or a retried try finds its group), or
    left untagged when `shards` is None (members of several queues). An id
    that is tagged already is kept."""
    if shards is None or shard_of_group(group_id) is not None:
        return group_id
    shard = shards[zlib.crc32(group_id.encode()) % len(shards)]
    return f"{{{shard}}}{group_id}"


def keyed_group_id(scope: str, key: str) -> str:
    """The (untagged) id of the group a client starts under an idempotency
    key, per scope (its api key's name and the route): a resubmit finds the
    same group."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    return "g" + digest[:32]


def derived_group_id(job_id: str, ordinal: int) -> str:
    """The (untagged) id of the `ordinal`-th group a job's try starts: the
    same on every try, so a try run again resumes the group instead of
    starting another."""
    digest = hashlib.sha256(f"{job_id}\n{ordinal}".encode()).hexdigest()
    return "g" + digest[:32]
