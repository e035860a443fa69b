"""`python -m conveyor_api`: serve the api with uvicorn."""

import uvicorn

from conveyor_api.main import create_app
from conveyor_api.settings import Settings
from conveyor_core.logging import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our log format
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
