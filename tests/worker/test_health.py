"""The worker's own /healthz (its poll loop turns) and /readyz (Redis answers)."""

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from arq.connections import ArqRedis

from conveyor_worker.health import create_health_app
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker
from tests.worker.conftest import make_worker

HealthClient = TestClient[web.Request, web.Application]


@pytest.fixture
async def worker(redis: ArqRedis, redis_url: str) -> AsyncIterator[ConveyorWorker]:
    worker = make_worker(redis, redis_url)
    yield worker
    await worker.close()


@pytest.fixture
async def client(worker: ConveyorWorker) -> AsyncIterator[HealthClient]:
    app = create_health_app(worker, Settings(liveness_timeout_s=5))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_healthz_is_ok_while_the_poll_loop_turns(
    client: HealthClient, worker: ConveyorWorker
) -> None:
    worker.last_poll_s = time.monotonic()
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_healthz_fails_when_the_poll_loop_stalls(
    client: HealthClient, worker: ConveyorWorker
) -> None:
    worker.last_poll_s = time.monotonic() - 6
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["status"] == "stalled"


async def test_readyz_follows_redis(client: HealthClient, worker: ConveyorWorker) -> None:
    await worker.startup()
    worker.redis_ok = False
    assert (await client.get("/readyz")).status == 503
    worker.redis_ok = True
    assert (await client.get("/readyz")).status == 200


async def test_readyz_waits_for_the_job_modules_resources(
    client: HealthClient, worker: ConveyorWorker
) -> None:
    worker.redis_ok = True
    response = await client.get("/readyz")
    assert (response.status, (await response.json())["status"]) == (503, "starting")
    await worker.startup()
    assert (await client.get("/readyz")).status == 200
