"""Settings both services share. Each service adds its own on top."""

from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor_core.redaction import DEFAULT_KEYS
from conveyor_core.schedule import InvalidScheduleError, Schedule

# URL schemes that name a Redis Cluster by its seed nodes (plain, TLS).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379


class RedisSettings(BaseSettings):
    """How to reach the broker. Read from `REDIS_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")

    # redis://, rediss:// (TLS) or unix:// URL, with db if needed. A password
    # may be in it, but REDIS_PASSWORD is better: a chart takes it from a Secret.
    # A Redis Cluster: redis+cluster:// (rediss+cluster:// for TLS) and one or
    # more comma-separated seed nodes, `redis+cluster://user@host-a:6379,host-b:6379`;
    # the client finds every other node from any seed that answers. In
    # progress: the api and the worker refuse it at start for now.
    url: str = "redis://localhost:6379/0"
    # Fills in (or overrides) the URL's password.
    password: SecretStr | None = None
    # The ACL user to connect as (Redis 6+), when the URL names none; unset:
    # `default`. Lets a Redis refuse the services commands they never need.
    username: str | None = None
    # For rediss://: the CA bundle that signed the server's certificate
    # (else the system's trust store). The server's certificate is always verified.
    tls_ca_file: str | None = None
    # A connect that takes longer than this means Redis is down: fail fast.
    connect_timeout_s: float = Field(default=1.0, gt=0)
    # No Conveyor command blocks on the server, so a slow reply is a fault.
    # It bounds the time to a 503 while Redis hangs (a timeout is not retried).
    socket_timeout_s: float = Field(default=1.0, gt=0)
    # Conveyor needs `maxmemory-policy noeviction`: an evicting Redis drops
    # acknowledged jobs. Unless this is true, the services refuse to be ready
    # on any other policy (they warn either way).
    allow_eviction: bool = False
    # How often each service reads Redis' memory policy and usage (INFO memory).
    memory_check_interval_s: float = Field(default=30.0, gt=0)
    # Redis Sentinel: comma-separated host:port of the sentinels. When set, the
    # services ask them for `sentinel_master`'s address; the URL gives only
    # the database and the password.
    sentinel_hosts: str = ""
    # The name the sentinels know the master by.
    sentinel_master: str = "mymaster"
    # Replication is asynchronous: a write a primary acknowledged is lost if
    # the primary dies before a replica has it. An api submit that creates a
    # job waits (Redis WAIT) until this many replicas hold it, else answers
    # 503 (the job may exist); 0 answers as soon as the primary has it. Jobs
    # that jobs enqueue and scheduled runs do not wait.
    wait_replicas: int = Field(default=0, ge=0)
    # How long that wait may take; then the write answers with fewer replicas
    # and says so. Below REDIS_SOCKET_TIMEOUT_S, which bounds every reply.
    wait_timeout_ms: int = Field(default=100, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "RedisSettings":
        if self.wait_timeout_ms >= self.socket_timeout_s * 1000:
            raise ValueError(
                f"REDIS_WAIT_TIMEOUT_MS ({self.wait_timeout_ms}) must be below "
                f"REDIS_SOCKET_TIMEOUT_S ({self.socket_timeout_s} s): a WAIT's reply comes after it"
            )
        if self.cluster:
            if self.sentinel_hosts:
                raise ValueError("REDIS_URL names a cluster: REDIS_SENTINEL_HOSTS must be unset")
            _ = self.cluster_seeds  # each seed must be host:port
        return self

    @property
    def cluster(self) -> bool:
        """Does REDIS_URL name a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)?"""
        return urlsplit(self.url).scheme in CLUSTER_SCHEMES

    @property
    def cluster_seeds(self) -> list[tuple[str, int]]:
        """The cluster URL's seed nodes as (host, port); a port left out is 6379."""
        parts = urlsplit(self.url)
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"REDIS_URL {self.safe_url()}: a cluster has only database 0")
        hosts = parts.netloc.rpartition("@")[2]
        seeds = []
        for entry in hosts.split(","):
            host, colon, port = entry.strip().rpartition(":")
            if not colon:
                host, port = entry.strip(), str(DEFAULT_PORT)
            host = host.removeprefix("[").removesuffix("]")  # IPv6
            if not host or not port.isdigit():
                raise ValueError(f"REDIS_URL seed {entry!r} is not host:port")
            seeds.append((host, int(port)))
        return seeds

    def cluster_credentials(self) -> tuple[str | None, str | None]:
        """(user, password) for a cluster URL: REDIS_USERNAME and REDIS_PASSWORD
        unless the URL names them. Never log them."""
        parts = urlsplit(self.url)
        username = unquote(parts.username) if parts.username else self.username
        password = self.password.get_secret_value() if self.password else None
        if password is None and parts.password:
            password = unquote(parts.password)
        return username, password

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

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("rediss", "rediss+cluster")

    def connection_url(self) -> str:
        """The URL to connect with: REDIS_PASSWORD in it, when given. Never log it."""
        if self.password is None:
            return self.url
        return with_password(self.url, self.password.get_secret_value())

    def safe_url(self) -> str:
        """The URL with any password masked: the only form fit for logs and banners."""
        return masked_url(self.url)


def _unsplit(parts: SplitResult) -> str:
    """urlunsplit, but `unix:///path` keeps its empty authority (`//`)."""
    url = urlunsplit(parts)
    if not parts.netloc and not url.startswith(f"{parts.scheme}://"):
        url = url.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)
    return url


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":  # the password goes in the query: unix:///s.sock?password=
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("password="))
        query = "&".join(filter(None, [query, f"password={quote(password, safe='')}"]))
        return _unsplit(parts._replace(query=query))
    user = quote(parts.username, safe="") if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return _unsplit(parts._replace(netloc=netloc))


def masked_url(url: str) -> str:
    """`redis://user:secret@host/0` -> `redis://user:***@host/0` (and `?password=` too)."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{netloc}")
    if "password=" in parts.query:
        query = "&".join(
            "password=***" if q.startswith("password=") else q for q in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    return _unsplit(parts)


class CatalogSettings(BaseSettings):
    """Which job modules make the catalog, and their schedules. Read from `CONVEYOR_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # Comma-separated job modules (see catalog.py), each exposing `JOB_TYPES`.
    # The seed app's module is the default, so a fresh install shows it; a
    # team names its own (and the seed's too, if it wants it).
    job_modules: str = "conveyor_seed"
    # Schedules by job name, JSON, overriding those the job type declares: a
    # schedule (`{"hour": 6, "minute": 0}`), a list of them, or null (none:
    # the job type runs only when enqueued). The worker reads it.
    schedules: dict[str, dict[str, Any] | list[dict[str, Any]] | None] = Field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return [name.strip() for name in self.job_modules.split(",") if name.strip()]

    @field_validator("schedules")
    @classmethod
    def _valid_schedules(
        cls, value: dict[str, dict[str, Any] | list[dict[str, Any]] | None]
    ) -> dict[str, dict[str, Any] | list[dict[str, Any]] | None]:
        for name in value:
            try:
                schedule_overrides({name: value[name]})
            except (InvalidScheduleError, TypeError) as exc:
                raise ValueError(f"CONVEYOR_SCHEDULES[{name!r}]: {exc}") from None
        return value

    def schedule_overrides(self) -> dict[str, tuple[Schedule, ...]]:
        return schedule_overrides(self.schedules)


def schedule_overrides(
    raw: dict[str, dict[str, Any] | list[dict[str, Any]] | None],
) -> dict[str, tuple[Schedule, ...]]:
    """CONVEYOR_SCHEDULES as schedules by job name; () for a job type switched off."""
    overrides: dict[str, tuple[Schedule, ...]] = {}
    for name, value in raw.items():
        entries = [] if value is None else value if isinstance(value, list) else [value]
        overrides[name] = tuple(Schedule.parse(entry) for entry in entries)
    return overrides


class ObservabilitySettings(BaseSettings):
    """What logs, spans and the job api must not show. Read from `CONVEYOR_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # Comma-separated; a key that contains any of these (any case, `-` as `_`)
    # is masked. Secret-looking values (e-mail addresses, bearer tokens, JWTs,
    # URL passwords, `password=...`) are masked in any field and in free text.
    redact_keys: str = ",".join(DEFAULT_KEYS)

    @property
    def redacted(self) -> list[str]:
        return [key.strip() for key in self.redact_keys.split(",") if key.strip()]
