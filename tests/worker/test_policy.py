"""The retry policy as a pure function: each way a try can end, and what becomes of the job."""

import random

import pytest
from arq.worker import Retry
from pydantic import BaseModel, ValidationError

from conveyor_core.catalog import PermanentJobError, RetryPolicy
from conveyor_core.jobs import JobState
from conveyor_core.snooze import (
    HoldScope,
    RateLimited,
    Snooze,
    TooManySnoozesError,
    retry_after_s,
)
from conveyor_worker.policy import (
    Decision,
    Stop,
    TriesExhaustedError,
    decide,
    tries_left,
)

POLICY = RetryPolicy(max_tries=3, backoff_base_s=2.0, backoff_cap_s=5.0)


class Needs(BaseModel):
    n: int


def test_success_completes() -> None:
    assert decide(POLICY, 1) == Decision(JobState.COMPLETE)


def test_a_failure_with_tries_left_retries_with_growing_jittered_backoff() -> None:
    rng = random.Random(7)
    first = decide(POLICY, 1, RuntimeError("flaky"), rng=rng)
    second = decide(POLICY, 2, RuntimeError("flaky"), rng=rng)
    assert (first.state, second.state) == (JobState.RETRYING, JobState.RETRYING)
    # Equal jitter: half the ceiling fixed, half random (ceiling 2 s, then 4 s).
    assert 1.0 <= first.delay_s <= 2.0
    assert 2.0 <= second.delay_s <= 4.0
    assert {decide(POLICY, 1, RuntimeError(), rng=rng).delay_s for _ in range(5)} != {first.delay_s}


def test_a_failure_on_the_last_try_is_dead() -> None:
    assert decide(POLICY, 3, RuntimeError("still failing")) == Decision(JobState.DEAD)


def test_a_permanent_error_is_dead_at_once() -> None:
    assert decide(POLICY, 1, PermanentJobError("never works")).state is JobState.DEAD
    own = RetryPolicy(permanent_errors=(KeyError,))
    assert decide(own, 1, KeyError("x")).state is JobState.DEAD


def test_an_invalid_payload_is_dead_at_once() -> None:
    with pytest.raises(ValidationError) as invalid:
        Needs.model_validate({"n": "many"})
    assert decide(POLICY, 1, invalid.value).state is JobState.DEAD


def test_no_tries_left_is_dead() -> None:
    assert not tries_left(POLICY, 4)
    assert tries_left(POLICY, 3)
    assert decide(POLICY, 4, TriesExhaustedError("none left")).state is JobState.DEAD


def test_a_timeout_retries_unless_the_policy_says_otherwise() -> None:
    timeout = TimeoutError("timed out after 1 s")
    assert decide(POLICY, 1, timeout).state is JobState.RETRYING
    strict = RetryPolicy(max_tries=3, retry_timeouts=False)
    assert decide(strict, 1, timeout).state is JobState.DEAD


def test_arqs_retry_is_an_ordinary_failed_try_with_the_delay_it_asked_for() -> None:
    assert decide(POLICY, 1, Retry(defer=1)) == Decision(JobState.RETRYING, 1.0)
    assert decide(POLICY, 2, Retry(defer=0.25)) == Decision(JobState.RETRYING, 0.25)
    # Without a delay of its own: the policy's backoff.
    assert 1.0 <= decide(POLICY, 1, Retry()).delay_s <= 2.0
    # It counts as a try: dead when they run out.
    assert decide(POLICY, 3, Retry(defer=1)).state is JobState.DEAD


def test_a_cancelled_try_is_cancelled_and_an_interrupted_one_goes_back() -> None:
    assert decide(POLICY, 1, stop=Stop.CANCELLED).state is JobState.CANCELLED
    # Even on the last try: a shutdown does not use the try up.
    assert decide(POLICY, 3, stop=Stop.SHUTDOWN) == Decision(JobState.QUEUED)


def test_a_snooze_retries_after_its_delay_without_counting_even_on_the_last_try() -> None:
    # The last try, and a policy that would call any Exception permanent: still a snooze.
    policy = RetryPolicy(max_tries=3, permanent_errors=(Exception,))
    assert decide(policy, 3, Snooze(7.5)) == Decision(JobState.RETRYING, 7.5, snoozed=True)


@pytest.mark.parametrize("scope", ["type", "key"])
def test_a_partners_rate_limit_snoozes_and_holds_its_scope(scope: HoldScope) -> None:
    decision = decide(POLICY, 1, RateLimited(30, scope=scope))
    assert decision == Decision(JobState.RETRYING, 30.0, snoozed=True, hold=scope)


def test_too_many_snoozes_is_dead() -> None:
    assert decide(POLICY, 1, TooManySnoozesError("100 snoozes")) == Decision(JobState.DEAD)


@pytest.mark.parametrize("delay_s", [-1, float("nan"), float("inf")])
def test_a_snooze_needs_a_delay_of_zero_or_more(delay_s: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        Snooze(delay_s)
    with pytest.raises(ValueError, match="seconds"):
        RateLimited(delay_s)


def test_a_hold_has_a_scope_of_type_or_key() -> None:
    with pytest.raises(ValueError, match="scope"):
        RateLimited(1, scope="queue")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # 30 s after now_s below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        (None, 45.0),
        ("", 45.0),
        ("soon", 45.0),
        ("-5", 45.0),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(header: str | None, seconds: float) -> None:
    now_s = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_s(header, default_s=45, now_s=now_s) == seconds
