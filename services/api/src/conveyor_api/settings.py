"""The api's settings, read from `CONVEYOR_API_*` (and `REDIS_*`) environment variables."""

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor_core.settings import CatalogSettings, ObservabilitySettings, RedisSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_API_", extra="ignore")

    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    # The tutorial's create_task sleeps a random time in this range.
    task_sleep_min_s: float = Field(default=1.0, ge=0)
    task_sleep_max_s: float = Field(default=10.0, ge=0)
    # How long /readyz waits for Redis to answer PING.
    readiness_timeout_s: float = Field(default=0.5, gt=0)
    # What a 503 tells clients to wait before they try again.
    retry_after_s: int = Field(default=2, ge=1)
    # Request bodies above this size get 413.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    # The status page masks payload values whose keys contain these words.
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @model_validator(mode="after")
    def _sleep_range_is_ordered(self) -> Self:
        if self.task_sleep_min_s > self.task_sleep_max_s:
            raise ValueError(
                f"CONVEYOR_API_TASK_SLEEP_MIN_S ({self.task_sleep_min_s}) is above "
                f"CONVEYOR_API_TASK_SLEEP_MAX_S ({self.task_sleep_max_s})"
            )
        return self
