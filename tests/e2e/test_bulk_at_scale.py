"""A bulk requeue of 20,000 dead jobs against the api as a real process: it
finishes, requeues each job exactly once, and the api answers other routes
meanwhile. A bulk preview over 20,000 jobs is an operator's, stays within its
budget and leaves the api answering others.

"Meanwhile" is a fault bound, not a speed target: an action that held the
api's event loop (or Redis) for its whole run would make a read wait about
as long as the action; one that yields between its batches or pages makes it
wait a batch or two. The requeue's bound is a fraction of its own duration,
measured in the same test, so a busy machine, slowing both, cannot fail it;
the previews' is the issue's 250 ms, counted over the reads made while a
preview ran, which is well short of the longer previews' run. The figures are
printed."""

import asyncio
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis

from conveyor_api.auth import Scope
from conveyor_core import keys
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.store import JobStore
from conveyor_seed import CREATE_TASK
from tests.e2e.conftest import Stack, running
from tests.support import jobs
from tests.support.auth import (
    AUTH_HEADERS,
    TEST_KEY,
    TEST_KEY_NAME,
    api_key,
    bearer,
    keys_env,
)
from tests.support.dead import in_groups, make_dead

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("bulk_at_scale")]

DEAD_JOBS = 20_000
# A preview's answer's bound: its time limit (2 s, the default), a page more
# and a busy machine's slack.
PREVIEW_ANSWER_BOUND_S = 5.0


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_bulk_requeue_of_20000_dead_jobs_keeps_the_api_responsive(
    stack: Stack, redis: ArqRedis
) -> None:
    dead = await make_dead(redis, CREATE_TASK, {"sleep_s": 0}, DEAD_JOBS)
    some_job = dead[0]
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # another client's reads, while the bulk action runs
        with httpx.Client(base_url=stack.http.base_url, headers=AUTH_HEADERS, timeout=10) as http:
            while not stop.is_set():
                for path in ("/v1/queues", f"/v1/jobs/{some_job}", "/v1/jobs?limit=20"):
                    started = time.perf_counter()
                    assert http.get(path).status_code == 200
                    latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        started_s = time.monotonic()
        response = await asyncio.to_thread(
            stack.http.post,
            "/v1/bulk",
            json={"action": "requeue", "filter": {"state": "dead", "job_type": "create_task"}},
        )
        assert response.status_code == 202, response.text
        bulk_id = response.json()["id"]
        progress = []
        while True:
            status = (await asyncio.to_thread(stack.http.get, f"/v1/bulk/{bulk_id}")).json()
            progress.append(status["done"])
            if status["state"] != "running":
                break
            await asyncio.sleep(0.2)
        took_s = time.monotonic() - started_s
    finally:
        stop.set()
        prober.join()

    assert (status["state"], status["done"], status["skipped"]) == ("done", DEAD_JOBS, 0)
    assert len(set(progress)) > 3, progress  # it reported progress on the way
    assert await redis.zcard(CREATE_TASK.queue) == DEAD_JOBS
    assert await redis.zcard(keys.index_key(CREATE_TASK.queue, "dead")) == 0
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in dead:
            pipe.hget(keys.job_key(job_id), "requeues")
        requeues = await pipe.execute()
    assert set(requeues) == {b"1"}  # each exactly once
    assert len(latencies) > 50
    print(
        f"bulk requeue of {DEAD_JOBS}: {took_s:.1f} s, {status['batches']} batches; "
        f"api meanwhile: {len(latencies)} requests, p99 {p99(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    # No read waited for the action: a quarter of it is ten times what a
    # read waits behind a batch or two (about 2 % of it here, 100 batches).
    assert p99(latencies) < took_s / 4, (took_s, sorted(latencies)[-5:])


READER_KEY = "cvk_test_scale_reader_0123456789abcdef01234"
STORED_JOBS = 20_000
# Filters that match none of them: one read from each job's index entry, one
# (a time range) from each whole job, the costliest reading a preview does.
NOTHING = [{"error_type": "NoSuchError"}, {"since": "2100-01-01T00:00:00Z"}]
# The issue's bound on other clients' reads while a preview runs.
READS_DURING_PREVIEW_P99_S = 0.25


async def store_queued_jobs(redis: ArqRedis, count: int) -> None:
    """`count` queued jobs, through the submit script, a group at a time."""
    store = JobStore(redis, load_catalog(jobs.MODULES.split(",")))
    await in_groups([partial(enqueue, store, CREATE_TASK, {"sleep_s": 0})] * count)


async def test_a_bulk_preview_over_20000_jobs_is_an_admins_and_has_a_budget(
    redis_url: str, log_dir: Path, redis: ArqRedis
) -> None:
    await store_queued_jobs(redis, STORED_JOBS)
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY), api_key("viewer", READER_KEY, [Scope.JOBS_READ])
    )
    # The defaults: at most 10,000 rows, 2 s per preview.
    with running(Stack(redis_url, log_dir, CONVEYOR_API_KEYS=keys)) as stack:
        refused = stack.http.post("/v1/bulk/preview", json=NOTHING[0], headers=bearer(READER_KEY))
        assert refused.status_code == 403, refused.text

        previewing = threading.Event()
        during: list[float] = []  # reads that started and ended while a preview ran
        stop = threading.Event()

        def probe() -> None:  # another client's reads, while previews run
            with httpx.Client(
                base_url=stack.http.base_url, headers=AUTH_HEADERS, timeout=10
            ) as http:
                while not stop.is_set():
                    for path in ("/v1/queues", "/v1/jobs?limit=20"):
                        began_during = previewing.is_set()
                        started = time.perf_counter()
                        assert http.get(path).status_code == 200
                        took = time.perf_counter() - started
                        if began_during and previewing.is_set():
                            during.append(took)
                    time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        answers, took_s = [], []
        try:
            time.sleep(0.2)  # the probe's connection is made before the first preview
            for nothing in NOTHING * 3:  # back to back: one preview at a time per key
                previewing.set()
                started = time.monotonic()
                answer = await asyncio.to_thread(stack.http.post, "/v1/bulk/preview", json=nothing)
                took_s.append(time.monotonic() - started)
                previewing.clear()
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
        finally:
            stop.set()
            prober.join()

        # The 8 callers of one key at once: one preview runs, the rest wait their turn.
        with httpx.Client(base_url=stack.http.base_url, headers=AUTH_HEADERS, timeout=10) as http:
            at_once = await asyncio.gather(
                *(
                    asyncio.to_thread(http.post, "/v1/bulk/preview", json=NOTHING[1])
                    for _ in range(8)
                )
            )
        statuses = sorted(a.status_code for a in at_once)
        assert set(statuses) == {200, 429}, statuses
        for turned_away in (a for a in at_once if a.status_code == 429):
            assert "one at a time" in turned_away.json()["detail"]

        # A client that gives up: its preview stops at the next page (a time range
        # is checked on whole jobs, so each page costs the api real work).
        whole_jobs = {"until": "2100-01-01T00:00:00Z"}
        with pytest.raises(httpx.ReadTimeout):
            stack.http.post("/v1/bulk/preview", json=whole_jobs, timeout=0.2)
        deadline = time.monotonic() + 5
        while not any(
            line["message"] == "bulk preview stopped: the client went away"
            for line in stack.log_lines(stack.api)
        ):
            assert time.monotonic() < deadline, "the preview went on without its client"
            await asyncio.sleep(0.1)

    for counted in answers:  # a lower bound: its budget ran out before the 20,000 jobs did
        assert (counted["count"], counted["exact"]) == (0, False)
        assert 0 < counted["scanned"] <= 10_000
    # A fault bound, not a speed target: the 2 s limit, and the slack of a busy machine.
    assert max(took_s) < PREVIEW_ANSWER_BOUND_S, took_s
    print(
        f"preview over {STORED_JOBS} jobs: {[round(t, 2) for t in took_s]} s, scanned "
        f"{[a['scanned'] for a in answers]}; 8 at once: {statuses}; reads meanwhile: "
        f"{len(during)}, p99 {p99(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms"
    )
    assert len(during) > 20
    # The issue's bound for other clients' reads during a preview. It can fail:
    # a preview that held the api's event loop would hold a read for its whole
    # run, and the whole-jobs previews run longer than the bound (asserted).
    assert max(took_s) > 2 * READS_DURING_PREVIEW_P99_S, ("too quick to tell a held loop", took_s)
    assert p99(during) < READS_DURING_PREVIEW_P99_S, (took_s, sorted(during)[-5:])
