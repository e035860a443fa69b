"""Settings both services share. Each service adds its own on top."""

from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr
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
    socket_timeout_s: float = Field(default=2.0, gt=0)

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
