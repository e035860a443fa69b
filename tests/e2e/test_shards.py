"""A queue over three shards with real processes on one node: the api spreads
submits over the shards, two workers run them all, and the queue reads,
pauses and resumes as one."""

import time
from collections import Counter
from pathlib import Path

from conveyor_core import keys
from tests.e2e.conftest import Stack, eventually, running
from tests.support import jobs, sharded

MODULES = f"{jobs.MODULES},{sharded.__name__}"
SHARDS = keys.shard_names(sharded.QUEUE, 3)


def test_a_sharded_queue_runs_on_every_shard_and_reads_pauses_and_resumes_as_one(
    redis_url: str, log_dir: Path
) -> None:
    stack = Stack(redis_url, log_dir, CONVEYOR_JOB_MODULES=MODULES)
    with running(stack):
        for _ in range(2):
            stack.start_worker(CONVEYOR_WORKER_QUEUE=sharded.QUEUE, CONVEYOR_WORKER_MAX_JOBS="3")
        submitted = [stack.submit("sharded_effect", {"work_s": 0})["id"] for _ in range(30)]
        assert set(Counter(keys.queue_of(job_id) for job_id in submitted)) == set(SHARDS)
        for job_id in submitted:
            job = stack.wait_for_state(job_id, "complete")
            assert job["queue"] == sharded.QUEUE
        # Both workers took part.
        eventually(
            lambda: all(any(j in w.output() for j in submitted) for w in stack.workers), stack.logs
        )

        assert stack.http.post(f"/v1/queues/{sharded.QUEUE}/pause").status_code == 200
        waiting = [stack.submit("sharded_effect", {"work_s": 0})["id"] for _ in range(30)]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # sampled throughout: no shard starts one
            assert all(stack.job(j)["state"] == "queued" for j in waiting[::5]), stack.logs()
            time.sleep(0.1)
        (queue,) = [
            q for q in stack.http.get("/v1/queues").json()["queues"] if q["name"] == sharded.QUEUE
        ]
        assert (queue["paused"], queue["ready"], queue["shards"]) == (True, 30, 3)
        listed = stack.http.get("/v1/jobs", params={"queue": sharded.QUEUE, "state": "queued"})
        assert sorted(j["id"] for j in listed.json()["items"]) == sorted(waiting)

        assert stack.http.post(f"/v1/queues/{sharded.QUEUE}/resume").status_code == 200
        for job_id in waiting:
            stack.wait_for_state(job_id, "complete", timeout_s=15)
        history = stack.http.get(f"/v1/queues/{sharded.QUEUE}/history", params={"minutes": 5})
        assert sum(m["counts"]["complete"] for m in history.json()["minutes"]) == 60
