"""Flow control with real workers: pause and resume, priorities, limits, fairness."""

import time

import httpx

from tests.e2e.conftest import Stack

QUEUE = "arq:queue"


def started(stack: Stack, job_ids: list[str]) -> list[str]:
    """The jobs among `job_ids` that have begun a try (each test job records its starts)."""
    with stack.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(f"test:starts:{job_id}")
        return [job_id for job_id, n in zip(job_ids, pipe.execute(), strict=True) if n]


def test_a_paused_queue_starts_nothing_on_any_worker_and_resume_drains_it(stack: Stack) -> None:
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="2")
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="2")
    running = [stack.submit("slow", {"steps": 10, "step_s": 0.15})["id"] for _ in range(2)]
    for job_id in running:
        stack.wait_for_state(job_id, "in_progress")

    assert stack.http.post(f"/v1/queues/{QUEUE}/pause").status_code == 200
    waiting = [stack.submit("effect", {"work_s": 0})["id"] for _ in range(20)]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # sampled throughout: nothing starts
        assert started(stack, waiting) == [], stack.logs()
        time.sleep(0.05)
    for job_id in running:  # the jobs that ran when it was paused finished
        assert stack.job(job_id)["state"] == "complete"
    job = stack.job(waiting[0])
    assert (job["state"], job["waiting_reason"]) == ("queued", "paused")
    (queue,) = stack.http.get("/v1/queues").json()["queues"]
    assert (queue["paused"], queue["ready"]) == (True, 20)
    for worker in stack.workers:
        metrics = httpx.get(f"{worker.base_url}/metrics").text
        assert f'conveyor_queue_paused{{queue="{QUEUE}"}} 1.0' in metrics

    assert stack.http.post(f"/v1/queues/{QUEUE}/resume").status_code == 200
    for job_id in waiting:
        stack.wait_for_state(job_id, "complete", timeout_s=15)
    # Both workers took part: the flag and the wake-up reach every replica.
    assert all(any(j in w.output() for j in waiting) for w in stack.workers)
