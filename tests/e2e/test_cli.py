"""The `conveyor` command, run as an operator runs it, against a live api and worker."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack, with_reader
from tests.support.auth import TEST_KEY

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
READER_KEY = "cvk_test_cli_reader_0123456789abcdef0123"


@pytest.fixture
def cli_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    yield from with_reader(redis_url, log_dir, READER_KEY)


def conveyor(
    stack: Stack, *args: str, key: str | None = TEST_KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_API_KEY"}
    env["CONVEYOR_URL"] = str(stack.http.base_url)
    if key:
        env["CONVEYOR_API_KEY"] = key
    return subprocess.run(
        [CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_operator_finds_dead_jobs_and_requeues_them_with_the_cli(cli_stack: Stack) -> None:
    stack = cli_stack
    doomed = [stack.submit("doomed", {})["id"] for _ in range(3)]
    for job_id in doomed:
        stack.wait_for_state(job_id, "dead")

    listed = as_json(
        conveyor(stack, "--json", "jobs", "list", "--state", "dead", "--job-type", "doomed")
    )
    assert {j["id"] for j in listed} == set(doomed)
    table = conveyor(stack, "jobs", "list", "--state", "dead", "--search", "boom")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "JOB_TYPE", "QUEUE", "STATE"]
    assert all(job_id in table.stdout for job_id in doomed)
    nothing = conveyor(stack, "--json", "jobs", "list", "--error-type", "NoSuchError")
    assert as_json(nothing) == []

    shown = conveyor(stack, "jobs", "show", doomed[0])
    assert shown.returncode == 0
    assert "RuntimeError: boom" in shown.stdout
    assert "retrying" in shown.stdout  # the first of its two tries
    assert conveyor(stack, "jobs", "show", "no-such-job").returncode == 4
    assert (
        conveyor(
            stack, "jobs", "requeue", stack.submit("slow", {"steps": 1, "step_s": 5})["id"]
        ).returncode
        == 5
    )

    # A read-only key may look, not act; no key at all is refused before any call.
    assert conveyor(stack, "jobs", "requeue", doomed[0], key=READER_KEY).returncode == 3
    assert conveyor(stack, "dead", "requeue", "--yes", key=READER_KEY).returncode == 3
    assert conveyor(stack, "jobs", "list", key=None).returncode == 3

    for job_id in doomed:
        stack.redis.set(f"test:healed:{job_id}", 1)
    done = conveyor(stack, "dead", "requeue", "--job-type", "doomed", "--since", "1h", "--yes")
    assert done.returncode == 0, done.stderr
    assert "requeue: 3 job(s) match" in done.stderr
    assert "3 done" in done.stderr
    for job_id in doomed:
        job = stack.wait_for_state(job_id, "complete")
        assert (job["requeues"], job["result"]) == (1, "healed")

    # Every job: the CLI says "all" and the count its preview showed, as the api asks.
    everything = conveyor(stack, "bulk", "delete", "--yes")
    assert everything.returncode == 0, everything.stderr
    for job_id in doomed:
        assert stack.http.get(f"/v1/jobs/{job_id}").status_code == 404


def test_an_operator_pauses_and_resumes_a_queue_and_sees_the_workers(cli_stack: Stack) -> None:
    stack = cli_stack
    queue = as_json(conveyor(stack, "--json", "queues"))[0]["name"]

    paused = as_json(conveyor(stack, "--json", "queues", "pause", queue))
    assert paused["paused"] is True
    job_id = stack.submit("effect", {"work_s": 0})["id"]
    time.sleep(0.5)
    assert stack.job(job_id)["state"] == "queued"
    assert conveyor(stack, "queues", "resume", queue, key=READER_KEY).returncode == 3
    assert as_json(conveyor(stack, "--json", "queues", "resume", queue))["paused"] is False
    stack.wait_for_state(job_id, "complete")

    slow = stack.submit("slow", {"steps": 20, "step_s": 0.1})["id"]
    stack.wait_for_state(slow, "in_progress")
    deadline = time.monotonic() + 5
    while True:
        (worker,) = as_json(conveyor(stack, "--json", "workers", key=READER_KEY))
        if slow in worker["running"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert worker["running"] == [slow]
    assert worker["queue"] == queue
    assert worker["concurrency"] >= 1
    assert worker["version"]
    assert "NAME" in conveyor(stack, "workers").stdout

    audit = as_json(conveyor(stack, "--json", "audit"))
    assert [(e["action"], e["target"]) for e in audit[:2]] == [("resume", queue), ("pause", queue)]
