"""Conveyor's arq worker: arq's `Worker` with the changes Conveyor needs, each explained."""

import asyncio
import logging
import signal
import time
from typing import Any

import aiohttp
from arq.connections import ArqRedis
from arq.worker import Worker

from conveyor_core.redis import REDIS_DOWN_ERRORS, create_redis
from conveyor_worker.jobs import FUNCTIONS
from conveyor_worker.settings import Settings

logger = logging.getLogger(__name__)

# After a failed poll, wait this long (doubling, up to the cap) before the next one.
OUTAGE_BACKOFF_S = 0.1
OUTAGE_BACKOFF_CAP_S = 2.0


class ConveyorWorker(Worker):
    """arq's Worker that survives a Redis outage and keeps a per-process heartbeat."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Monotonic time of the poll loop's last turn, and whether Redis answered it.
        self.last_poll_s = time.monotonic()
        self.redis_ok = False
        self._outage_backoff_s = 0.0

    async def main(self) -> None:
        # arq's main() needs Redis at once and dies without it; wait for it here,
        # inside the main task, so a signal during the wait still stops us.
        await self._wait_for_redis()
        await super().main()

    async def _wait_for_redis(self) -> None:
        backoff_s = OUTAGE_BACKOFF_S
        while True:
            try:
                await self.pool.ping()
            except REDIS_DOWN_ERRORS as exc:
                logger.warning("redis unreachable at start, retrying in %.1f s: %s", backoff_s, exc)
                self.last_poll_s = time.monotonic()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, OUTAGE_BACKOFF_CAP_S)
            else:
                self.redis_ok = True
                return

    async def close(self) -> None:
        # Replaces arq's close(), which deletes its health key before on_shutdown
        # (with Redis down, on_shutdown never ran) and calls redis-py's
        # deprecated close().
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.pool.delete(self.health_check_key)
        except REDIS_DOWN_ERRORS as exc:
            logger.warning("redis unreachable during shutdown: %s", exc)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None

    async def _poll_iteration(self) -> None:
        # arq lets a Redis error escape its poll loop and the worker dies; here
        # it is logged once per outage and the loop goes on with a backoff.
        try:
            await super()._poll_iteration()
        except REDIS_DOWN_ERRORS as exc:
            if self.redis_ok or not self._outage_backoff_s:
                logger.warning("redis unreachable, retrying: %s", exc)
            self.redis_ok = False
            self._outage_backoff_s = min(
                max(self._outage_backoff_s * 2, OUTAGE_BACKOFF_S), OUTAGE_BACKOFF_CAP_S
            )
            await asyncio.sleep(self._outage_backoff_s)
        else:
            if not self.redis_ok and self._outage_backoff_s:
                logger.info("redis reachable again, taking jobs")
            self.redis_ok = True
            self._outage_backoff_s = 0.0
        finally:
            self.last_poll_s = time.monotonic()


async def on_startup(ctx: dict[str, Any]) -> None:
    """Open the resources jobs share; they live in `ctx` for the worker's life."""
    ctx["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    http: aiohttp.ClientSession | None = ctx.pop("http", None)
    if http is not None:
        await http.close()


def worker_settings(settings: Settings, redis: ArqRedis) -> dict[str, Any]:
    """arq `WorkerSettings` (as keyword arguments) built from typed settings."""
    return {
        "functions": FUNCTIONS,
        "queue_name": settings.queue,
        "redis_pool": redis,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout_s,
        "poll_delay": settings.poll_delay_s,
        # Let running jobs finish on SIGTERM instead of cancelling them at once.
        "job_completion_wait": settings.shutdown_wait_s,
        # arq's shared health key is useless per pod; /healthz replaces it.
        "health_check_interval": 3600,
    }


def create_worker(settings: Settings) -> ConveyorWorker:
    """Build the worker; call inside the event loop it will run on."""
    return ConveyorWorker(**worker_settings(settings, create_redis(settings.redis)))
