"""What the store's calls answer: plain values, no behaviour."""

import secrets
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from conveyor_core.jobs import (
    HoldReason,
    JobPublic,
)
from conveyor_core.store.wire import ArqJob


@dataclass(frozen=True, slots=True)
class Submitted:
    """What submit did: created the job, or found one under the same idempotency key."""

    job_id: str
    created: bool
    # For an existing job: did its payload fingerprint match this request's?
    same_payload: bool = True
    # The record as created; None when an existing job was found.
    job: JobPublic | None = None
    # Refused by the caller's rate limit: when to try again; nothing was written.
    retry_after_s: float | None = None
    # Refused: the caller has its quota of outstanding jobs; nothing was written.
    over_quota: bool = False
    # A debounce key's window kept an earlier job (`job_id`): no job was created;
    # `replaced` when the kept job took this submit's payload.
    debounced: bool = False
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """What a rate-limited read found (see `JobStore.read`)."""

    # The job and its arq job (None when arq's key is gone); None when there is none.
    found: tuple[ArqJob | None, JobPublic] | None = None
    # Refused by the caller's rate limit: when to try again; nothing was read.
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """A caller's cap on outstanding jobs (waiting, running or retrying), kept
    by the submit script in the caller's sorted set (keys.outstanding_key)."""

    key: str
    max_jobs: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker's claim started: its score in the queue, its try number,
    the try's token (fencing: every later call of the try carries it) and arq's
    job key as the claim read it (None when it was gone)."""

    job_id: str
    score_ms: int
    job_try: int
    token: str = ""
    job_bytes: bytes | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim did: the jobs it started, when the next deferred one falls
    due, and when the queue was paused (None while it runs)."""

    jobs: list[Claimed]
    next_due_ms: float | None
    paused_at_ms: int | None = None
    # Due jobs this claim passed over, by why: a running limit, a rate, a hold.
    held: dict[HoldReason, int] = field(default_factory=dict)
    # The queue shard it claimed from (keys.shard_name).
    shard: str = ""


@dataclass(frozen=True, slots=True)
class Fetch:
    """What a worker's slot asks of the end of a try (finish and fetch): claim
    up to `wanted` jobs in the same call, as `JobStore.claim` would."""

    wanted: int
    lock_ttl_ms: int
    cancelled_retention_ms: int
    scan_limit: int


class NextJobs(Protocol):
    """A worker's side of finish and fetch: what to claim with the end of a try
    (None: nothing, e.g. while it stops), and the jobs that claim started."""

    def fetch(self) -> Fetch | None: ...

    def take(self, claim: Claim) -> None: ...


@dataclass(frozen=True, slots=True)
class Ended:
    """What the end of a try did: moved the job (true) or found it moved by
    someone else, and what the claim in the same call started, if one was asked."""

    moved: bool
    claim: Claim | None = None
    # Refused: the try's token is no longer the record's (a stale try).
    stale: bool = False

    def __bool__(self) -> bool:
        return self.moved


@dataclass(frozen=True, slots=True)
class Paused:
    """A queue's pause: since when (ms), and whether the call that said so paused it."""

    at_ms: int
    changed: bool


@dataclass(frozen=True, slots=True)
class BulkBatch:
    """What one batch of a bulk action did."""

    done: int
    skipped: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[JobPublic]
    next_cursor: str | None
    # Index entries read to fill it (the matches and the rest).
    scanned: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    ready: int
    deferred: int
    in_progress: int
    retrying: int
    dead: int
    oldest_ready_age_s: float
    # When the queue was paused; None while it runs.
    paused_at_ms: int | None = None


class Reported(IntEnum):
    """What a progress report did."""

    STALE = -1  # refused: the try's token is no longer the record's
    NOT_RUNNING = 0  # the job is not in progress: nothing recorded
    RECORDED = 1


def claim_nonce() -> str:
    """A random nonce per claim call; the claim makes each job's token of it."""
    return secrets.token_hex(8)


def _parse_claim(reply: list[Any], shard: str) -> Claim:
    """A claim's reply (claim.lua, or finish.lua's after the end of a try) on `shard`."""
    claimed, next_due, paused_at, (held_limit, held_rate, held_hold) = reply
    rows = iter(claimed)
    jobs = [
        Claimed(job_id.decode(), int(float(score)), int(job_try), token.decode(), job or None)
        for job_id, score, job_try, token, job in zip(rows, rows, rows, rows, rows, strict=True)
    ]
    return Claim(
        jobs,
        float(next_due) if next_due else None,
        int(paused_at) if paused_at else None,
        {
            HoldReason.LIMIT: held_limit,
            HoldReason.RATE: held_rate,
            HoldReason.HELD: held_hold,
        },
        shard,
    )
