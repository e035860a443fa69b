"""Group ids and the job ids they give their members (groups.py): the id
says a job's group and its place, so the Lua that ends a job
(lua/lib/group.lua) and every reader tell a member from its id alone.

A group's id is `g` and 32 hex digits; its member at index n is
`{group id}.{n}`, its continuations `{group id}.then` and `{group id}.success`.
No other job id has that shape: random ids are hex, a scheduled run's is
`{job type}:{ms}`.
"""

import hashlib
from uuid import uuid4

_GROUP_ID_CHARS = 33  # "g" and 32 hex digits


def member_id(group_id: str, index: int) -> str:
    """The id of a group's member at `index` (lua/lib/group.lua reads it back)."""
    return f"{group_id}.{index}"


def group_of(job_id: str) -> tuple[str, int] | None:
    """(group id, index) of a member's id; None for a job of no group."""
    group_id, dot, index = job_id.rpartition(".")
    if not dot or not index.isdigit() or not is_group_id(group_id):
        return None
    return group_id, int(index)


def continued_by(job_id: str) -> str | None:
    """The group whose `then` continuation `job_id` is, or None."""
    group_id, _, role = job_id.rpartition(".")
    return group_id if role == "then" and is_group_id(group_id) else None


def is_group_id(value: str) -> bool:
    return (
        len(value) == _GROUP_ID_CHARS
        and value[0] == "g"
        and all(c in "0123456789abcdef" for c in value[1:])
    )


def new_group_id() -> str:
    return "g" + uuid4().hex


def keyed_group_id(scope: str, key: str) -> str:
    """The id of the group a client starts under an idempotency key, per scope
    (its api key's name and the route): a resubmit finds the same group."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    return "g" + digest[:32]


def derived_group_id(job_id: str, ordinal: int) -> str:
    """The id of the `ordinal`-th group a job's try starts: the same on every
    try, so a try run again resumes the group instead of starting another."""
    digest = hashlib.sha256(f"{job_id}\n{ordinal}".encode()).hexdigest()
    return "g" + digest[:32]
