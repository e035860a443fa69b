"""The api and a worker as real processes on a Redis Cluster (three primaries,
three replicas): what is not one job's lifecycle (that suite runs on both,
test_lifecycle.py) works there too, each call in one slot: the tutorial's
submit, Idempotency-Key, debounce, priorities, limits, listing and filters,
stats, the worker registry, the audit log, history, readiness, bulk actions,
schedules, and a submit that waits for a replica (REDIS_WAIT_REPLICAS).
Groups and batches: test_cluster_groups.py."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor_core import keys
from conveyor_core.catalog import DEFAULT_QUEUE
from tests.e2e.conftest import Stack, running
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster")]

# `ticking` runs every second on the cluster's worker (a schedule enters through the submit).
SCHEDULES = {"ticking": {"second": list(range(60))}}


@pytest.fixture
def cluster_stack(cluster_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api and one worker (ticking each second) on the test cluster."""
    with running(
        Stack(cluster_url, log_dir, CONVEYOR_SCHEDULES=json.dumps(SCHEDULES)), workers=1
    ) as stack:
        yield stack


def wait_until(stack: Stack, check: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened\n{stack.logs()}")
        time.sleep(0.1)


def test_submits_limits_and_reads_on_a_cluster(cluster_stack: Stack) -> None:
    stack = cluster_stack
    assert stack.http.get("/readyz").status_code == 200

    # The tutorial's endpoint: five jobs, each run.
    response = stack.http.post("/task", json={"count": 5})
    assert response.status_code == 201, response.text
    task_ids = response.json()["job_ids"]
    assert len(task_ids) == 5

    # One job for one Idempotency-Key; a debounce key inside its window keeps the first.
    headers = {"Idempotency-Key": "order-42"}
    once = stack.http.post("/v1/jobs/effect", json={"work_s": 0}, headers=headers)
    again = stack.http.post("/v1/jobs/effect", json={"work_s": 0}, headers=headers)
    assert (once.status_code, again.status_code) == (201, 200)
    assert once.json()["id"] == again.json()["id"]
    debounce: dict[str, str | float] = {"debounce_key": "burst", "debounce_window_s": 60}
    kept = [
        stack.http.post("/v1/jobs/effect", json={"work_s": 0}, params=debounce) for _ in range(3)
    ]
    assert len({answer.json()["id"] for answer in kept}) == 1

    # Priorities: a paused queue's backlog starts highest first.
    assert stack.http.post(f"/v1/queues/{DEFAULT_QUEUE}/pause").status_code == 200
    low = stack.submit("effect", {"work_s": 0}, params={"priority": 9})["id"]
    high = stack.submit("effect", {"work_s": 0}, params={"priority": 0})["id"]
    capped = [stack.submit("capped", {"work_s": 0.3})["id"] for _ in range(6)]
    assert stack.http.post(f"/v1/queues/{DEFAULT_QUEUE}/resume").status_code == 200
    for job_id in [*task_ids, once.json()["id"], kept[0].json()["id"], low, high, *capped]:
        stack.wait_for_state(job_id, "complete")
    assert stack.starts(high)[0] < stack.starts(low)[0]
    assert stack.redis.get("test:max_running:capped") == b"2"  # its running limit

    # Listing and filters, stats, history.
    listed = stack.http.get("/v1/jobs", params={"state": "complete", "job_type": "capped"})
    assert sorted(job["id"] for job in listed.json()["items"]) == sorted(capped)
    queues = {q["name"]: q for q in stack.http.get("/v1/queues").json()["queues"]}
    assert (queues[DEFAULT_QUEUE]["paused"], queues[DEFAULT_QUEUE]["dead"]) == (False, 0)
    assert "capped" in queues[DEFAULT_QUEUE]["limits"]
    history = stack.http.get(f"/v1/queues/{DEFAULT_QUEUE}/history", params={"minutes": 5})
    assert history.status_code == 200, history.text
    finished = sum(m["counts"].get("complete", 0) for m in history.json()["minutes"])
    assert finished >= 6 + 5 + 4

    # The worker registry (cards in two slots) and the audit log.
    stack.start_worker()
    wait_until(stack, lambda: len(stack.http.get("/v1/workers").json()["workers"]) == 2, "2 cards")
    workers = stack.http.get("/v1/workers").json()["workers"]
    assert {worker["queue"] for worker in workers} == {DEFAULT_QUEUE}
    audit = stack.http.get("/v1/audit").json()["items"]
    assert [(e["action"], e["target"]) for e in audit[:2]] == [
        ("resume", DEFAULT_QUEUE),
        ("pause", DEFAULT_QUEUE),
    ]


def test_bulk_actions_and_schedules_on_a_cluster(cluster_stack: Stack) -> None:
    stack = cluster_stack
    dead = [stack.submit("doomed", {})["id"] for _ in range(3)]
    for job_id in dead:
        stack.wait_for_state(job_id, "dead")

    for job_id in dead:
        stack.redis.set(f"test:healed:{job_id}", "1")
    response = stack.http.post(
        "/v1/bulk", json={"action": "requeue", "filter": {"state": "dead", "job_type": "doomed"}}
    )
    assert response.status_code == 202, response.text
    bulk_id = response.json()["id"]
    wait_until(
        stack,
        lambda: stack.http.get(f"/v1/bulk/{bulk_id}").json()["state"] != "running",
        "the bulk requeue's end",
    )
    status = stack.http.get(f"/v1/bulk/{bulk_id}").json()
    assert (status["state"], status["done"]) == ("done", 3)
    for job_id in dead:
        assert stack.wait_for_state(job_id, "complete")["result"] == "healed"

    # A bulk cancel of deferred jobs: none of them runs.
    later = [
        stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 60})["id"] for _ in range(3)
    ]
    response = stack.http.post(
        "/v1/bulk", json={"action": "cancel", "filter": {"state": "deferred"}}
    )
    assert response.status_code == 202, response.text
    for job_id in later:
        stack.wait_for_state(job_id, "cancelled")

    # The schedule's runs are submitted and run, once each.
    def runs() -> list[dict[str, object]]:
        listed = stack.http.get("/v1/jobs", params={"job_type": "ticking", "state": "complete"})
        items: list[dict[str, object]] = listed.json()["items"]
        return items

    wait_until(stack, lambda: len(runs()) >= 2, "two scheduled runs")
    ids = [str(job["id"]) for job in runs()]
    assert len(ids) == len(set(ids))
    assert all(job_id.startswith(f"{{{DEFAULT_QUEUE}}}ticking:") for job_id in ids)


def test_a_submit_waits_for_a_replica_and_says_when_none_holds_it(
    cluster_url: str, redis_cluster: LocalCluster, log_dir: Path
) -> None:
    # A WAIT returns once met: a long timeout costs the acknowledged submit
    # nothing, and spares it a loaded machine's slow replica ACK.
    settings = {
        "REDIS_WAIT_REPLICAS": "1",
        "REDIS_WAIT_TIMEOUT_MS": "2000",
        "REDIS_SOCKET_TIMEOUT_S": "4",
    }
    with running(Stack(cluster_url, log_dir, **settings)) as stack:
        job = stack.submit("effect", {"work_s": 0})  # its replica has it: acknowledged
        assert job["state"] == "queued"

        primary = redis_cluster.primary_of(keys.queue_key(DEFAULT_QUEUE, "wake"))
        redis_cluster.replica_of(primary).stop()
        response = stack.http.post("/v1/jobs/effect", json={"work_s": 0})

        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        problem = response.json()
        assert problem["type"] == "urn:conveyor:problem:redis-replicas-short"
        assert stack.job(problem["job_id"])["state"] == "queued"  # written, and said so
