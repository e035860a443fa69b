"""The worker's settings, read from `CONVEYOR_WORKER_*` (and `REDIS_*`) environment variables."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor_core.blobs import BlobSettings
from conveyor_core.catalog import DEFAULT_QUEUE
from conveyor_core.settings import CatalogSettings, ObservabilitySettings, RedisSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_WORKER_", extra="ignore")

    # DEBUG, INFO, WARNING, ERROR or CRITICAL; DEBUG adds a `job start` line per
    # try, WARNING drops the `job end` line of every try that completes.
    log_level: str = "INFO"
    # The queue this worker pool takes jobs from.
    queue: str = DEFAULT_QUEUE
    # Jobs run at once in this process.
    max_jobs: int = Field(default=10, ge=1)
    # Without a wake-up, look for due jobs at least this often (the safety net).
    idle_poll_s: float = Field(default=1.0, gt=0)
    # A running job's lock lives this long unless its worker renews it; a
    # worker killed mid-job leaves it behind for at most this long.
    lock_ttl_s: float = Field(default=10.0, ge=1)
    # On SIGTERM, how long running jobs may go on before they are cut short
    # and requeued, and the job modules' resources closed: what is left of it
    # (at least a second) bounds their closing. Keep it below the pod's
    # terminationGracePeriodSeconds.
    shutdown_wait_s: int = Field(default=20, ge=0)
    # The small HTTP server for probes and /metrics: its listen address...
    health_host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    # ...and its own port.
    health_port: int = Field(default=8001, ge=1, le=65535)
    # /healthz fails when the poll loop has not turned for this long.
    liveness_timeout_s: float = Field(default=60, gt=0)
    # Spans, start/end log lines and metrics for every job try.
    instrument_jobs: bool = True
    # A function library (one per Conveyor version) no process has used for
    # this long is deleted by a worker's housekeeping (docs/how-to/upgrade.md).
    function_library_max_unseen_s: float = Field(default=86_400.0, gt=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    # Where offloaded payloads and results are (CONVEYOR_BLOBS_*, as the api's).
    blobs: BlobSettings = Field(default_factory=BlobSettings)
