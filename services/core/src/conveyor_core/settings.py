"""Settings both services share. Each service adds its own on top."""

from typing import Literal
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseSettings):
    """How to reach the broker. Read from `REDIS_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore")

    # redis://, rediss:// (TLS) or unix:// URL, with db if needed. A password
    # may be in it, but REDIS_PASSWORD is better: a chart takes it from a Secret.
    url: str = "redis://localhost:6379/0"
    # Fills in (or overrides) the URL's password.
    password: SecretStr | None = None
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

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

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


class DocumentSettings(BaseSettings):
    """Uploaded documents. Read from `CONVEYOR_DOCUMENTS_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_DOCUMENTS_", extra="ignore")

    # An upload above this size gets 413; documents live in Redis, so keep it small.
    max_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    # How long a document is kept; an upload may ask for less, never more.
    retention_s: int = Field(default=7 * 86_400, ge=1)
    # The extracted text is stored (and shown) up to this many characters.
    text_max_chars: int = Field(default=200_000, ge=1000)


class SmtpSettings(BaseSettings):
    """The mail server email jobs send through. Read from `CONVEYOR_SMTP_*`.

    Without a host, email jobs fail at once with a clear error: there is no
    silent "log only" transport.
    """

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_SMTP_", extra="ignore")

    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    # none: plain SMTP; starttls: upgrade after connecting; tls: TLS from the start (465).
    tls: Literal["none", "starttls", "tls"] = "starttls"
    username: str = ""
    password: SecretStr = SecretStr("")
    from_: str = Field(default="conveyor@localhost", validation_alias="CONVEYOR_SMTP_FROM")
    # A server that does not answer within this long counts as down (and is retried).
    timeout_s: float = Field(default=30.0, gt=0)

    @property
    def configured(self) -> bool:
        return bool(self.host)


class SummarizerSettings(BaseSettings):
    """How documents are summarized. Read from `CONVEYOR_SUMMARIZER_*`.

    Without a URL, the built-in extractive summarizer runs (no network, no model).
    """

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_SUMMARIZER_", extra="ignore")

    # Base URL of an OpenAI-compatible api, e.g. https://api.openai.com/v1;
    # Conveyor posts to {url}/chat/completions.
    url: str = ""
    model: str = ""
    api_key: SecretStr = SecretStr("")
    # The built-in summarizer keeps at most this many sentences.
    max_sentences: int = Field(default=5, ge=1)
    # At most this much text is sent to the chat endpoint.
    max_input_chars: int = Field(default=24_000, ge=1000)
    timeout_s: float = Field(default=60.0, gt=0)


# Fields of arq's `cron()` a schedule may set, each an int or a list of ints in this range.
SCHEDULE_RANGES = {
    "month": (1, 12),
    "day": (1, 31),
    "weekday": (0, 6),
    "hour": (0, 23),
    "minute": (0, 59),
    "second": (0, 59),
}
ScheduleField = Literal["month", "day", "weekday", "hour", "minute", "second"]
Schedule = dict[ScheduleField, int | list[int]]


def _check_schedule(name: str, schedule: Schedule | None) -> Schedule | None:
    for field, value in (schedule or {}).items():
        low, high = SCHEDULE_RANGES[field]
        values = value if isinstance(value, list) else [value]
        if not values or any(not low <= v <= high for v in values):
            raise ValueError(f"{name}: {field} must be in {low}..{high}, not {value!r}")
    return schedule


class CronSettings(BaseSettings):
    """The worker's scheduled jobs. Read from `CONVEYOR_*`.

    A schedule is JSON of arq's cron fields, e.g. `{"hour": 9, "minute": 0}`
    (daily at 09:00 UTC) or `{"second": [0, 20, 40]}`; `null` turns it off.
    """

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", extra="ignore", env_parse_none_str="null"
    )

    # Who gets the daily digest; without one the digest is not sent (and its
    # counts carry over to the next one).
    digest_to: str = ""
    digest_schedule: Schedule | None = {"hour": 9, "minute": 0, "second": 0}
    cleanup_schedule: Schedule | None = {"minute": 30, "second": 0}

    @field_validator("digest_schedule", "cleanup_schedule")
    @classmethod
    def _in_range(cls, schedule: Schedule | None, info: ValidationInfo) -> Schedule | None:
        return _check_schedule(f"CONVEYOR_{str(info.field_name).upper()}", schedule)
