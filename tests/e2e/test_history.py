"""A queue's per-minute history after a known workload: it matches what ran,
and its Redis size is bounded as documented (docs/operating.md, history.py)."""

from typing import Any

from conveyor_core.history import EVENTS, HISTORY_TTL_S
from tests.e2e.conftest import Stack

# Per job type: how many jobs, and what each does (fail_times for flaky).
WORKLOAD = {"flaky": 5, "doomed": 3, "effect": 4}
EXPECTED = {
    "flaky": {"enqueued": 5, "started": 10, "retrying": 5, "complete": 5},
    "doomed": {"enqueued": 3, "started": 6, "retrying": 3, "dead": 3},
    "effect": {"enqueued": 4, "started": 4, "complete": 4},
}
PAYLOADS: dict[str, dict[str, Any]] = {
    "flaky": {"fail_times": 1},
    "doomed": {},
    "effect": {"work_s": 0},
}


def totals(history: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for minute in history["minutes"]:
        for job_type, counts in minute["by_job_type"].items():
            for event, n in counts.items():
                out.setdefault(job_type, {}).setdefault(event, 0)
                out[job_type][event] += n
    return out


def test_history_counts_what_ran_and_stays_small(stack: Stack) -> None:
    stack.start_worker()
    ids = [
        stack.submit(job_type, PAYLOADS[job_type])["id"]
        for job_type, n in WORKLOAD.items()
        for _ in range(n)
    ]
    for job_id in ids:
        stack.wait_for_state(job_id, "complete", "dead")
    queue = stack.job(ids[0])["queue"]

    response = stack.http.get(f"/v1/queues/{queue}/history", params={"minutes": 10})

    assert response.status_code == 200, response.text
    history = response.json()
    assert len(history["minutes"]) == 10
    assert totals(history) == EXPECTED
    for minute in history["minutes"]:
        assert set(minute["counts"]) == set(EVENTS)
    started = [m for m in history["minutes"] if m["counts"]["started"]]
    assert all(m["mean_wait_s"] is not None and m["mean_wait_s"] >= 0 for m in started)
    # Bounded: one hash per minute that saw work, expiring within 72 hours,
    # each within the documented size (90 + 6 x 35 bytes per job type).
    keys = list(stack.redis.scan_iter(match=f"conveyor:{{{queue}}}:history:*"))
    assert 1 <= len(keys) <= 3
    for key in keys:
        assert 0 < int(stack.redis.ttl(key)) <= HISTORY_TTL_S  # type: ignore[arg-type]
        assert int(stack.redis.hlen(key)) <= 6 * len(WORKLOAD)  # type: ignore[arg-type]
        assert stack.redis.memory_usage(key) <= 90 + 6 * 35 * len(WORKLOAD)  # type: ignore[operator]
