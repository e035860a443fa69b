"""Snoozes and a partner's 429 with real workers: no try is counted, and while
a hold lasts no job of its key (or, scope=type, of its type) starts anywhere."""

from typing import cast

import pytest

from tests.e2e.conftest import Stack

HOLD_S = 2.0


def partner_starts(stack: Stack) -> dict[str, list[float]]:
    """Each partner job's starts (recorded by the job), by job id."""
    out: dict[str, list[float]] = {}
    for raw in cast(list[bytes], stack.redis.lrange("test:partner_starts", 0, -1)):
        job_id, at = raw.decode().split(" ")
        out.setdefault(job_id, []).append(float(at))
    return out


def test_snoozes_do_not_count_tries(stack: Stack) -> None:
    stack.start_worker()
    # The type allows one try: snoozes that counted would make it dead.
    job_id = stack.submit("snoozing", {"snoozes": 3, "delay_s": 0.1})["id"]

    job = stack.wait_for_state(job_id, "complete", "dead")

    assert (job["state"], job["tries"], job["result"]) == ("complete", 1, 1)
    assert [a["outcome"] for a in job["attempts"]] == ["snoozed"] * 3 + ["complete"]


@pytest.mark.parametrize("scope", ["key", "type"])
def test_during_a_429_hold_no_job_of_its_key_or_type_starts(stack: Stack, scope: str) -> None:
    for _ in range(2):
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="4")
    payload = {"tenant_id": "a", "retry_after_s": HOLD_S, "scope": scope}
    limited = stack.submit("partner", payload)["id"]
    job = stack.wait_for_state(limited, "retrying")
    assert job["tries"] == 0
    (hit_at,) = partner_starts(stack)[limited]
    held_until = hit_at + HOLD_S  # at least: the hold begins when the try ends

    same_key = [stack.submit("partner", {"tenant_id": "a"})["id"] for _ in range(5)]
    other_key = [stack.submit("partner", {"tenant_id": "b"})["id"] for _ in range(5)]
    for job_id in [limited, *same_key, *other_key]:
        stack.wait_for_state(job_id, "complete", timeout_s=20)

    starts = partner_starts(stack)
    held = [limited, *same_key] + (other_key if scope == "type" else [])
    for job_id in held:
        assert min(starts[job_id]) >= held_until - 0.01 or job_id == limited, starts
    assert starts[limited][1] >= held_until - 0.01
    # The workers' timers wake when the hold ends (a second at most, their safety net).
    assert max(starts[j][-1] for j in held) < held_until + 1.5, starts
    if scope == "key":  # another key's jobs ran during the hold
        assert all(starts[j][0] < held_until for j in other_key), starts
    assert stack.job(limited)["tries"] == 1
