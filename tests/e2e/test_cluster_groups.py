"""Groups and batches with the api and real workers on a Redis Cluster (three
primaries, three replicas), each call in one slot: a job's group and its
continuation, results in order; a batch whose members go to one shard of a
sharded queue and whose callbacks join another queue's slot (through the
shard's outbox), each called back once; its progress over SSE; a group
whose members span queues refused, naming the member; and a batch whose
workers are SIGKILLed twice still calls back once with every result."""

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor_core import keys
from conveyor_core.catalog import DEFAULT_QUEUE
from conveyor_core.group_ids import shard_of_group
from tests.e2e.conftest import Stack, running
from tests.support import jobs, sharded

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster")]

MODULES = f"{jobs.MODULES},{sharded.__name__}"


@pytest.fixture
def stack(cluster_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api, a worker of the default queue and one of the sharded queue."""
    with running(Stack(cluster_url, log_dir, CONVEYOR_JOB_MODULES=MODULES)) as stack:
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="10")
        stack.start_worker(CONVEYOR_WORKER_QUEUE=sharded.QUEUE, CONVEYOR_WORKER_MAX_JOBS="10")
        yield stack


@pytest.mark.timeout(180)
def test_groups_and_batches_run_on_a_cluster(stack: Stack) -> None:
    # A job starts a group of its own queue's members, with a continuation.
    starter = stack.enqueue("fan_out", {"children": 30})
    group_id = stack.wait_for_state(starter, "complete")["result"]
    assert shard_of_group(group_id) == DEFAULT_QUEUE
    group = stack.wait_for_group(group_id, "done")
    assert group["counts"] == {"pending": 0, "complete": 30, "dead": 0, "cancelled": 0}
    (then,) = group["continuations"]
    stack.wait_for_state(then["id"], "complete")
    results = json.loads(stack.redis.get(f"test:results:{then['id']}"))  # type: ignore[arg-type]
    assert results == [{"index": i} for i in range(30)]
    assert stack.job(starter)["groups"] == [group_id]  # the record in another slot lists it

    # A batch on a sharded queue: members in one shard, callbacks in another slot.
    body = {
        "jobs": [{"job_type": "sharded_member", "payload": {"index": i}} for i in range(40)],
        "on_complete": {"job_type": "combine", "payload": {}},
        "on_success": {"job_type": "combine", "payload": {}},
    }
    response = stack.http.post("/v1/batches", json=body, headers={"Idempotency-Key": "b-1"})
    assert response.status_code == 201, response.text
    batch_id = response.json()["id"]
    shard = shard_of_group(batch_id)
    assert shard is not None
    assert keys.queue_of_shard(shard) == sharded.QUEUE
    again = stack.http.post("/v1/batches", json=body, headers={"Idempotency-Key": "b-1"})
    assert (again.status_code, again.json()["id"]) == (200, batch_id)

    events: list[dict[str, Any]] = []
    with stack.http.stream("GET", f"/v1/groups/{batch_id}/events", timeout=60) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    assert events[-1]["state"] == "done"
    assert events[-1]["counts"]["complete"] == 40

    batch = stack.wait_for_group(batch_id, "done")
    on_complete, on_success = (c["id"] for c in batch["continuations"])
    for job_id in (on_complete, on_success):
        assert keys.queue_of(job_id) == DEFAULT_QUEUE  # its own queue's slot
        stack.wait_for_state(job_id, "complete")
    assert stack.redis.smembers(f"test:continuations:{batch_id}") == {
        on_complete.encode(),
        on_success.encode(),
    }
    assert stack.redis.get("test:combines") == b"3"  # the group's once, each callback once
    results = json.loads(stack.redis.get(f"test:results:{on_success}"))  # type: ignore[arg-type]
    assert results == [{"index": i} for i in range(40)]
    assert stack.redis.zcard(keys.outbox_key(shard)) == 0

    # Members of two queues would span slots: refused, naming the member.
    mixed = {
        "children": [
            {"job_type": "member", "payload": {"index": 0}},
            {"job_type": "sharded_member", "payload": {"index": 1}},
        ]
    }
    refused = stack.http.post("/v1/groups", json=mixed)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    (error,) = refused.json()["errors"]
    assert error["field"] == "children.1.job_type", error
    assert "Redis Cluster" in refused.text


@pytest.mark.timeout(240)
def test_sigkilled_workers_leave_one_callback_with_every_result(
    cluster_url: str, log_dir: Path
) -> None:
    members = 200
    with running(Stack(cluster_url, log_dir, CONVEYOR_JOB_MODULES=MODULES)) as stack:
        stack.start_worker()
        env = {
            "CONVEYOR_WORKER_QUEUE": sharded.QUEUE,
            "CONVEYOR_WORKER_MAX_JOBS": "10",
            "CONVEYOR_WORKER_LOCK_TTL_S": "2",
        }
        worker = stack.start_worker(**env)
        body = {
            "jobs": [
                {"job_type": "sharded_member", "payload": {"index": i, "work_s": 0.05}}
                for i in range(members)
            ],
            "on_complete": {"job_type": "combine", "payload": {}},
        }
        response = stack.http.post("/v1/batches", json=body)
        assert response.status_code == 201, response.text
        batch_id = response.json()["id"]
        for _ in range(2):  # each kill lands while members run
            before = stack.group(batch_id)["counts"]["complete"]
            deadline = time.monotonic() + 60
            while stack.group(batch_id)["counts"]["complete"] < before + 30:
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.05)
            worker.stop(signal.SIGKILL)
            worker = stack.start_worker(**env)

        batch = stack.wait_for_group(batch_id, "done", timeout_s=120)
        assert batch["counts"] == {"pending": 0, "complete": members, "dead": 0, "cancelled": 0}
        (on_complete,) = (c["id"] for c in batch["continuations"])
        stack.wait_for_state(on_complete, "complete", timeout_s=60)
        assert stack.redis.smembers(f"test:continuations:{batch_id}") == {on_complete.encode()}
        assert stack.redis.get("test:combines") == b"1"
        results = json.loads(stack.redis.get(f"test:results:{on_complete}"))  # type: ignore[arg-type]
        assert results == [{"index": i} for i in range(members)]
        # The kills cut tries short: some member ran more than once, yet counted once.
        ids = [f"{batch_id}.{i}" for i in range(members)]
        assert any(len(stack.starts(job_id)) > 1 for job_id in ids), "no kill hit a member"
