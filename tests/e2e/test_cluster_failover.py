"""A primary SIGKILLed while the api and two workers run 2,000 jobs on the
test cluster: with REDIS_WAIT_REPLICAS=1 every acknowledged job completes;
no job runs twice at once; the api and the workers recover without a
restart. Without the wait, what the failover loses is counted and printed.

The primary that serves the queue is cut off from its replica first (frozen,
its link closed) for 0.3 s while submits go on, then killed: the writes of
that window reach no replica, so a failover certainly loses what they alone
hold. The killed node then comes back as the new primary's replica while
the submits go on (until it has synced, a wait cannot be met: 503s). The
jobs (`journaled`) write nothing to Redis: each try is noted in a local
file, a record the failover cannot lose."""

import itertools
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from conveyor_core import keys
from conveyor_core.catalog import DEFAULT_QUEUE
from tests.e2e.conftest import Stack, running
from tests.support import jobs
from tests.support.auth import AUTH_HEADERS
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster"), pytest.mark.timeout(420)]

JOBS = 2_000
SUBMITTERS = 4
# The failover starts once this many submits were answered.
KILL_AFTER = 600
COMPLETE_BOUND_S = 180.0


def submit_all(base_url: str, answered: list[tuple[str, int, str]], stop: threading.Event) -> None:
    """Submit jobs until JOBS were tried in all; note (kind, status, id) for each."""
    with httpx.Client(base_url=base_url, headers=AUTH_HEADERS, timeout=10) as http:
        while not stop.is_set() and len(answered) < JOBS:
            try:
                response = http.post("/v1/jobs/journaled", json={"work_s": 0.02})
            except httpx.HTTPError as exc:
                answered.append(("error", 0, type(exc).__name__))
                continue
            body = response.json()
            job_id = body.get("id") or body.get("job_id") or ""
            if response.status_code not in (201, 503):
                job_id = response.text[:300]  # what went wrong, for the failure message
            answered.append(("answer", response.status_code, job_id))


def tries_by_job(journal: Path) -> dict[str, list[tuple[float, float]]]:
    tries: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in journal.glob("*.log"):
        for line in path.read_text().splitlines():
            job_id, _, started_s, ended_s = line.split(" ")
            tries[job_id].append((float(started_s), float(ended_s)))
    return tries


def states(stack: Stack, job_ids: list[str]) -> dict[str, bytes | None]:
    """Each job's state as its record says (None: no record)."""
    found: dict[str, bytes | None] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        pipe = stack.redis.pipeline(transaction=False)
        for job_id in chunk:
            pipe.hget(keys.job_key(job_id), "state")
        found.update(zip(chunk, pipe.execute(), strict=True))
    return found


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_primary_killed_under_load(
    wait_replicas: int, cluster_url: str, redis_cluster: LocalCluster, log_dir: Path, tmp_path: Path
) -> None:
    env = {
        "REDIS_WAIT_REPLICAS": str(wait_replicas),
        "REDIS_WAIT_TIMEOUT_MS": "200",
        jobs.JOURNAL_ENV: str(tmp_path),
        "CONVEYOR_WORKER_MAX_JOBS": "20",
    }
    with running(Stack(cluster_url, log_dir, **env), workers=2) as stack:
        workers = {worker.process.pid for worker in stack.workers if worker.process}
        answered: list[tuple[str, int, str]] = []
        stop = threading.Event()
        submitters = [
            threading.Thread(target=submit_all, args=(stack.api.base_url, answered, stop))
            for _ in range(SUBMITTERS)
        ]
        for thread in submitters:
            thread.start()
        try:
            deadline = time.monotonic() + 120
            while len(answered) < KILL_AFTER and time.monotonic() < deadline:
                time.sleep(0.02)
            primary = redis_cluster.primary_of(keys.queue_key(DEFAULT_QUEUE, "wake"))
            redis_cluster.kill_primary(primary, cut_off_first=True)
            # Submits go on while the killed node comes back as the new
            # primary's replica (until then no wait can be met: 503s).
            redis_cluster.restore()
        finally:
            for thread in submitters:
                thread.join(timeout=120)
            stop.set()

        acknowledged = [job_id for kind, status, job_id in answered if status == 201]
        refused = [status for kind, status, _ in answered if kind == "answer" and status != 201]
        odd = [(status, text) for _, status, text in answered if status not in (0, 201, 503)]
        errors = [line for line in stack.api.output().splitlines() if '"level":"error"' in line]
        assert odd == [], f"{odd}\n" + "\n".join(errors)[-6000:]  # faults are 503s, never a 500
        assert len(acknowledged) > KILL_AFTER // 2

        # Wait until every acknowledged job that still exists is complete.
        deadline = time.monotonic() + COMPLETE_BOUND_S
        while True:
            found = states(stack, acknowledged)
            pending = [j for j, state in found.items() if state not in (None, b"complete")]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        lost = [job_id for job_id, state in found.items() if state is None]
        print(
            f"\nwait_replicas={wait_replicas}: {len(answered)} submits, {len(acknowledged)} "
            f"acknowledged, {len(refused)} refused (503), {len(lost)} acknowledged jobs lost"
        )
        assert not pending, f"{len(pending)} jobs never completed\n{stack.logs()}"
        if wait_replicas:
            assert lost == [], f"{len(lost)} acknowledged jobs lost despite the wait"

        # No job ran twice at once: each job's tries, in time order, never overlap.
        tries = tries_by_job(tmp_path)
        for job_id in acknowledged:
            if job_id in lost:
                continue
            spans = sorted(tries[job_id])
            assert spans, f"job {job_id} complete but never ran"
            for (_, ended_s), (started_s, _) in itertools.pairwise(spans):
                assert started_s >= ended_s, f"job {job_id} ran twice at once: {spans}"

        # The same api and workers serve on, with no restart.
        assert {w.process.pid for w in stack.workers if w.process} == workers
        assert all(w.process is not None and w.process.poll() is None for w in stack.workers)
        assert stack.http.get("/readyz").status_code == 200
        # A submit is acknowledged again (a slow replica ACK on a loaded
        # machine may make one short: 503, and another try).
        deadline = time.monotonic() + 30
        while (
            response := stack.http.post("/v1/jobs/journaled", json={"work_s": 0})
        ).status_code != 201:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        stack.wait_for_state(response.json()["id"], "complete")
