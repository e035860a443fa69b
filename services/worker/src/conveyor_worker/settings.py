"""The worker's settings, read from `CONVEYOR_WORKER_*` (and `REDIS_*`) environment variables."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor_core.catalog import DEFAULT_QUEUE
from conveyor_core.settings import RedisSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_WORKER_", extra="ignore")

    log_level: str = "INFO"
    # The queue this worker pool takes jobs from.
    queue: str = DEFAULT_QUEUE
    # Jobs run at once in this process.
    max_jobs: int = Field(default=10, ge=1)
    job_timeout_s: float = Field(default=300, gt=0)
    # How often arq looks for new jobs.
    poll_delay_s: float = Field(default=0.5, gt=0)
    # On SIGTERM, how long running jobs may go on before they are cancelled.
    shutdown_wait_s: int = Field(default=20, ge=0)
    # The small HTTP server for probes, on its own port.
    health_host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    health_port: int = Field(default=8001, ge=1, le=65535)
    # /healthz fails when the poll loop has not turned for this long.
    liveness_timeout_s: float = Field(default=60, gt=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
