"""Workers SIGKILLed mid-run lose nothing: every job completes, each side effect once."""

import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack, eventually
from tests.support import jobs
from tests.support.processes import ServiceProcess

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
    assert all(stack.redis.get(jobs.effect_key(j)) == b"1" for j in job_ids)

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


def stale_calls(worker: ServiceProcess) -> dict[str, float]:
    """The worker's conveyor_stale_calls_total by call."""
    text = httpx.get(worker.base_url + "/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "conveyor_stale_calls":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["call"]] = sample.value
    return counts


@pytest.mark.timeout(120)
def test_a_frozen_workers_stale_try_changes_nothing_of_the_live_one(stack: Stack) -> None:
    """Worker A is frozen (SIGSTOP) past its lock's TTL while running a job;
    worker B claims the job again and completes it; A resumes: its progress,
    lock renewal and end are refused and counted, and the record keeps B's try."""
    short_lock = {"CONVEYOR_WORKER_LOCK_TTL_S": "1", "CONVEYOR_WORKER_MAX_JOBS": "1"}
    frozen = stack.start_worker(**short_lock)
    job_id = stack.submit("slow", {"steps": 30, "step_s": 0.1})["id"]
    deadline = time.monotonic() + 20
    while not stack.starts(job_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stack.starts(job_id), stack.logs()
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        stack.start_worker(**short_lock)
        done = stack.wait_for_state(job_id, "complete")
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    assert (done["tries"], done["result"]) == (2, 30)

    deadline = time.monotonic() + 30
    while (calls := stale_calls(frozen)).keys() < {"end", "progress", "renew"}:
        assert time.monotonic() < deadline, f"{calls}\n{frozen.output()[-3000:]}"
        time.sleep(0.1)
    assert all(n >= 1 for n in calls.values()), calls
    eventually(lambda: "this try is stale" in frozen.output(), frozen.output)

    # The record is the live try's alone: unchanged by anything the stale try sent.
    after = stack.job(job_id)
    assert after == done
    assert [a["number"] for a in after["attempts"]] == [2]
    assert len(stack.starts(job_id)) == 2
