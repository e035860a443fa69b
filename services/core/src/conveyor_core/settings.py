"""Settings both services share. Each service adds its own on top."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseSettings):
    """How to reach the broker. Read from `REDIS_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")

    # redis://, rediss:// (TLS) or unix:// URL, with password and db if needed.
    url: str = "redis://localhost:6379/0"
    # Fills or overrides the URL's password, so a deployment can take it from
    # a Secret of its own while the URL stays plain configuration.
    password: str | None = None
    # A connect that takes longer than this means Redis is down: fail fast.
    connect_timeout_s: float = Field(default=1.0, gt=0)
    # No Conveyor command blocks on the server, so a slow reply is a fault.
    socket_timeout_s: float = Field(default=2.0, gt=0)
    # Redis Sentinel: comma-separated host:port of the sentinels. When set, the
    # services ask them for `sentinel_master`'s address; the URL gives only
    # the database and the password.
    sentinel_hosts: str = ""
    sentinel_master: str = "mymaster"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        addresses = []
        for entry in self.sentinel_hosts.split(","):
            if entry.strip():
                host, _, port = entry.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"REDIS_SENTINEL_HOSTS entry {entry!r} is not host:port")
                addresses.append((host, int(port)))
        return addresses


class CatalogSettings(BaseSettings):
    """Which job types exist beyond the built-in ones. Read from `CONVEYOR_JOB_MODULES`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # Comma-separated modules, each exposing `JOB_TYPES: list[JobType]`.
    job_modules: str = ""

    @property
    def modules(self) -> list[str]:
        return [name.strip() for name in self.job_modules.split(",") if name.strip()]


class ObservabilitySettings(BaseSettings):
    """What logs, spans and the job api must not show. Read from `CONVEYOR_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # Comma-separated; a key that contains any of these (any case) is masked.
    redact_keys: str = "password,token,secret,authorization,email"

    @property
    def redacted(self) -> list[str]:
        return [key.strip() for key in self.redact_keys.split(",") if key.strip()]
