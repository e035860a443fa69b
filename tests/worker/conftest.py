from typing import Any

from arq.connections import ArqRedis

from conveyor_core.catalog import load_catalog
from conveyor_core.settings import CatalogSettings, CronSettings, RedisSettings
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker, worker_settings
from tests.support import jobs


def make_worker(redis: ArqRedis, redis_url: str, **options: Any) -> ConveyorWorker:
    """An in-process worker on the test catalog, without signal handlers."""
    settings = Settings(
        redis=RedisSettings(url=redis_url),
        catalog=CatalogSettings(job_modules=jobs.MODULE),
        # No cron: a run at the default times would add jobs the tests do not expect.
        cron=CronSettings(digest_schedule=None, cleanup_schedule=None),
    )
    catalog = load_catalog(settings.catalog.modules)
    kwargs = worker_settings(settings, redis, catalog)
    return ConveyorWorker(**{**kwargs, "handle_signals": False, **options})
