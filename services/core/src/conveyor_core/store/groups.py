"""A group's writes and reads in Redis: its hash, its members' submits a
chunk per call, its cancel, and a cluster's outbox of continuations
(lua/group_*.lua; the counting itself is in the transition,
lua/lib/group.lua). conveyor_core.groups builds on these.

On a cluster every call here touches one slot: the group's hash, its members
and their keys share the group's queue shard (group_ids.py); what is in
another slot (the creating job's record, the caller's quota of outstanding
jobs, a continuation of another shard) is written by a call of its own."""

from collections.abc import Sequence
from dataclasses import dataclass

from arq.constants import job_key_prefix, result_key_prefix
from redis.crc import key_slot

from conveyor_core import keys
from conveyor_core.history import history_key
from conveyor_core.jobs import now_ms
from conveyor_core.keys import ARQ_EXPIRY_EXTRA_MS, GROUP_OPEN_S
from conveyor_core.store.declared import fairness_keys
from conveyor_core.store.lifecycle import Lifecycle
from conveyor_core.store.results import Quota

# A member submit's Lua call creates at most this many jobs.
GROUP_CHUNK_MAX = 500
# A drain of an outbox takes at most this many continuations per call, and
# holds them this long: a taker that dies leaves them to another after it.
OUTBOX_TAKE_MAX = 100
OUTBOX_LEASE_MS = 30_000


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as the submit writes it: arq's job key and queue entry."""

    job_id: str
    queue: str
    score: int
    job_bytes: bytes
    flow: str
    job_type: str


def member_keys(rows: Sequence[MemberRow], at_ms: int, *, resuming: bool) -> list[str]:
    """What a chunk's submit touches, declared (each once): per member its arq
    job key (resuming, also its result key and record, which say it ran), and
    what a submit touches of its queue (the flow hash, a keyed job's key queue
    and ring, the minute's history)."""
    declared: dict[str, None] = {}
    for row in rows:
        declared[job_key_prefix + row.job_id] = None
        if resuming:
            declared[result_key_prefix + row.job_id] = None
            declared[keys.job_key(row.job_id)] = None
        queue_keys = [row.queue, keys.queue_key(row.queue, keys.FLOW_SUFFIX)]
        queue_keys += [*fairness_keys(row.queue, row.flow), history_key(row.queue, at_ms // 60_000)]
        declared.update(dict.fromkeys(queue_keys))
    return list(declared)


class Groups(Lifecycle):
    """Create a group, submit its members, read and cancel it; built on the
    lifecycle of its jobs."""

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
        await self.admit()  # as every submit
        flat: list[str | bytes | int] = [x for pair in fields.items() for x in pair]
        group_key = keys.group_key(group_id)
        absent = keys.absent(group_key)
        parent_key = keys.job_key(parent_id) if parent_id else None
        # On a cluster, a parent in another slot is told by a call of its own.
        link_apart = parent_key is not None and not self.same_slot(parent_key, group_key)
        created = await self._group_create(
            keys=[
                group_key,
                parent_key if parent_key is not None and not link_apart else absent,
                keys.group_key(hands_to_group) if hands_to_group else absent,
            ],
            args=[group_id, now_ms(), GROUP_OPEN_S * 1000, total, hands_to or "", *flat],
        )
        if created and link_apart and parent_key is not None:
            await self._link(keys=[parent_key], args=[f"group:{group_id}", total])
        return bool(created)

    def same_slot(self, key: str, other: str) -> bool:
        """Whether two keys may go in one call: always on a single node."""
        return not self.one_slot_per_call or key_slot(key.encode()) == key_slot(other.encode())

    async def submit_members(
        self,
        group_id: str,
        rows: Sequence[MemberRow],
        *,
        resuming: bool,
        quota: Quota | None = None,
    ) -> int:
        """Create up to GROUP_CHUNK_MAX members of `group_id` in one call;
        returns how many were created (an existing id is skipped; `resuming`,
        a finished one too). With a `quota`, they count among its outstanding
        jobs (on a cluster, by a call of its own: the quota has its own slot)."""
        if len(rows) > GROUP_CHUNK_MAX:
            raise ValueError(f"a chunk takes at most {GROUP_CHUNK_MAX} members, not {len(rows)}")
        if not rows:
            return 0
        at_ms = now_ms()
        args: list[str | bytes | int] = [at_ms, ARQ_EXPIRY_EXTRA_MS, "1" if resuming else "0"]
        for row in rows:
            args += [row.job_id, row.queue, row.score, row.job_bytes, row.flow, row.job_type]
        group_key = keys.group_key(group_id)
        quota_apart = quota is not None and self.one_slot_per_call
        quota_key = quota.key if quota is not None and not quota_apart else keys.absent(group_key)
        created = int(
            await self._group_submit(
                keys=[group_key, quota_key, *member_keys(rows, at_ms, resuming=resuming)],
                args=args,
            )
        )
        if quota is not None and quota_apart and created:
            # Existing members are counted again: harmless, a prune drops ended ones.
            await self.redis.zadd(quota.key, {row.job_id: at_ms for row in rows})
            await self.redis.pexpire(quota.key, ARQ_EXPIRY_EXTRA_MS)
        return created

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

    async def drain_outbox(self, shard: str) -> int:
        """Start the continuations in a queue shard's outbox (a cluster's:
        keys.OUTBOX_SUFFIX), each in its own slot, a bounded number per call;
        returns how many were started. Safe to run anywhere, any number of
        times at once: a taken entry is leased, and a continuation that was
        started (or has ended) is not started again (lua/group_continue.lua).
        A group cancel between the take and the start is seen after the start,
        and the continuation cancelled (lua/group_outbox.lua, 'cancelled')."""
        outbox = keys.outbox_key(shard)
        started = 0
        while True:
            at_ms = now_ms()
            taken = await self._group_outbox(
                keys=[outbox], args=["take", at_ms, OUTBOX_LEASE_MS, OUTBOX_TAKE_MAX]
            )
            if not taken:
                return started
            entries = []
            for i in range(0, len(taken), 7):
                entry, job_id, queue, priority, flow, job_type, job_bytes = taken[i : i + 7]
                name, shard = job_id.decode(), queue.decode()
                started += int(
                    await self._group_continue(
                        keys=[
                            job_key_prefix + name,
                            result_key_prefix + name,
                            keys.job_key(name),
                            shard,
                            # What it touches as a submit would, declared.
                            keys.queue_key(shard, keys.FLOW_SUFFIX),
                            *fairness_keys(shard, flow.decode()),
                            history_key(shard, at_ms // 60_000),
                        ],
                        args=[at_ms, job_id, queue, priority, flow, job_type, job_bytes],
                    )
                )
                entries.append(entry)
            # A group cancel that came after the take: its continuation,
            # started just now, is cancelled before its entry goes.
            for job_id in await self._group_outbox(
                keys=[outbox], args=["cancelled", at_ms, *entries]
            ):
                await self.cancel(job_id.decode())
            await self._group_outbox(keys=[outbox], args=["done", at_ms, *entries])
            if len(taken) < 7 * OUTBOX_TAKE_MAX:
                return started
