"""`python -m conveyor_worker`: run the worker and its health server."""

import gc
import logging
import sys

import uvloop

from conveyor_core.catalog import JobModuleError
from conveyor_core.logging import configure_logging
from conveyor_core.logstream import flush_all
from conveyor_core.tracing import setup_tracing
from conveyor_worker.health import start_health_server
from conveyor_worker.resources import ResourceOpenError
from conveyor_worker.settings import Settings
from conveyor_worker.worker import create_worker

logger = logging.getLogger("conveyor_worker")

# Allocations between two young-generation collections (Python's default: 700).
# A try allocates a few hundred objects that its own end frees (refcounts do
# that, not the collector), so at the default the collector runs every few
# jobs to walk the same survivors: the spans waiting for export, the running
# tries. Ten times fewer runs walk them ten times less.
GC_YOUNG_THRESHOLD = 7_000


async def serve(settings: Settings) -> None:
    worker = create_worker(settings)
    # Before anything (such as a ready probe) can prompt a SIGTERM: it drains.
    worker.install_signal_handlers()
    health = await start_health_server(worker, settings)
    logger.info("health server on http://%s:%d/healthz", settings.health_host, settings.health_port)
    # What is loaded by now (modules, job types, handlers) lives as long as the
    # process: out of the cycle collector's sight, as in the api.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
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
        # It is the last line: the loop's lines still waiting for their
        # flush go first.
        flush_all()
        sys.exit(f"conveyor-worker: cannot start: {exc}")
    finally:
        tracing.shutdown()  # export the spans still buffered


if __name__ == "__main__":
    main()
