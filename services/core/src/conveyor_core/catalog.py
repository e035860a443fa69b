"""The job catalog: every job type declared once, for both services.

The api validates payloads against it and never imports a handler; the
worker registers exactly the catalog's handlers for its queue. More job types
come from the modules named in `CONVEYOR_JOB_MODULES`, each exposing
`JOB_TYPES: list[JobType]`.
"""

import importlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, EmailStr, Field

from conveyor_core.flow import Limits
from conveyor_core.jobs import DEFAULT_PRIORITY, HIGHEST_PRIORITY, LOWEST_PRIORITY

# arq's own default queue, so a bare arq client or worker interoperates.
DEFAULT_QUEUE = "arq:queue"


class PermanentJobError(Exception):
    """Raise from a job to fail it at once: no retry, straight to the dead letters."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing job is retried: exponential backoff with jitter, up to `max_tries`."""

    max_tries: int = 5
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    # Errors that no retry can fix; PermanentJobError and invalid payloads always are.
    permanent_errors: tuple[type[BaseException], ...] = ()
    # A try that hits the job's timeout is retried unless this is False.
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError(f"invalid retry policy: {self}")

    def backoff_s(self, job_try: int, rng: random.Random | None = None) -> float:
        """Delay before try `job_try + 1`: "equal jitter", so delays grow yet spread out.

        The ceiling doubles per try (base, 2·base, 4·base … up to the cap); half
        of it is fixed and half random, which keeps retries of many jobs that
        failed together from arriving together.
        """
        ceiling_s = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** (job_try - 1))
        jitter_s: float = (rng or random).uniform(0, ceiling_s / 2)
        return ceiling_s / 2 + jitter_s

    def is_permanent(self, error: BaseException) -> bool:
        return isinstance(error, (PermanentJobError, *self.permanent_errors))


@dataclass(frozen=True, slots=True)
class JobType:
    """One job type: what it accepts, where it runs and how it fails."""

    name: str
    payload: type[BaseModel]
    # "package.module:function", imported by the worker only.
    handler: str
    queue: str = DEFAULT_QUEUE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 300.0
    # How long a finished job (and its result) stays readable.
    keep_result_s: float = 86_400.0
    description: str = ""
    # 0 (highest) to 9 (lowest); a submit may give another.
    priority: int = DEFAULT_PRIORITY
    # Concurrency and rate limits, per type and per key, across all workers.
    limits: Limits | None = None

    def __post_init__(self) -> None:
        priority_ok = isinstance(self.priority, int) and not isinstance(self.priority, bool)
        if not priority_ok or not HIGHEST_PRIORITY <= self.priority <= LOWEST_PRIORITY:
            raise ValueError(
                f"job type {self.name!r}: priority must be {HIGHEST_PRIORITY} (highest) to "
                f"{LOWEST_PRIORITY} (lowest), not {self.priority!r}"
            )
        if self.limits is not None and (problems := self.limits.problems(self.payload)):
            raise ValueError(f"job type {self.name!r}: " + "; ".join(problems))


class CreateTask(BaseModel):
    """Payload of the tutorial's `create_task`."""

    sleep_s: float = Field(ge=0, le=3600, description="How long the job sleeps.")


# The tutorial's job: sleeps a while, standing in for real work.
CREATE_TASK = JobType(
    name="create_task",
    payload=CreateTask,
    handler="conveyor_worker.jobs.tutorial:create_task",
    retry=RetryPolicy(max_tries=3),
    timeout_s=60.0,
    description="The tutorial's task: sleep `sleep_s` seconds.",
)

# Ids of Conveyor's own records (documents, jobs) as jobs pass them.
RecordId = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


class SendEmail(BaseModel):
    """Payload of `send_email`: one mail, sent once however often the job is tried."""

    to_email: EmailStr
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=100_000)


class DocumentRef(BaseModel):
    """Payload of the document jobs: only the id; each job re-reads the document."""

    document_id: str = RecordId


class ScheduledRun(BaseModel):
    """Payload of the cron jobs: none; what they do depends on when they run."""


# Mail servers go away for minutes, not seconds: back off up to 10 minutes.
MAIL_RETRY = RetryPolicy(max_tries=8, backoff_base_s=2.0, backoff_cap_s=600.0)

# The seed's welcome mail, or any other single mail.
SEND_EMAIL = JobType(
    name="send_email",
    payload=SendEmail,
    handler="conveyor_worker.jobs.email:send_email",
    retry=MAIL_RETRY,
    timeout_s=60.0,
    description="Send one mail over SMTP; a retry never sends it twice.",
)

PROCESS_DOCUMENT = JobType(
    name="process_document",
    payload=DocumentRef,
    handler="conveyor_worker.jobs.documents:process_document",
    retry=RetryPolicy(max_tries=5, backoff_base_s=2.0, backoff_cap_s=300.0),
    timeout_s=300.0,
    description="Extract an uploaded document's text, summarize it, then mail the uploader.",
)

EMAIL_USER = JobType(
    name="email_user",
    payload=DocumentRef,
    handler="conveyor_worker.jobs.email:email_user",
    retry=MAIL_RETRY,
    timeout_s=60.0,
    description="Mail a processed document's summary to the address given at upload; once.",
)

SEND_DIGEST = JobType(
    name="send_digest",
    payload=ScheduledRun,
    handler="conveyor_worker.jobs.scheduled:send_digest",
    retry=RetryPolicy(max_tries=5, backoff_base_s=5.0, backoff_cap_s=300.0),
    timeout_s=60.0,
    description="Mail the operator the jobs completed, failed and dead per type since the last "
    "digest, and the documents processed. Runs on the worker's schedule.",
)

CLEANUP_TEMP_UPLOADS = JobType(
    name="cleanup_temp_uploads",
    payload=ScheduledRun,
    handler="conveyor_worker.jobs.scheduled:cleanup_temp_uploads",
    retry=RetryPolicy(max_tries=3),
    timeout_s=300.0,
    description="Remove uploaded documents past their retention. Runs on the worker's schedule.",
)

BUILTIN_JOB_TYPES: tuple[JobType, ...] = (
    CREATE_TASK,
    SEND_EMAIL,
    PROCESS_DOCUMENT,
    EMAIL_USER,
    SEND_DIGEST,
    CLEANUP_TEMP_UPLOADS,
)


class UnknownJobTypeError(KeyError):
    pass


class Catalog:
    """Job types by name."""

    def __init__(self, job_types: Iterable[JobType]) -> None:
        self._types: dict[str, JobType] = {}
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is declared twice")
            self._types[job_type.name] = job_type

    def __getitem__(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobTypeError(name) from None

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def queues(self) -> list[str]:
        return sorted({job_type.queue for job_type in self})

    def for_queue(self, queue: str) -> list[JobType]:
        return [job_type for job_type in self if job_type.queue == queue]


def load_catalog(modules: Iterable[str] = ()) -> Catalog:
    """The built-in job types plus each module's `JOB_TYPES`."""
    job_types = list(BUILTIN_JOB_TYPES)
    for module_name in modules:
        module = importlib.import_module(module_name)
        try:
            job_types += module.JOB_TYPES
        except AttributeError:
            raise ValueError(f"job module {module_name!r} has no JOB_TYPES list") from None
    return Catalog(job_types)
