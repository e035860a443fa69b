from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.redis import create_redis
from conveyor_core.settings import CatalogSettings, RedisSettings
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.conftest import PATIENT_S
from tests.support import jobs

# The seed's scheduled job types, switched off.
NO_SCHEDULES: dict[str, Any] = {"send_digest": None, "cleanup_temp_uploads": None}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    """A client as the worker makes its own (create_worker): no timeout per
    command. With one, redis-py sends each command under asyncio.wait_for,
    which on Python 3.11 swallows a cancel that lands just as the send
    completes: a job cancelled at that moment ran on to its end."""
    settings = RedisSettings(url=redis_url, connect_timeout_s=PATIENT_S)
    client = create_redis(settings, timeout_each_read=False)
    yield client
    await client.aclose()


def make_worker(redis: ArqRedis, redis_url: str, **options: Any) -> ConveyorWorker:
    """An in-process worker on the test catalog, without signal handlers."""
    settings = Settings(
        redis=RedisSettings(url=redis_url),
        # No cron: a run at the default times would add jobs the tests do not expect.
        catalog=CatalogSettings(job_modules=jobs.MODULES, schedules=NO_SCHEDULES),
    )
    catalog = load_catalog(settings.catalog.modules)
    kwargs = worker_settings(settings, redis, catalog)
    return ConveyorWorker(**{**kwargs, "handle_signals": False, **options})
