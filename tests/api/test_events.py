"""`/v1/events`: many jobs' changes on one SSE stream, against a real Redis."""

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis as redis_sync

from conveyor_api.events import JobChanges
from conveyor_api.routes.events import MAX_JOBS_PER_STREAM
from conveyor_core import keys
from tests.support.auth import (
    AUTH_HEADERS,
    TEST_KEY,
    TEST_KEY_NAME,
    api_key,
    bearer,
    keys_env,
)
from tests.support.processes import ServiceProcess, api_process, stop_all, worker_process

Event = tuple[str, dict[str, Any]]


def parse(lines: list[str]) -> list[Event]:
    """(event, data) pairs of an event stream's lines."""
    events: list[Event] = []
    name = "message"
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.removeprefix("data:"))))
    return events


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    return problem


async def submit(client: httpx.AsyncClient, job_type: str, payload: dict[str, Any]) -> str:
    response = await client.post(f"/v1/jobs/{job_type}", json=payload)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_finished_and_missing_jobs_are_sent_once_then_the_stream_ends(
    client: httpx.AsyncClient,
) -> None:
    first = await submit(client, "effect", {"work_s": 0})
    second = await submit(client, "effect", {"work_s": 0})
    for job_id in (first, second):
        assert (await client.delete(f"/v1/jobs/{job_id}")).status_code == 200

    # Ids repeat and one never existed; every job is finished, so the stream ends.
    ids = [first, "no-such-job", second, first]
    response = await client.get("/v1/events", params={"job_id": ids})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse(response.text.splitlines())
    assert events[-1] == ("end", {})
    jobs = {data["id"]: data["state"] for name, data in events if name == "job"}
    assert jobs == {first: "cancelled", second: "cancelled"}
    assert [name for name, _ in events].count("job") == 2  # a repeated id is watched once
    assert ("missing", {"id": "no-such-job"}) in events


async def test_a_stream_cancelled_as_a_change_wakes_it_ends_there() -> None:
    """A stream cancelled (its client gone, the api stopping) in the loop turn
    a change wakes its wait. Python 3.11's asyncio.wait_for lost that cancel:
    the wait returned, and the stream read the job and sent it to nobody."""
    changes = JobChanges(["job-1"], release=lambda job_id, changes: None)
    changes.take()  # the first read's marks
    woke: list[bool] = []

    async def stream() -> None:
        woke.append(await changes.wait(timeout_s=30))

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)  # the stream waits
    # One turn, no await between: the change, and the cancel.
    changes.mark("job-1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert woke == []


async def test_no_job_ids_is_a_422_problem(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/v1/events"), 422)
    assert [e["field"] for e in problem["errors"]] == ["job_id"]


async def test_more_job_ids_than_the_bound_is_a_422_problem(client: httpx.AsyncClient) -> None:
    ids = [f"job-{n}" for n in range(MAX_JOBS_PER_STREAM + 1)]
    problem = assert_problem(await client.get("/v1/events", params={"job_id": ids}), 422)
    assert [e["field"] for e in problem["errors"]] == ["job_id"]
    assert str(MAX_JOBS_PER_STREAM) in problem["detail"]


async def test_an_id_that_cannot_be_a_job_id_is_a_422_problem(client: httpx.AsyncClient) -> None:
    ids = ["fine", "no spaces/or slashes"]
    problem = assert_problem(await client.get("/v1/events", params={"job_id": ids}), 422)
    assert [e["field"] for e in problem["errors"]] == ["job_id.1"]


@pytest.fixture
def services(redis_url: str, log_dir: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    # Real servers: the in-process transport would buffer a stream until it ends.
    api = api_process(redis_url, log_dir)
    worker = worker_process(redis_url, log_dir)
    try:
        yield api.start(), worker.start()
    finally:
        stop_all(worker, api)


@pytest.mark.e2e
def test_one_stream_carries_every_jobs_progress_until_all_finish(
    services: tuple[ServiceProcess, ServiceProcess],
) -> None:
    api, _ = services
    http = httpx.Client(base_url=api.base_url, headers=AUTH_HEADERS, timeout=10)
    slow = [
        http.post("/v1/jobs/slow", json={"steps": 4, "step_s": 0.3 * n}).json()["id"]
        for n in (1, 2, 3)
    ]
    # Deferred long enough for the stream to open first on a busy machine.
    deferred = http.post("/v1/jobs/effect", json={"work_s": 0}, params={"defer_by_s": 2}).json()[
        "id"
    ]
    dying = http.post("/v1/jobs/permanent", json={}).json()["id"]
    ids = [*slow, deferred, dying]

    lines: list[str] = []
    with http.stream("GET", "/v1/events", params={"job_id": ids}) as stream:
        assert stream.status_code == 200
        lines.extend(stream.iter_lines())
    http.close()

    events = parse(lines)
    assert events[-1] == ("end", {})
    by_job: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    for name, data in events[:-1]:
        assert name == "job"
        by_job[data["id"]].append(data)
    for job_id in slow:
        progress = [j["progress"]["percent"] for j in by_job[job_id] if j["state"] == "in_progress"]
        # Its reports arrived on the way. Not necessarily each: changes that come
        # faster than the stream sends them (an api busier than a step) arrive
        # as one, the latest; and the fastest job may be under way before the
        # stream opens.
        assert {25, 50, 75} & set(progress), (job_id, progress)
        assert by_job[job_id][-1]["state"] == "complete"
    assert by_job[deferred][0]["state"] == "deferred"
    assert by_job[deferred][-1]["state"] == "complete"
    assert by_job[dying][-1]["state"] == "dead"
    for changes in by_job.values():
        versions = [j["version"] for j in changes]
        assert versions == sorted(set(versions))  # each change once, in order


@pytest.mark.e2e
def test_a_job_requeued_from_the_dead_letters_streams_again_on_a_new_stream(
    services: tuple[ServiceProcess, ServiceProcess], redis_url: str
) -> None:
    """What the page does: the stream ends at `dead`; after a requeue it opens a new one."""
    api, _ = services
    http = httpx.Client(base_url=api.base_url, headers=AUTH_HEADERS, timeout=10)
    job_id = http.post("/v1/jobs/doomed", json={}).json()["id"]
    with http.stream("GET", "/v1/events", params={"job_id": job_id}) as stream:
        first = parse(list(stream.iter_lines()))
    assert first[-2][1]["state"] == "dead"

    with redis_sync.Redis.from_url(redis_url) as direct:
        direct.set(f"test:healed:{job_id}", "1")
    assert http.post(f"/v1/jobs/{job_id}/retry").status_code == 202
    with http.stream("GET", "/v1/events", params={"job_id": job_id}) as stream:
        second = parse(list(stream.iter_lines()))
    http.close()

    assert second[-1] == ("end", {})
    assert second[-2][1]["state"] == "complete"
    assert second[-2][1]["requeues"] == 1


@pytest.mark.e2e
def test_an_idle_stream_stays_open_until_its_job_changes(
    services: tuple[ServiceProcess, ServiceProcess],
) -> None:
    """Nothing is sent while nothing changes; the change wakes the stream at once."""
    api, _ = services
    http = httpx.Client(base_url=api.base_url, headers=AUTH_HEADERS, timeout=10)
    job_id = http.post("/v1/jobs/effect", json={"work_s": 0}, params={"defer_by_s": 30}).json()[
        "id"
    ]
    lines: list[str] = []
    first_event = threading.Event()

    def read() -> None:
        with http.stream("GET", "/v1/events", params={"job_id": job_id}) as stream:
            for line in stream.iter_lines():
                lines.append(line)
                if line.startswith("data:"):
                    first_event.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first_event.wait(10)
    assert http.delete(f"/v1/jobs/{job_id}").status_code == 200
    reader.join(10)
    http.close()

    assert not reader.is_alive()
    states = [data.get("state") for name, data in parse(lines) if name == "job"]
    assert states == ["deferred", "cancelled"]


OTHER_KEY = "cvk_test_other_0123456789abcdef0123456789ab"


def limited_api(redis_url: str, log_dir: Path, **env: str) -> Iterator[ServiceProcess]:
    """An api (no worker) that takes the test key and `other`, with `env`'s stream limits."""
    keys = keys_env(api_key(TEST_KEY_NAME, TEST_KEY), api_key("other", OTHER_KEY))
    api = api_process(redis_url, log_dir, CONVEYOR_API_KEYS=keys, **env)
    try:
        yield api.start()
    finally:
        stop_all(api)


@pytest.fixture
def few_streams(redis_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    yield from limited_api(
        redis_url,
        log_dir,
        CONVEYOR_API_SSE_STREAMS_PER_KEY="3",
        CONVEYOR_API_SSE_STREAMS_MAX="5",
        CONVEYOR_API_SSE_MAX_LIFETIME_S="120",
    )


@pytest.fixture
def short_streams(redis_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    yield from limited_api(redis_url, log_dir, CONVEYOR_API_SSE_MAX_LIFETIME_S="1")


def deferred_job(http: httpx.Client) -> str:
    """A job that waits ten minutes: its streams stay open meanwhile."""
    response = http.post("/v1/jobs/effect", json={"work_s": 0}, params={"defer_by_s": 600})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def stream_status(http: httpx.Client, path: str, **params: Any) -> int:
    """The status a new stream gets (closed at once)."""
    with http.stream("GET", path, params=params) as stream:
        return stream.status_code


def wait_until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_key_past_its_live_streams_is_refused_until_one_closes(
    few_streams: ServiceProcess,
) -> None:
    mine = httpx.Client(base_url=few_streams.base_url, headers=AUTH_HEADERS, timeout=10)
    theirs = httpx.Client(base_url=few_streams.base_url, headers=bearer(OTHER_KEY), timeout=10)
    job_id = deferred_job(mine)
    with contextlib.ExitStack() as open_streams:
        held = [
            open_streams.enter_context(mine.stream("GET", "/v1/events", params={"job_id": job_id}))
            for _ in range(3)
        ]
        assert [s.status_code for s in held] == [200, 200, 200]

        refused = mine.get("/v1/events", params={"job_id": job_id})  # the key's 4th
        problem = assert_problem(refused, 429)
        assert "'tests' holds 3 live streams" in problem["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert mine.get(f"/v1/jobs/{job_id}/events").status_code == 429  # every kind of stream

        for _ in range(2):  # another key has its own slots, up to the process's 5
            open_streams.enter_context(theirs.stream("GET", f"/v1/jobs/{job_id}/events"))
        full = assert_problem(theirs.get("/v1/events", params={"job_id": job_id}), 429)
        assert "process serves 5 live streams" in full["detail"]

        metrics = mine.get("/metrics").text
        assert "conveyor_api_live_streams 5.0" in metrics
        assert 'conveyor_api_live_streams_refused_total{limit="key"} 2.0' in metrics
        assert 'conveyor_api_live_streams_refused_total{limit="process"} 1.0' in metrics

        held[0].close()  # the client goes away: its slot comes back
        wait_until(lambda: stream_status(mine, "/v1/events", job_id=job_id) == 200, timeout_s=20)
    mine.close()
    theirs.close()


@pytest.mark.e2e
def test_a_stream_ends_at_its_lifetime_and_a_reconnect_resumes_after_its_last_event(
    short_streams: ServiceProcess,
) -> None:
    http = httpx.Client(base_url=short_streams.base_url, headers=AUTH_HEADERS, timeout=10)
    job_id = deferred_job(http)

    with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        first = list(stream.iter_lines())  # ends by itself, after about a second
    assert [name for name, _ in parse(first)] == ["job"]
    (last_id,) = [line.removeprefix("id:").strip() for line in first if line.startswith("id:")]

    headers = {"Last-Event-ID": last_id}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        again = list(stream.iter_lines())
    assert parse(again) == []  # nothing changed since that event: nothing sent again

    with http.stream("GET", "/v1/events", params={"job_id": job_id}) as stream:
        many = parse(list(stream.iter_lines()))
    assert [name for name, _ in many] == ["job"]  # ended without `end`: reconnect
    http.close()


@pytest.mark.e2e
def test_a_stream_hears_only_jobs_that_exist_and_drops_each_as_it_finishes(
    few_streams: ServiceProcess, redis_url: str
) -> None:
    with (
        httpx.Client(base_url=few_streams.base_url, headers=AUTH_HEADERS, timeout=10) as http,
        redis_sync.Redis.from_url(redis_url) as direct,
    ):
        first, second = deferred_job(http), deferred_job(http)

        def heard() -> set[str]:
            channels = cast(
                list[bytes],
                direct.execute_command("PUBSUB", "SHARDCHANNELS", f"{keys.EVENTS_PREFIX}*"),
            )
            return {c.decode().removeprefix(keys.EVENTS_PREFIX) for c in channels}

        ids = [first, "no-such-job", second]
        with http.stream("GET", "/v1/events", params={"job_id": ids}) as stream:
            lines = stream.iter_lines()
            data = (line for line in lines if line.startswith("data:"))
            seen = [json.loads(next(data).removeprefix("data:")) for _ in range(3)]
            assert {d["id"] for d in seen} == set(ids)
            wait_until(lambda: heard() == {first, second})  # never the job that does not exist

            assert http.delete(f"/v1/jobs/{second}").status_code == 200
            assert json.loads(next(data).removeprefix("data:"))["state"] == "cancelled"
            wait_until(lambda: heard() == {first})  # a finished job is no longer heard
        wait_until(lambda: heard() == set())


@pytest.fixture
def default_streams(redis_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    yield from limited_api(redis_url, log_dir)  # the limits as shipped


@pytest.mark.e2e
def test_with_the_defaults_one_key_cannot_hold_300_streams(
    default_streams: ServiceProcess,
) -> None:
    """The issue's case: one key held 300 of 300 streams. As shipped, a key's
    101st is refused, and another key still gets one."""
    per_key = 100  # CONVEYOR_API_SSE_STREAMS_PER_KEY's default
    roomy = httpx.Limits(max_connections=per_key + 10)
    with (
        httpx.Client(
            base_url=default_streams.base_url, headers=AUTH_HEADERS, timeout=10, limits=roomy
        ) as mine,
        httpx.Client(
            base_url=default_streams.base_url, headers=bearer(OTHER_KEY), timeout=10
        ) as theirs,
        contextlib.ExitStack() as open_streams,
    ):
        job_id = deferred_job(mine)
        held = [
            open_streams.enter_context(mine.stream("GET", "/v1/events", params={"job_id": job_id}))
            for _ in range(per_key)
        ]
        assert {s.status_code for s in held} == {200}
        refused = assert_problem(mine.get("/v1/events", params={"job_id": job_id}), 429)
        assert f"holds {per_key} live streams" in refused["detail"]
        with theirs.stream("GET", f"/v1/jobs/{job_id}/events") as other:
            assert other.status_code == 200
            assert "conveyor_api_live_streams 101.0" in mine.get("/metrics").text
