"""Workers SIGKILLed mid-run lose nothing: every job completes, each side effect once."""

import signal
import time

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

JOBS = 200
KILLS = 3
RESTART_BOUND_S = 30.0


def running_ids(stack: Stack) -> set[str]:
    page = stack.http.get("/v1/jobs", params={"state": "in_progress", "limit": 200}).json()
    return {job["id"] for job in page["items"]}


@pytest.mark.timeout(240)
def test_sigkilled_workers_lose_no_job_and_repeat_no_side_effect(stack: Stack) -> None:
    worker = stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="5")
    job_ids = [stack.submit("effect", {"work_s": 0.15})["id"] for _ in range(JOBS)]

    killed: list[tuple[float, set[str]]] = []  # (when, the jobs it was running)
    for _ in range(KILLS):
        deadline = time.monotonic() + 30
        while not (running := running_ids(stack)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the worker get well into its jobs
        running = running_ids(stack)
        worker.stop(signal.SIGKILL)
        killed.append((time.time(), running))
        worker = stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="5")

    deadline = time.monotonic() + 150
    pending = set(job_ids)
    while pending and time.monotonic() < deadline:
        pending = {j for j in pending if stack.job(j)["state"] != "complete"}
        time.sleep(0.2)

    assert not pending, f"{len(pending)} jobs never completed\n{stack.logs()}"
    assert stack.redis.get("test:effects") == str(JOBS).encode()  # each applied exactly once
    assert all(stack.redis.get(f"test:effect:{j}") == b"1" for j in job_ids)

    def cut_short(killed_at: float, ids: set[str]) -> set[str]:
        """The jobs that were running at the kill and had not finished before it.

        A job the worker had claimed but not yet started counts as in progress,
        yet no try of it was cut short: only those that started are.
        """
        done_at = {j: float(stack.redis.get(f"test:done_at:{j}") or 0) for j in ids}  # type: ignore[arg-type]
        started = {j for j in ids if any(t < killed_at for t in stack.starts(j))}
        return {j for j in started if done_at[j] > killed_at}

    interrupted = set().union(*(cut_short(at, ids) for at, ids in killed))
    assert interrupted, "no kill hit a running job; the test proved nothing"
    for killed_at, ids in killed:
        for job_id in cut_short(killed_at, ids):
            restarts = [t for t in stack.starts(job_id) if t > killed_at]
            assert restarts, f"job {job_id} killed at {killed_at} never restarted"
            assert restarts[0] - killed_at < RESTART_BOUND_S
    assert all(stack.job(j)["tries"] >= 2 for j in interrupted)
