"""The worker's own small HTTP server: probes and metrics on a port of its own, no user traffic."""

import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from conveyor_core.redis_health import RedisHealth
from conveyor_worker.settings import Settings
from conveyor_worker.worker import ConveyorWorker


def create_health_app(worker: ConveyorWorker, settings: Settings) -> web.Application:
    # Redis' memory policy and usage, read while this server runs (see redis_health).
    redis_health = RedisHealth(worker.pool, settings.redis, "worker")

    async def check_redis_memory(_: web.Application) -> AsyncIterator[None]:
        redis_health.start()
        yield
        await redis_health.stop()

    async def healthz(_: web.Request) -> web.Response:
        # Alive means this process's poll loop keeps turning, Redis or not:
        # restarting the pod would not bring Redis back.
        since_poll_s = time.monotonic() - worker.last_poll_s
        if since_poll_s > settings.liveness_timeout_s:
            return web.json_response(
                {"status": "stalled", "since_last_poll_s": round(since_poll_s, 3)}, status=503
            )
        return web.json_response({"status": "ok", "since_last_poll_s": round(since_poll_s, 3)})

    async def readyz(_: web.Request) -> web.Response:
        if not worker.redis_ok:
            fault = worker.redis_fault.value if worker.redis_fault else "unreachable"
            body = {"status": "cannot claim jobs", "redis_fault": fault}
            return web.json_response(body, status=503)
        if not worker.started:
            # Its job modules' resources are not open yet: it cannot run a job.
            return web.json_response({"status": "starting"}, status=503)
        if reason := redis_health.not_ready_reason:
            body = {"status": "redis may evict jobs", "detail": reason}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(request: web.Request) -> web.Response:
        # OpenMetrics (with trace-id exemplars) for scrapers that ask for it.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.cleanup_ctx.append(check_redis_memory)
    return app


async def start_health_server(worker: ConveyorWorker, settings: Settings) -> web.AppRunner:
    runner = web.AppRunner(create_health_app(worker, settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    return runner
