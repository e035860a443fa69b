"""The one owner of a job's life: every change of state is one Lua script here.

A job that waits for its first try is arq's alone: its job key (what to run:
function, payload, trace context) and its entry in the queue's sorted set,
exactly as arq's own `enqueue_job` writes them, so a bare arq client can
enqueue too. From its first claim on, a small hash records the rest of its
life (state, version, tries, times, progress, the last error), and each
state but waiting has an index per queue. A finished job's job key becomes
arq's result key (`lua/lib/arq_result.lua`), which then holds its payload and
its result (or a dead job's error), so arq's client reads it as its own.
Every script is built on one transition (`lua/lib/transition.lua`): it moves
the index entries, writes the hash, does the arq key bookkeeping the new
state implies (lock, retry count, queue entry, result key, expiry) and
announces the change, so arq's own finishing steps are left with nothing to
do. See keys.py for the layout.
"""

from conveyor_core.store.bulk import BULK_ACTIONS, BULK_BATCH_MAX, Bulk
from conveyor_core.store.filters import (
    SCAN_BUDGET_PER_ITEM,
    InvalidCursorError,
    JobFilter,
    decode_cursor,
    encode_cursor,
)
from conveyor_core.store.groups import GROUP_CHUNK_MAX, Groups, MemberRow
from conveyor_core.store.lifecycle import QUOTA_PRUNE_PER_CALL
from conveyor_core.store.listing import Listing
from conveyor_core.store.queues import TRIM_BATCH, Queues
from conveyor_core.store.results import (
    BulkBatch,
    Claim,
    Claimed,
    Ended,
    Fetch,
    NextJobs,
    Page,
    Paused,
    QueueStats,
    Quota,
    Read,
    Reported,
    Submitted,
    claim_nonce,
)
from conveyor_core.store.wire import INVALID_JOB_DATA, META_KWARG, SUBMITTED_BY, ArqJob


class JobStore(Groups, Listing, Bulk, Queues):
    """Submit, claim, finish, cancel, requeue and read jobs; nothing else writes
    them. One face over the store's parts, each a module of this package:
    `lifecycle` (what writes a job's state), `reads`, `listing`, `bulk`,
    `queues` (pause, statistics, housekeeping), `groups` (fan-out and
    fan-in, see conveyor_core.groups), `wire` (arq's job and result
    keys), `filters` and `results`; score maths live in conveyor_core.scores
    and the Lua loader in conveyor_core.lua."""


__all__ = [
    "BULK_ACTIONS",
    "BULK_BATCH_MAX",
    "GROUP_CHUNK_MAX",
    "INVALID_JOB_DATA",
    "META_KWARG",
    "QUOTA_PRUNE_PER_CALL",
    "SCAN_BUDGET_PER_ITEM",
    "SUBMITTED_BY",
    "TRIM_BATCH",
    "ArqJob",
    "BulkBatch",
    "Claim",
    "Claimed",
    "Ended",
    "Fetch",
    "Groups",
    "InvalidCursorError",
    "JobFilter",
    "JobStore",
    "MemberRow",
    "NextJobs",
    "Page",
    "Paused",
    "QueueStats",
    "Quota",
    "Read",
    "Reported",
    "Submitted",
    "claim_nonce",
    "decode_cursor",
    "encode_cursor",
]
