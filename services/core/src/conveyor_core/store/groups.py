"""A group's writes and reads in Redis: its hash, its members' submits a
chunk per call, its cancel (lua/group_*.lua; the counting itself is in the
transition, lua/lib/group.lua). conveyor_core.groups builds on these."""

from collections.abc import Sequence
from dataclasses import dataclass

from conveyor_core import keys
from conveyor_core.jobs import now_ms
from conveyor_core.keys import ARQ_EXPIRY_EXTRA_MS, GROUP_OPEN_S
from conveyor_core.store.reads import Reads
from conveyor_core.store.results import Quota

# A member submit's Lua call creates at most this many jobs.
GROUP_CHUNK_MAX = 500


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as the submit writes it: arq's job key and queue entry."""

    job_id: str
    queue: str
    score: int
    job_bytes: bytes
    flow: str
    job_type: str


class Groups(Reads):
    """Create a group, submit its members, read and cancel it."""

    async def create_group(
        self,
        group_id: str,
        total: int,
        fields: dict[str, str | bytes | int],
        *,
        parent_id: str | None = None,
        hands_to: str | None = None,
        hands_to_group: str | None = None,
    ) -> bool:
        """The group's hash, counting down from `total`; False (nothing
        written) when it exists: its creation is being resumed. `hands_to` is
        the place (a member id of group `hands_to_group`) it takes over."""
        if self._admit is not None:  # as every submit (Lifecycle.admit)
            await self._admit()
        flat: list[str | bytes | int] = [x for pair in fields.items() for x in pair]
        group_key = keys.group_key(group_id)
        absent = keys.absent(group_key)
        created = await self._group_create(
            keys=[
                group_key,
                keys.job_key(parent_id) if parent_id else absent,
                keys.group_key(hands_to_group) if hands_to_group else absent,
            ],
            args=[group_id, now_ms(), GROUP_OPEN_S * 1000, total, hands_to or "", *flat],
        )
        return bool(created)

    async def submit_members(
        self, rows: Sequence[MemberRow], *, resuming: bool, quota: Quota | None = None
    ) -> int:
        """Create up to GROUP_CHUNK_MAX members in one call; returns how many
        were created (an existing id is skipped; `resuming`, a finished one too).
        With a `quota`, they count among its outstanding jobs."""
        if len(rows) > GROUP_CHUNK_MAX:
            raise ValueError(f"a chunk takes at most {GROUP_CHUNK_MAX} members, not {len(rows)}")
        if not rows:
            return 0
        args: list[str | bytes | int] = [
            now_ms(),
            ARQ_EXPIRY_EXTRA_MS,
            "1" if resuming else "0",
        ]
        for row in rows:
            args += [row.job_id, row.queue, row.score, row.job_bytes, row.flow, row.job_type]
        created = await self._group_submit(keys=[quota.key if quota else ""], args=args)
        return int(created)

    async def group_hash(self, group_id: str) -> dict[str, bytes]:
        """The group's hash as stored ({} when there is none)."""
        raw = await self.redis.hgetall(keys.group_key(group_id))  # type: ignore[misc]
        return {k.decode(): v for k, v in raw.items()}

    async def cancel_group_hash(self, group_id: str) -> str:
        """Mark the group cancelled (its continuations will not start); the
        state it was in, '' when there is no such group."""
        before = await self._group_cancel(
            keys=[keys.group_key(group_id)], args=[group_id, now_ms()]
        )
        return before.decode() if isinstance(before, bytes) else str(before)
