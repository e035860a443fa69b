"""Debounce with the real api and a worker: a burst of 1,000 submits with one
key inside its window leaves one job (keep-first) or runs once with the last
payload (replace)."""

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.conftest import Stack

QUEUE = "arq:queue"


def post(stack: Stack, work_s: float, **params: str | float) -> httpx.Response:
    return stack.http.post("/v1/jobs/effect", json={"work_s": work_s}, params=params)


def test_1000_concurrent_keep_first_submits_leave_one_job(stack: Stack) -> None:
    params: dict[str, str | float] = {"debounce_key": "burst", "debounce_window_s": 60}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(stack, i / 1000, **params), range(1000)))

    assert sorted({a.status_code for a in answers}) == [200, 201]
    assert [a.status_code for a in answers].count(201) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    assert {a.headers.get("conveyor-debounce") for a in answers} == {None, "kept"}
    assert stack.redis.zcard(QUEUE) == 1


def test_1000_replace_submits_run_once_with_the_last_payload(stack: Stack) -> None:
    stack.start_worker()
    params: dict[str, str | float] = {
        "debounce_key": "burst",
        "debounce_window_s": 1.5,
        "debounce_mode": "replace",
        "debounce_delay": "true",
    }
    answers = [post(stack, i / 1000, **params) for i in range(1000)]
    (job_id,) = {a.json()["id"] for a in answers}
    assert [a.headers.get("conveyor-debounce") for a in answers[1:]] == ["replaced"] * 999

    job = stack.wait_for_state(job_id, "complete")

    assert job["payload"] == {"work_s": 0.999}
    assert len(stack.starts(job_id)) == 1
    assert stack.redis.get("test:effects") == b"1"  # one job ran in all
