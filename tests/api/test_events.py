"""`/v1/events`: many jobs' changes on one SSE stream, against a real Redis."""

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from conveyor_api.routes.events import MAX_JOBS_PER_STREAM
from tests.support.auth import AUTH_HEADERS
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
        http.post("/v1/jobs/slow", json={"steps": 4, "step_s": 0.15 * n}).json()["id"]
        for n in (1, 2, 3)
    ]
    deferred = http.post("/v1/jobs/effect", json={"work_s": 0}, params={"defer_by_s": 1}).json()[
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
        assert {25, 50, 75} <= set(progress), (job_id, progress)  # every step arrived
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
