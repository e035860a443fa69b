"""The retry policy as a pure function: how a try ended in, what becomes of the job out.

No I/O and no clock: `process()` runs the try and records the decision with
one call to the store. Every way a try can end is here, the ones where the
handler never ran included (no tries left, an invalid payload).
"""

import random
from dataclasses import dataclass
from enum import Enum

from arq.worker import Retry
from pydantic import ValidationError

from conveyor_core.catalog import RetryPolicy
from conveyor_core.jobs import JobState
from conveyor_core.snooze import HoldScope, RateLimited, Snooze, TooManySnoozesError


class Stop(Enum):
    """Why the worker stopped a try before its handler returned."""

    CANCELLED = "cancelled"  # a client's cancel (Conveyor's, or arq's abort)
    SHUTDOWN = "shutdown"  # the worker stops: the job goes back, the try not counted


class TriesExhaustedError(RuntimeError):
    """The previous try never reported back (its worker died) and none are left."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of the job: its next state, and for `retrying`, the delay
    before its next try; a snooze (retrying, the try not counted) may hold its
    type or key for that delay."""

    state: JobState
    delay_s: float = 0.0
    snoozed: bool = False
    hold: HoldScope | None = None


COMPLETE = Decision(JobState.COMPLETE)
DEAD = Decision(JobState.DEAD)
CANCELLED = Decision(JobState.CANCELLED)
# A shutdown cut the try short: queued again at once; the try does not count.
PUT_BACK = Decision(JobState.QUEUED)


def decide(
    policy: RetryPolicy,
    job_try: int,
    error: BaseException | None = None,
    *,
    stop: Stop | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """The end of try `job_try`: `error` is what the handler raised (None: it
    returned), `stop` why the worker stopped it.

    A failure is retried with the policy's backoff while tries are left, and
    goes dead when they run out, on a permanent error (the policy's, an
    invalid payload) and on a timeout the policy does not retry. arq's
    `Retry(defer=...)` is an ordinary failure with the delay it asked for.
    A snooze (`Snooze`, `RateLimited`) is no failure: retrying after its delay,
    the try not counted; past the job type's cap (process() raises
    TooManySnoozesError instead), dead.
    """
    if stop is Stop.CANCELLED:
        return CANCELLED
    if stop is Stop.SHUTDOWN:
        return PUT_BACK
    if error is None:
        return COMPLETE
    if isinstance(error, Snooze):
        hold = error.scope if isinstance(error, RateLimited) else None
        return Decision(JobState.RETRYING, error.delay_s, snoozed=True, hold=hold)
    if policy.is_permanent(error) or isinstance(
        error, ValidationError | TriesExhaustedError | TooManySnoozesError
    ):
        return DEAD
    # A timeout: the job type's (process() raises it), or one the handler met.
    if isinstance(error, TimeoutError) and not policy.retry_timeouts:
        return DEAD
    if job_try >= policy.max_tries:
        return DEAD
    if isinstance(error, Retry) and error.defer_score is not None:
        return Decision(JobState.RETRYING, max(error.defer_score, 0) / 1000)
    return Decision(JobState.RETRYING, policy.backoff_s(job_try, rng))


def tries_left(policy: RetryPolicy, job_try: int) -> bool:
    """Whether try `job_try` may run: past the last one (the previous try died
    with its worker and never ended), the job goes dead without running."""
    return job_try <= policy.max_tries
