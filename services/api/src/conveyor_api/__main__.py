"""`python -m conveyor_api`: serve the api with uvicorn."""

import uvicorn

from conveyor_api.main import create_app
from conveyor_api.settings import Settings
from conveyor_core.logging import configure_logging
from conveyor_core.tracing import setup_tracing


def main() -> None:
    settings = Settings()
    configure_logging("api", settings.log_level)
    tracing = setup_tracing("conveyor-api")
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,  # keep our log format
            access_log=False,  # telemetry.RequestTelemetry logs each request
            timeout_graceful_shutdown=10,
        )
    finally:
        tracing.shutdown()  # export the spans still buffered


if __name__ == "__main__":
    main()
