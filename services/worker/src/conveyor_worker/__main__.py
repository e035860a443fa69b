"""`python -m conveyor_worker`: run the worker and its health server."""

import logging
import sys

import uvloop

from conveyor_core.catalog import JobModuleError
from conveyor_core.logging import configure_logging
from conveyor_core.tracing import setup_tracing
from conveyor_worker.health import start_health_server
from conveyor_worker.resources import ResourceOpenError
from conveyor_worker.settings import Settings
from conveyor_worker.worker import create_worker

logger = logging.getLogger("conveyor_worker")


async def serve(settings: Settings) -> None:
    worker = create_worker(settings)
    # Before anything (such as a ready probe) can prompt a SIGTERM: it drains.
    worker.install_signal_handlers()
    health = await start_health_server(worker, settings)
    logger.info("health server on http://%s:%d/healthz", settings.health_host, settings.health_port)
    try:
        await worker.main()
    finally:
        await worker.close()
        await health.cleanup()


def main() -> None:
    settings = Settings()
    configure_logging("worker", settings.log_level)
    tracing = setup_tracing("conveyor-worker")
    try:
        # uvloop, as uvicorn uses for the api: a faster event loop, same semantics.
        uvloop.run(serve(settings))
    except (JobModuleError, ResourceOpenError) as exc:
        # One line that says which module and what is wrong; no traceback.
        sys.exit(f"conveyor-worker: cannot start: {exc}")
    finally:
        tracing.shutdown()  # export the spans still buffered


if __name__ == "__main__":
    main()
