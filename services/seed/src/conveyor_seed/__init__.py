"""The seed app as a job module: the tutorial's task, the document workflow
(process_document -> email_user; a long document's chunks summarized in
parallel, summarize_chunk x N -> combine_summaries -> email_user), mail, the
digest and the cleanup of uploads.

Conveyor loads it like a team's own module (it is the default of
`CONVEYOR_JOB_MODULES`): job types, their schedules, the resource their
handlers share, and the api routes of the tutorial (`POST /task`) and of
documents (`/v1/documents`). It imports only core's public surface, so the
api, which has no worker code, loads it too.
"""

from pydantic import BaseModel, EmailStr, Field

from conveyor_core import JobType, RecordId, RetryPolicy, ScheduledRun
from conveyor_seed.resources import WORKFLOW
from conveyor_seed.settings import CronSettings, as_schedules

_cron = CronSettings()


class CreateTask(BaseModel):
    """Payload of the tutorial's `create_task`."""

    sleep_s: float = Field(ge=0, le=3600, description="How long the job sleeps.")


class SendEmail(BaseModel):
    """Payload of `send_email`: one mail, sent once however often the job is tried."""

    to_email: EmailStr
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=100_000)


class DocumentRef(BaseModel):
    """Payload of the document jobs: only the id; each job re-reads the document."""

    document_id: str = RecordId


class DocumentChunk(BaseModel):
    """Payload of `summarize_chunk`: a range of a document's stored text, by offsets."""

    document_id: str = RecordId
    index: int = Field(ge=0)
    start: int = Field(ge=0, description="The chunk's first character in the text.")
    end: int = Field(gt=0, description="One past its last.")


# The tutorial's job: sleeps a while, standing in for real work.
CREATE_TASK = JobType(
    name="create_task",
    payload=CreateTask,
    handler="conveyor_seed.jobs.tutorial:create_task",
    retry=RetryPolicy(max_tries=3),
    timeout_s=60.0,
    description="The tutorial's task: sleep `sleep_s` seconds.",
)

# Mail servers go away for minutes, not seconds: back off up to 10 minutes.
MAIL_RETRY = RetryPolicy(max_tries=8, backoff_base_s=2.0, backoff_cap_s=600.0)

# Only the seed's own code enqueues its mails, documents' jobs and scheduled
# runs (public=False): a client that could submit send_email would have the
# platform mail anyone anything.

# The seed's welcome mail, or any other single mail.
SEND_EMAIL = JobType(
    name="send_email",
    public=False,
    payload=SendEmail,
    handler="conveyor_seed.jobs.email:send_email",
    retry=MAIL_RETRY,
    timeout_s=60.0,
    description="Send one mail over SMTP; a retry never sends it twice.",
)

PROCESS_DOCUMENT = JobType(
    name="process_document",
    public=False,
    payload=DocumentRef,
    handler="conveyor_seed.jobs.documents:process_document",
    retry=RetryPolicy(max_tries=5, backoff_base_s=2.0, backoff_cap_s=300.0),
    timeout_s=300.0,
    description="Extract an uploaded document's text, summarize it, then mail the uploader.",
)

# A long document's chunks, summarized in parallel, then combined (a group:
# conveyor_seed.jobs.documents).
SUMMARIZE_CHUNK = JobType(
    name="summarize_chunk",
    public=False,
    payload=DocumentChunk,
    handler="conveyor_seed.jobs.documents:summarize_chunk",
    retry=RetryPolicy(max_tries=5, backoff_base_s=2.0, backoff_cap_s=300.0),
    timeout_s=300.0,
    description="Summarize one chunk of a long document's text (a member of its group).",
)

COMBINE_SUMMARIES = JobType(
    name="combine_summaries",
    public=False,
    payload=DocumentRef,
    handler="conveyor_seed.jobs.documents:combine_summaries",
    retry=RetryPolicy(max_tries=5, backoff_base_s=2.0, backoff_cap_s=300.0),
    timeout_s=300.0,
    description="Combine a long document's chunk summaries into its summary, then mail the "
    "uploader (the continuation of its chunks' group).",
)

EMAIL_USER = JobType(
    name="email_user",
    public=False,
    payload=DocumentRef,
    handler="conveyor_seed.jobs.email:email_user",
    retry=MAIL_RETRY,
    timeout_s=60.0,
    description="Mail a processed document's summary to the address given at upload; once.",
)

SEND_DIGEST = JobType(
    name="send_digest",
    public=False,
    payload=ScheduledRun,
    handler="conveyor_seed.jobs.scheduled:send_digest",
    retry=RetryPolicy(max_tries=5, backoff_base_s=5.0, backoff_cap_s=300.0),
    timeout_s=60.0,
    description="Mail the operator the tries complete, retrying and dead per job type since the "
    "last digest, and the documents processed. Daily at 09:00 UTC unless CONVEYOR_DIGEST_SCHEDULE "
    "says otherwise.",
    schedules=as_schedules(_cron.digest_schedule),
)

CLEANUP_TEMP_UPLOADS = JobType(
    name="cleanup_temp_uploads",
    public=False,
    payload=ScheduledRun,
    handler="conveyor_seed.jobs.scheduled:cleanup_temp_uploads",
    retry=RetryPolicy(max_tries=3),
    timeout_s=300.0,
    description="Remove uploaded documents past their retention. Hourly at :30 unless "
    "CONVEYOR_CLEANUP_SCHEDULE says otherwise.",
    schedules=as_schedules(_cron.cleanup_schedule),
)

JOB_TYPES = [
    CREATE_TASK,
    SEND_EMAIL,
    PROCESS_DOCUMENT,
    SUMMARIZE_CHUNK,
    COMBINE_SUMMARIES,
    EMAIL_USER,
    SEND_DIGEST,
    CLEANUP_TEMP_UPLOADS,
]
RESOURCES = [WORKFLOW]
API_ROUTERS = ["conveyor_seed.routes_tutorial:router", "conveyor_seed.routes_documents:router"]
