from typing import Any

from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.settings import CatalogSettings, RedisSettings
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.support import jobs

# The seed's scheduled job types, switched off.
NO_SCHEDULES: dict[str, Any] = {"send_digest": None, "cleanup_temp_uploads": None}


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
