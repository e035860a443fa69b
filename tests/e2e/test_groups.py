"""Groups with real processes: a workflow of 500 children survives three
SIGKILLed workers with its continuation run exactly once on all 500 results;
under policy fail one dead child keeps it from running, and the group says
why; a batch of 10,000 jobs from one request is listed, counted and called
back exactly once."""

import json
import signal
import time
from typing import Any

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

CHILDREN = 500
KILLS = 3
BATCH_JOBS = 10_000


@pytest.mark.timeout(300)
def test_a_workflow_of_500_children_survives_three_sigkills(stack: Stack) -> None:
    worker_env = {"CONVEYOR_WORKER_MAX_JOBS": "10", "CONVEYOR_WORKER_LOCK_TTL_S": "2"}
    worker = stack.start_worker(**worker_env)
    starter = stack.enqueue("fan_out", {"children": CHILDREN, "work_s": 0.05})
    group_id = stack.wait_for_state(starter, "complete")["result"]

    for _ in range(KILLS):  # each kill lands while members run
        complete_before = stack.group(group_id)["counts"]["complete"]
        deadline = time.monotonic() + 60
        while stack.group(group_id)["counts"]["complete"] < complete_before + 40:
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.05)
        worker.stop(signal.SIGKILL)
        worker = stack.start_worker(**worker_env)

    group = stack.wait_for_group(group_id, "done", timeout_s=180)
    assert group["counts"] == {"pending": 0, "complete": CHILDREN, "dead": 0, "cancelled": 0}
    (then,) = group["continuations"]
    stack.wait_for_state(then["id"], "complete", timeout_s=60)

    # Enqueued once, its effect applied once, with every result in order.
    assert stack.redis.smembers(f"test:continuations:{group_id}") == {then["id"].encode()}
    assert stack.redis.get("test:combines") == b"1"
    results = json.loads(stack.redis.get(f"test:results:{then['id']}"))  # type: ignore[arg-type]
    assert results == [{"index": i} for i in range(CHILDREN)]
    # The kills cut tries short: some member ran more than once, yet counted once.
    members = [f"{group_id}.{i}" for i in range(CHILDREN)]
    assert any(len(stack.starts(m)) > 1 for m in members), "no kill hit a running member"


@pytest.mark.timeout(120)
def test_under_policy_fail_a_dead_child_keeps_the_continuation_from_running(
    stack: Stack,
) -> None:
    stack.start_worker()
    starter = stack.enqueue("fan_out", {"children": 20, "fail_index": 7})
    group_id = stack.wait_for_state(starter, "complete")["result"]

    group = stack.wait_for_group(group_id, "failed")
    assert group["counts"] == {"pending": 0, "complete": 19, "dead": 1, "cancelled": 0}
    assert group["failed"] == {
        "member_id": f"{group_id}.7",
        "state": "dead",
        "error_type": "PermanentJobError",
        "message": "member 7 fails on purpose",
    }
    (then,) = group["continuations"]
    assert stack.http.get(f"/v1/jobs/{then['id']}").status_code == 404
    assert not stack.redis.exists(f"test:continuations:{group_id}")


@pytest.mark.timeout(300)
def test_a_batch_of_10000_jobs_is_listed_counted_and_called_back_once(stack: Stack) -> None:
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="50")
    body = {
        "jobs": [{"job_type": "member", "payload": {"index": i}} for i in range(BATCH_JOBS)],
        "on_complete": {"job_type": "combine", "payload": {}},
        "on_success": {"job_type": "combine", "payload": {}},
    }
    response = stack.http.post("/v1/batches", json=body, timeout=60)
    assert response.status_code == 201, response.text
    batch_id = response.json()["id"]

    # Listed: its jobs, a page at a time, in order.
    page = stack.http.get(f"/v1/batches/{batch_id}", params={"offset": 9_990, "limit": 20})
    assert [m["index"] for m in page.json()["members"]] == list(range(9_990, 10_000))

    batch = stack.wait_for_group(batch_id, "done", timeout_s=240)
    assert batch["counts"] == {"pending": 0, "complete": BATCH_JOBS, "dead": 0, "cancelled": 0}
    on_complete, on_success = (c["id"] for c in batch["continuations"])
    for job_id in (on_complete, on_success):
        stack.wait_for_state(job_id, "complete", timeout_s=60)
    assert stack.redis.smembers(f"test:continuations:{batch_id}") == {
        on_complete.encode(),
        on_success.encode(),
    }
    assert stack.redis.get("test:combines") == b"2"  # each callback once
    results = json.loads(stack.redis.get(f"test:results:{on_success}"))  # type: ignore[arg-type]
    assert results == [{"index": i} for i in range(BATCH_JOBS)]


@pytest.mark.timeout(120)
def test_a_groups_progress_streams_until_it_finishes(stack: Stack) -> None:
    stack.start_worker()
    body = {"children": [{"job_type": "member", "payload": {"index": i}} for i in range(20)]}
    group_id = stack.http.post("/v1/groups", json=body).json()["id"]

    events: list[dict[str, Any]] = []
    with stack.http.stream("GET", f"/v1/groups/{group_id}/events", timeout=60) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    assert events, "no event"
    assert events[-1]["state"] == "done"
    assert events[-1]["counts"]["complete"] == 20
    completes = [e["counts"]["complete"] for e in events]
    assert completes == sorted(completes)  # each event a newer count
