"""Flow control with real workers: pause and resume, priorities, limits, fairness."""

import itertools
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import cast

import httpx

from conveyor_core.local.redis_server import RedisProcess
from tests.e2e.conftest import Stack, eventually, running
from tests.support import jobs

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
    eventually(
        lambda: all(any(j in w.output() for j in waiting) for w in stack.workers), stack.logs
    )


def test_priorities_order_the_starts_of_several_workers_fifo_within_each(stack: Stack) -> None:
    for _ in range(3):
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="1")
    stack.http.post(f"/v1/queues/{QUEUE}/pause")  # let the whole backlog build up first
    priorities = [9, 3, 6, 0, 9, 3, 0, 6, 9, 0, 3, 6, 5, 5, 9, 0, 3, 6]
    submitted: list[tuple[int, int, str]] = []
    for priority in priorities:
        time.sleep(0.003)  # FIFO is by due time in ms
        job = stack.submit("effect", {"work_s": 0.15}, params={"priority": priority})
        submitted.append((priority, len(submitted), job["id"]))
    stack.http.post(f"/v1/queues/{QUEUE}/resume")

    finished = [stack.wait_for_state(job_id, "complete") for _, _, job_id in submitted]

    def start_s(job: dict[str, object]) -> float:
        return datetime.fromisoformat(str(job["started_at"])).timestamp()

    # Three workers claim concurrently, each with its own clock reading: a
    # claim that read the clock first may run second, so allow a few ms.
    slack_s = 0.05
    jobs = sorted(zip(submitted, map(start_s, finished), strict=True))
    for (earlier, earlier_s), (later, later_s) in itertools.combinations(jobs, 2):
        assert earlier_s <= later_s + slack_s, (earlier, later, jobs)
    assert max(s for _, s in jobs) - min(s for _, s in jobs) > 0.5  # they really queued


def run_and_sample(stack: Stack, job_ids: list[str], subjects: list[str]) -> dict[str, int]:
    """Until every job completes, sample how many of each subject run (as the jobs
    count themselves); the highest seen, sampled and as the jobs recorded it."""

    def count(key: str) -> int:
        return int(cast(bytes | None, stack.redis.get(key)) or 0)

    seen = dict.fromkeys(subjects, 0)
    completed_key = "test:completed:" + subjects[0].split(":")[0]
    deadline = time.monotonic() + 60
    while (completed := cast(int, stack.redis.llen(completed_key))) < len(job_ids):
        for subject in subjects:
            seen[subject] = max(seen[subject], count(jobs.running_key(subject)))
        assert time.monotonic() < deadline, f"{completed} of {len(job_ids)}\n{stack.logs()}"
        time.sleep(0.01)
    for subject in subjects:
        seen[subject] = max(seen[subject], count(f"test:max_running:{subject}"))
    return seen


def test_three_workers_never_run_more_than_a_types_limit(stack: Stack) -> None:
    for _ in range(3):
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="4")
    ids = [stack.submit("capped", {"work_s": 0.2})["id"] for _ in range(16)]
    job = stack.job(ids[-1])
    assert job["state"] == "queued"

    most = run_and_sample(stack, ids, ["capped"])

    assert most == {"capped": 2}
    for job_id in ids:
        assert stack.job(job_id)["tries"] == 1  # waiting used no try


def test_three_workers_never_run_more_than_a_keys_limit(stack: Stack) -> None:
    for _ in range(3):
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="4")
    tenants = ["a", "b", "c"]
    ids = [
        stack.submit("per_tenant", {"tenant_id": tenants[i % 3], "work_s": 0.1})["id"]
        for i in range(18)
    ]

    most = run_and_sample(stack, ids, [f"per_tenant:{t}" for t in tenants])

    assert most == {f"per_tenant:{t}": 1 for t in tenants}


def test_a_rate_of_10_per_second_is_never_exceeded(stack: Stack) -> None:
    for _ in range(3):
        stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="10")
    ids = [stack.submit("paced", {"work_s": 0})["id"] for _ in range(60)]

    for job_id in ids:
        stack.wait_for_state(job_id, "complete", timeout_s=20)

    starts = sorted(
        datetime.fromisoformat(stack.job(job_id)["started_at"]).timestamp() for job_id in ids
    )
    per_second = Counter(int(s) for s in starts)
    assert max(per_second.values()) <= 10, per_second
    assert starts[-1] - starts[0] >= 5  # 60 starts at 10 a second: over 5 s at least
    # Held, the jobs were not failed and used no try.
    assert {stack.job(job_id)["tries"] for job_id in ids} == {1}


def test_one_keys_backlog_does_not_starve_another(stack: Stack) -> None:
    a_ids = [stack.submit("fair", {"tenant_id": "a", "work_s": 0.02})["id"] for _ in range(1000)]
    b_ids = [stack.submit("fair", {"tenant_id": "b", "work_s": 0.02})["id"] for _ in range(10)]
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="3")
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="3")

    deadline = time.monotonic() + 30
    while cast(int, stack.redis.llen("test:completed:fair")) < 40:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.05)

    first = [
        i.decode() for i in cast(list[bytes], stack.redis.lrange("test:completed:fair", 0, 29))
    ]
    assert set(b_ids) <= set(first), first
    assert len(set(first) & set(a_ids)) == 20


def test_a_worker_does_not_spin_on_held_jobs(own_redis: RedisProcess, log_dir: Path) -> None:
    # A Redis of its own: INFO commandstats counts the whole server, and a
    # shared one (REDIS_URL) serves other tests' workers at the same time.
    with running(Stack(own_redis.url, log_dir)) as stack:
        held_jobs_wait_quietly(stack)


def held_jobs_wait_quietly(stack: Stack) -> None:
    stack.start_worker(CONVEYOR_WORKER_MAX_JOBS="10")
    busy = [stack.submit("capped", {"work_s": 6})["id"] for _ in range(2)]
    for job_id in busy:
        stack.wait_for_state(job_id, "in_progress")
    held = [stack.submit("capped", {"work_s": 0})["id"] for _ in range(20)]
    time.sleep(0.5)

    def commands() -> int:
        stats = cast(dict[str, dict[str, int]], stack.redis.info("commandstats"))
        return sum(int(v["calls"]) for v in stats.values())

    before = commands()
    time.sleep(3)
    per_s = (commands() - before) / 3

    # Held jobs wait on a wake-up (a slot of their type frees) or the 1 s safety
    # net; a claim of 22 entries a second and lock renewals (about 40 commands
    # a second in all), not a busy loop of claim after claim.
    assert per_s < 300, per_s
    job = stack.job(held[0])
    assert (job["state"], job["waiting_reason"]) == ("queued", "limit")
    metrics = httpx.get(f"{stack.workers[0].base_url}/metrics").text
    assert f'conveyor_jobs_held{{queue="{QUEUE}",reason="limit"}} 20.0' in metrics
