"""The seed app's settings: documents, mail, the summarizer and its schedules.

Each group is read from its own `CONVEYOR_*` prefix, in whichever service
loads the seed's module; the worker's jobs use all of them, the api's
document routes only `CONVEYOR_DOCUMENTS_*`.
"""

import os
import re
from typing import Annotated, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor_core import Schedule
from conveyor_core.blobs import BlobSettings
from conveyor_core.schedule import FIELD_RANGES, CronField


class DocumentSettings(BaseSettings):
    """Uploaded documents. Read from `CONVEYOR_DOCUMENTS_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_DOCUMENTS_", extra="ignore")

    # An upload above this size gets 413. Its bytes go to the blob store
    # (CONVEYOR_BLOBS_*), never to Redis.
    max_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    # How long a document is kept; an upload may ask for less, never more.
    retention_s: int = Field(default=7 * 86_400, ge=1)
    # The extracted text is stored (and shown) up to this many characters.
    text_max_chars: int = Field(default=200_000, ge=1000)
    # A text longer than this is summarized in chunks of about this many
    # characters, in parallel (a group), and their summaries combined; a
    # shorter one in one step. At most what a chat summarizer reads
    # (CONVEYOR_SUMMARIZER_MAX_INPUT_CHARS), so no chunk is cut.
    chunk_chars: int = Field(default=20_000, ge=1000)


class SmtpSettings(BaseSettings):
    """The mail server email jobs send through. Read from `CONVEYOR_SMTP_*`.

    Without a host, email jobs fail at once with a clear error: there is no
    silent "log only" transport.
    """

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_SMTP_", extra="ignore")

    # The mail server; without it email jobs die at once (and `make run`
    # starts a local mail catcher instead).
    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    # none: plain SMTP; starttls: upgrade after connecting; tls: TLS from the start (465).
    tls: Literal["none", "starttls", "tls"] = "starttls"
    # Login, if the server wants one.
    username: str = ""
    password: SecretStr = SecretStr("")
    # The sender; its domain is the Message-ID's.
    from_: str = Field(default="conveyor@localhost", validation_alias="CONVEYOR_SMTP_FROM")
    # A server that does not answer within this long counts as down (and is retried).
    timeout_s: float = Field(default=30.0, gt=0)

    @property
    def configured(self) -> bool:
        return bool(self.host)


class MailPolicySettings(BaseSettings):
    """Where mail may go. Read from `CONVEYOR_MAIL_*`, by the workers (every mail
    job checks its recipient) and by the api (an upload's summary address).

    Without allowed domains, no mail goes anywhere, except in development
    (`CONVEYOR_MAIL_DEVELOPMENT`, which `make run` sets while its local mail
    catcher keeps every mail, or else `CONVEYOR_API_DEVELOPMENT`), where any
    address is fine; a worker with a mail server but no allowed domains
    refuses to start outside development. Development does not count inside
    Kubernetes: a worker refuses to start with it there, and the api's upload
    check goes by the allowed domains alone.
    """

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_MAIL_", extra="ignore")

    # The recipients' domains mail is sent to, comma-separated (e.g.
    # `example.com,example.org`); each matches exactly: a subdomain needs its own.
    allowed_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Development (or CONVEYOR_API_DEVELOPMENT): no allowed domains means any domain.
    development: bool = Field(
        default=False,
        validation_alias=AliasChoices("CONVEYOR_MAIL_DEVELOPMENT", "CONVEYOR_API_DEVELOPMENT"),
    )

    @field_validator("allowed_domains", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_domains")
    @classmethod
    def _are_domains(cls, domains: list[str]) -> list[str]:
        cleaned = [d.strip().lower().rstrip(".") for d in domains]
        for domain in cleaned:
            if not DOMAIN.fullmatch(domain):
                raise ValueError(
                    f"CONVEYOR_MAIL_ALLOWED_DOMAINS: {domain!r} is not a domain name "
                    "(give names like example.com, comma-separated)"
                )
        return cleaned

    @property
    def development_here(self) -> bool:
        """Development, and not inside Kubernetes (which sets KUBERNETES_SERVICE_HOST
        in every pod): any address is fine only on a developer's machine."""
        return self.development and not os.environ.get(KUBERNETES_ENV)

    def allows(self, address: str) -> bool:
        """Whether mail may go to `address` (by its domain)."""
        if not self.allowed_domains:
            return self.development_here
        return domain_of(address) in self.allowed_domains


KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


# A domain name: labels of letters, digits and inner hyphens, with a dot between.
DOMAIN = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)


def domain_of(address: str) -> str:
    """The domain of an e-mail address, as the allowlist compares it."""
    return address.rpartition("@")[2].strip().lower().rstrip(".")


class SummarizerSettings(BaseSettings):
    """How documents are summarized. Read from `CONVEYOR_SUMMARIZER_*`.

    Without a URL, the built-in extractive summarizer runs (no network, no model).
    """

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_SUMMARIZER_", extra="ignore")

    # Base URL of an OpenAI-compatible api, e.g. https://api.openai.com/v1;
    # Conveyor posts to {url}/chat/completions.
    url: str = ""
    # The chat model, and the key the endpoint wants.
    model: str = ""
    api_key: SecretStr = SecretStr("")
    # The built-in summarizer keeps at most this many sentences.
    max_sentences: int = Field(default=5, ge=1)
    # At most this much text is sent to the chat endpoint.
    max_input_chars: int = Field(default=24_000, ge=1000)
    # The chat endpoint's time limit; a timeout is retried.
    timeout_s: float = Field(default=60.0, gt=0)


# Fields of a schedule, each an int or a list of ints in its range (core's ranges).
CronDict = dict[CronField, int | list[int]]


def _check_schedule(name: str, schedule: CronDict | None) -> CronDict | None:
    for field, value in (schedule or {}).items():
        low, high = FIELD_RANGES[field]
        values = value if isinstance(value, list) else [value]
        if not values or any(not low <= v <= high for v in values):
            raise ValueError(f"{name}: {field} must be in {low}..{high}, not {value!r}")
    return schedule


class CronSettings(BaseSettings):
    """The seed's scheduled jobs: the digest's address, and the schedules the
    seed declares for `send_digest` and `cleanup_temp_uploads`. Read from `CONVEYOR_*`.

    A schedule is JSON of cron fields, e.g. `{"hour": 9, "minute": 0}`
    (daily at 09:00 UTC) or `{"second": [0, 20, 40]}`; `null` turns it off.
    (CONVEYOR_SCHEDULES, the platform's override for any job type, wins over these.)
    """

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", extra="ignore", env_parse_none_str="null"
    )

    # Who gets the daily digest; without one the digest is not sent (and its
    # counts carry over to the next one).
    digest_to: str = ""
    # When `send_digest` runs (UTC): daily at 09:00.
    digest_schedule: CronDict | None = {"hour": 9, "minute": 0, "second": 0}
    # When `cleanup_temp_uploads` runs (UTC): hourly at :30.
    cleanup_schedule: CronDict | None = {"minute": 30, "second": 0}

    @field_validator("digest_schedule", "cleanup_schedule")
    @classmethod
    def _in_range(cls, schedule: CronDict | None, info: ValidationInfo) -> CronDict | None:
        return _check_schedule(f"CONVEYOR_{str(info.field_name).upper()}", schedule)


class TutorialSettings(BaseSettings):
    """The tutorial's `POST /task`, in the api. Read from `CONVEYOR_API_TASK_*`."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_API_", extra="ignore")

    # The tutorial's create_task sleeps a random time from this...
    task_sleep_min_s: float = Field(default=1.0, ge=0)
    # ...to this.
    task_sleep_max_s: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _sleep_range_is_ordered(self) -> Self:
        if self.task_sleep_min_s > self.task_sleep_max_s:
            raise ValueError(
                f"CONVEYOR_API_TASK_SLEEP_MIN_S ({self.task_sleep_min_s}) is above "
                f"CONVEYOR_API_TASK_SLEEP_MAX_S ({self.task_sleep_max_s})"
            )
        return self


def as_schedules(cron: CronDict | None) -> tuple[Schedule, ...]:
    """A settings schedule as the job type declares it (none when switched off)."""
    return () if cron is None else (Schedule.parse({str(k): v for k, v in cron.items()}),)


class SeedSettings(BaseSettings):
    """Every setting of the seed app, each group from its own prefix."""

    model_config = SettingsConfigDict(extra="ignore")

    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    mail: MailPolicySettings = Field(default_factory=MailPolicySettings)
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings)
    cron: CronSettings = Field(default_factory=CronSettings)
    tutorial: TutorialSettings = Field(default_factory=TutorialSettings)

    @model_validator(mode="after")
    def _mail_goes_only_where_allowed(self) -> Self:
        mail = self.mail
        if mail.development and not mail.development_here:
            raise ValueError(
                "CONVEYOR_MAIL_DEVELOPMENT (or CONVEYOR_API_DEVELOPMENT) is true inside "
                f"Kubernetes ({KUBERNETES_ENV} is set): mail to any address is for a "
                "developer's machine only; set CONVEYOR_MAIL_ALLOWED_DOMAINS and unset it"
            )
        if self.smtp.configured and not mail.allowed_domains and not mail.development:
            raise ValueError(
                "CONVEYOR_MAIL_ALLOWED_DOMAINS is empty: with a mail server "
                "(CONVEYOR_SMTP_HOST), name the domains mail may go to, e.g. example.com"
            )
        return self
