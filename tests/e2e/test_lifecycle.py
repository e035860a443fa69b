"""Every state of a job's life, through the api, with real worker processes."""

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.connections import RedisSettings, create_pool

from conveyor_core.catalog import DEFAULT_QUEUE
from conveyor_core.serializer import job_deserializer, job_serializer
from tests.e2e.conftest import Stack, running
from tests.support import jobs

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(any_redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api on one Redis node, then on a cluster: each test here runs on both."""
    with running(Stack(any_redis_url, log_dir)) as stack:
        yield stack


@pytest.fixture
def node_stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api on one Redis node (what a cluster does not offer: bare arq clients)."""
    with running(Stack(redis_url, log_dir)) as stack:
        yield stack


def test_queued_until_a_worker_runs_it(stack: Stack) -> None:
    job = stack.submit("effect", {"work_s": 0})
    assert stack.job(job["id"])["state"] == "queued"  # no worker yet

    stack.start_worker()
    done = stack.wait_for_state(job["id"], "complete")
    assert done["result"] == "done"
    assert done["tries"] == 1
    assert done["started_at"] >= done["enqueued_at"]
    assert done["finished_at"] >= done["started_at"]


def test_sse_streams_every_state_and_progress_change(stack: Stack) -> None:
    stack.start_worker()
    # Deferred long enough for the stream to open first on a busy machine.
    job = stack.submit("slow", {"steps": 5, "step_s": 0.3}, params={"defer_by_s": 2})

    events = stack.events(job["id"])

    assert {name for name, _ in events} == {"job"}
    states = [data["state"] for _, data in events]
    assert states[0] == "deferred"
    assert states[-1] == "complete"
    assert "in_progress" in states
    assert states.index("in_progress") < states.index("complete")
    progress = [data["progress"]["percent"] for _, data in events if data["state"] == "in_progress"]
    assert progress == sorted(progress)
    # Reports arrived as the job went, not only at its end. Not necessarily
    # each: changes that come faster than the stream sends them (an api
    # busier than a step's 0.3 s) arrive as one, the latest.
    assert len({20, 40, 60, 80} & set(progress)) >= 2, progress
    assert events[-1][1]["result"] == 5
    versions = [data["version"] for _, data in events]
    assert versions == sorted(set(versions))


def test_failures_are_retried_with_growing_backoff(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("flaky", {"fail_times": 3})

    retrying = stack.wait_for_state(job["id"], "retrying")
    assert retrying["error"]["type"] == "RuntimeError"
    assert retrying["next_try_at"] is not None

    done = stack.wait_for_state(job["id"], "complete")
    assert done["tries"] == 4
    assert done["result"] == 4
    assert done["error"] is None
    starts = stack.starts(job["id"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 3
    # Equal jitter: the delay before try k+1 is at least half of base * 2**(k-1).
    policy = jobs.JOB_TYPES[0].retry
    for k, gap in enumerate(gaps, start=1):
        assert gap >= policy.backoff_base_s * 2 ** (k - 1) / 2, gaps
    assert gaps[0] < gaps[-1], gaps


def test_exhausted_retries_go_to_the_dead_letters_and_can_be_requeued(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("doomed", {})

    dead = stack.wait_for_state(job["id"], "dead")
    assert dead["tries"] == 2
    assert dead["error"]["message"] == "boom"
    assert "RuntimeError: boom" in dead["error"]["traceback"]
    listed = stack.http.get("/v1/jobs", params={"state": "dead"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    (queue,) = stack.http.get("/v1/queues").json()["queues"]
    assert queue["dead"] == 1

    stack.redis.set(f"test:healed:{job['id']}", "1")
    response = stack.http.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 202
    assert response.json()["state"] == "queued"

    done = stack.wait_for_state(job["id"], "complete")
    assert done["result"] == "healed"
    assert done["requeues"] == 1
    assert done["tries"] == 1  # a new try, counted afresh
    assert stack.http.get("/v1/jobs", params={"state": "dead"}).json()["items"] == []
    assert len(stack.starts(job["id"])) == 3


def test_a_permanent_error_is_not_retried(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("permanent", {})
    dead = stack.wait_for_state(job["id"], "dead")
    assert dead["tries"] == 1
    assert dead["error"]["type"] == "PermanentJobError"


def test_a_timeout_follows_the_policy(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("stuck", {"steps": 10, "step_s": 0.2})
    dead = stack.wait_for_state(job["id"], "dead")
    assert dead["tries"] == 1  # this type does not retry timeouts
    assert dead["error"]["type"] == "TimeoutError"
    assert "0.3 s" in dead["error"]["message"]


def test_cancelling_a_running_job_stops_it(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("slow", {"steps": 100, "step_s": 0.1})
    stack.wait_for_state(job["id"], "in_progress")

    response = stack.http.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True

    cancelled = stack.wait_for_state(job["id"], "cancelled", timeout_s=10)
    assert cancelled["progress"]["percent"] < 100
    assert not stack.redis.exists(f"test:finished:{job['id']}")


def test_a_cancelled_deferred_job_never_runs(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 0.5})
    assert stack.http.delete(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"

    later = stack.submit("effect", {"work_s": 0}, params={"defer_by_s": 1.0})
    stack.wait_for_state(later["id"], "complete")  # past the cancelled job's time
    assert stack.job(job["id"])["state"] == "cancelled"
    assert stack.starts(job["id"]) == []


def test_a_job_enqueues_a_follow_up_that_keeps_the_request_id(stack: Stack) -> None:
    stack.start_worker()
    job = stack.submit("parent", {}, headers={"X-Request-ID": "req-123"})
    done = stack.wait_for_state(job["id"], "complete")
    child = stack.wait_for_state(done["result"], "complete")
    assert child["job_type"] == "effect"
    assert child["request_id"] == done["request_id"] == "req-123"


async def test_a_job_from_a_bare_arq_client_runs_and_is_tracked(node_stack: Stack) -> None:
    stack = node_stack
    stack.start_worker()
    # arq's own client, with the serializer the docs tell a bare arq client to pass.
    bare = await create_pool(
        RedisSettings.from_dsn(stack.redis_url),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    try:
        job = await bare.enqueue_job("effect", work_s=0, _queue_name=DEFAULT_QUEUE)
    finally:
        await bare.aclose()
    assert job is not None

    done = stack.wait_for_state(job.job_id, "complete")
    assert done["job_type"] == "effect"
    assert done["payload"] == {"work_s": 0}
    assert done["result"] == "done"


def test_sigterm_lets_a_running_job_finish_and_exits_zero(stack: Stack) -> None:
    worker = stack.start_worker()
    job = stack.submit("slow", {"steps": 20, "step_s": 0.1})
    stack.wait_for_state(job["id"], "in_progress")

    assert worker.stop(signal.SIGTERM) == 0
    done = stack.job(job["id"])
    assert done["state"] == "complete"
    assert done["tries"] == 1


def test_sigterm_requeues_what_does_not_finish_in_time(stack: Stack) -> None:
    first = stack.start_worker(CONVEYOR_WORKER_SHUTDOWN_WAIT_S="1")
    job = stack.submit("slow", {"steps": 40, "step_s": 0.1})
    stack.wait_for_state(job["id"], "in_progress")

    assert first.stop(signal.SIGTERM) == 0
    assert stack.job(job["id"])["state"] == "queued"  # back in the queue, not lost

    stack.start_worker()
    done = stack.wait_for_state(job["id"], "complete")
    assert done["tries"] == 1  # the try the shutdown cut short does not count


def test_two_shutdowns_do_not_use_up_a_single_try_job(stack: Stack) -> None:
    """max_tries 1, cut short by SIGTERM twice: it still completes on the third worker."""
    job = stack.submit("slow_once", {"steps": 30, "step_s": 0.1})
    for _ in range(2):
        worker = stack.start_worker(CONVEYOR_WORKER_SHUTDOWN_WAIT_S="1")
        stack.wait_for_state(job["id"], "in_progress")
        assert worker.stop(signal.SIGTERM) == 0
        back = stack.job(job["id"])
        assert (back["state"], back["tries"]) == ("queued", 0)

    stack.start_worker()
    done = stack.wait_for_state(job["id"], "complete", timeout_s=30)
    assert done["tries"] == 1
    assert done["result"] == 30
