"""A running stack for end-to-end tests: the api and workers as real processes."""

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis as redis_sync
from arq.connections import ArqRedis
from redis.cluster import ClusterNode, RedisCluster

from conveyor_api.auth import Scope
from conveyor_core.catalog import load_catalog
from conveyor_core.enqueue import enqueue
from conveyor_core.redis import connect
from conveyor_core.settings import RedisSettings
from conveyor_core.store import JobStore
from tests.support import jobs
from tests.support.auth import AUTH_HEADERS, TEST_KEY, TEST_KEY_NAME, api_key, keys_env
from tests.support.otlp import Collector, otlp_collector
from tests.support.processes import ServiceProcess, api_process, stop_all, worker_process


def direct_client(redis_url: str) -> redis_sync.Redis:
    """A plain client of the stack's Redis, a node's or a cluster's, for what a
    test reads or sets itself (one key a call)."""
    settings = RedisSettings(url=redis_url)
    if not settings.cluster:
        return redis_sync.Redis.from_url(redis_url)
    nodes = [ClusterNode(host, port) for host, port in settings.cluster_seeds]  # type: ignore[no-untyped-call]
    # Typed as a node's client: tests call single-key commands only.
    return cast(redis_sync.Redis, RedisCluster(startup_nodes=nodes))


class Stack:
    """The api, any number of workers, and helpers to drive them over HTTP."""

    def __init__(self, redis_url: str, log_dir: Path, **env: str) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.env = env  # for the api and every worker
        self.api = api_process(redis_url, log_dir, **env)
        self.workers: list[ServiceProcess] = []
        # Sends the test key, which the api process accepts (tests/support/auth.py).
        self.http = httpx.Client(base_url="http://placeholder", timeout=10, headers=AUTH_HEADERS)
        self.redis = direct_client(redis_url)

    def start_api(self) -> None:
        self.api.start()
        self.http.base_url = httpx.URL(self.api.base_url)

    def start_worker(self, **env: str) -> ServiceProcess:
        worker = worker_process(self.redis_url, self.log_dir, **{**self.env, **env}).start()
        worker.wait_for("/readyz")
        self.workers.append(worker)
        return worker

    def submit(self, job_type: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        response = self.http.post(f"/v1/jobs/{job_type}", json=payload, **kwargs)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def enqueue(self, job_type: str, payload: dict[str, Any]) -> str:
        """Enqueue a job as a job or a schedule would (internal types have no
        submit route); its id."""

        async def enqueued() -> str:
            client = connect(RedisSettings(url=self.redis_url))
            try:
                store = JobStore(cast(ArqRedis, client), load_catalog(jobs.MODULES.split(",")))
                return (await enqueue(store, store.catalog[job_type], payload)).job_id
            finally:
                await client.aclose()

        return asyncio.run(enqueued())

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait_for_state(self, job_id: str, *states: str, timeout_s: float = 30) -> dict[str, Any]:
        """Poll until the job is in one of `states` (a job not known yet may appear)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.http.get(f"/v1/jobs/{job_id}")
            job: dict[str, Any] = response.json()
            if response.status_code == 200 and job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job never reached {states}: {job}\n{self.logs()}")
            time.sleep(0.02)

    def group(self, group_id: str) -> dict[str, Any]:
        """The group's summary (its counts, no member page)."""
        response = self.http.get(f"/v1/groups/{group_id}", params={"limit": 0})
        assert response.status_code == 200, response.text
        group: dict[str, Any] = response.json()
        return group

    def wait_for_group(self, group_id: str, *states: str, timeout_s: float = 120) -> dict[str, Any]:
        """Poll until the group is in one of `states` with no member pending."""
        deadline = time.monotonic() + timeout_s
        while (group := self.group(group_id))["state"] not in states or group["counts"]["pending"]:
            assert time.monotonic() < deadline, f"{group}\n{self.logs()}"
            time.sleep(0.1)
        return group

    def starts(self, job_id: str) -> list[float]:
        """When each try of a test job began (recorded by the job itself)."""
        starts = cast(list[bytes], self.redis.lrange(f"test:starts:{job_id}", 0, -1))
        return [float(t) for t in starts]

    def events(self, job_id: str, timeout_s: float = 30) -> list[tuple[str, dict[str, Any]]]:
        """Read the job's SSE stream to its end: (event, data) pairs."""
        received: list[tuple[str, dict[str, Any]]] = []
        event = "message"
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout_s) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    received.append((event, json.loads(line.removeprefix("data:"))))
        return received

    def log_lines(self, service: ServiceProcess) -> list[dict[str, Any]]:
        """The service's JSON log lines (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in service.output().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(s.output()[-3000:] for s in [self.api, *self.workers])

    def close(self) -> None:
        self.http.close()
        self.redis.close()
        stop_all(*self.workers, self.api)


@contextmanager
def running(stack: Stack, workers: int = 0) -> Iterator[Stack]:
    """`stack` with its api and `workers` workers started, closed on the way out."""
    try:
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.close()


def eventually(check: Callable[[], bool], what: Callable[[], str], timeout_s: float = 5.0) -> None:
    """Wait until `check()` holds: a running service's log lines reach its
    output up to logstream.FLUSH_INTERVAL_S after they are written (more on
    a loaded machine). Fails with `what()` when it does not hold in time."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


@contextmanager
def traced_running(redis_url: str, log_dir: Path, **env: str) -> Iterator[tuple[Stack, Collector]]:
    """The api and one worker (with `env`) exporting their spans to an OTLP
    receiver of the test's own, in batches sent every 100 ms (the SDK's
    default waits 5 s)."""
    with (
        otlp_collector() as (collector, endpoint),
        running(
            Stack(
                redis_url,
                log_dir,
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_BSP_SCHEDULE_DELAY="100",
                **env,
            ),
            workers=1,
        ) as stack,
    ):
        yield stack, collector


@pytest.fixture
def traced(redis_url: str, log_dir: Path) -> Iterator[tuple[Stack, Collector]]:
    """`traced_running` on the test's Redis."""
    with traced_running(redis_url, log_dir) as traced:
        yield traced


@pytest.fixture(params=["node", pytest.param("cluster", marks=pytest.mark.xdist_group("cluster"))])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """An empty single Redis, then an empty cluster: a stack built on it runs on both."""
    url: str = request.getfixturevalue("redis_url" if request.param == "node" else "cluster_url")
    return url


@pytest.fixture
def stack(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The api, started; start workers with `stack.start_worker()`."""
    with running(Stack(redis_url, log_dir)) as stack:
        yield stack


def with_reader(redis_url: str, log_dir: Path, reader_key: str) -> Iterator[Stack]:
    """The api (accepting the test key and a read-only one, `viewer`) and one worker."""
    keys = keys_env(
        api_key(TEST_KEY_NAME, TEST_KEY), api_key("viewer", reader_key, [Scope.JOBS_READ])
    )
    with running(Stack(redis_url, log_dir, CONVEYOR_API_KEYS=keys), workers=1) as stack:
        yield stack
