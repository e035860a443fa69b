"""Conveyor's own Redis keys, next to arq's (`arq:job:`, `arq:result:`,
`arq:in-progress:`, `arq:retry:`, `arq:abort`, and each queue's sorted set).

arq's layout is kept as it is, so bare arq clients and workers still work;
these keys add what arq does not keep: a job's state, progress and history,
indexes to list jobs, the dead letters, idempotency and wake-ups; and for the
workflow jobs, uploaded documents, sent-mail marks and the digest's counts.
"""

PREFIX = "conveyor:"

# Hash per job: state, payload, progress, tries, times, result or error.
JOB_PREFIX = PREFIX + "job:"
# Sorted sets of job ids: `conveyor:index:{queue|all}:{index}`, where index is
# `all` (by enqueue time), `waiting` (queued and deferred, by ready time),
# or a state (by the time the job entered it). `dead` is the dead-letter set.
INDEX_PREFIX = PREFIX + "index:"
ALL = "all"
# Idempotency-Key -> "job id, payload fingerprint", per job type.
IDEMPOTENCY_PREFIX = PREFIX + "idempotency:"
# Pub/sub: one message per job change ({"id", "version"}), for SSE streams.
EVENTS_CHANNEL = PREFIX + "events"
# Pub/sub per queue: "there may be work" (a job id), sent on enqueue and
# requeue, or ABORT_MESSAGE when a running job is to be cancelled.
WAKE_PREFIX = PREFIX + "wake:"
ABORT_MESSAGE = b"abort"
# GCRA state per api key (its name): when the key's next request is "due".
RATE_LIMIT_PREFIX = PREFIX + "ratelimit:"
# Lock so that one worker at a time trims stale index entries.
HOUSEKEEPING_LOCK = PREFIX + "housekeeping"
# Hash per uploaded document: name, type, state, text, summary, times, job ids.
DOCUMENT_PREFIX = PREFIX + "document:"
# The uploaded bytes, beside the document's hash: `conveyor:document:{id}:content`.
DOCUMENT_CONTENT_SUFFIX = ":content"
# Sorted set of document ids by the time their retention ends: what cleanup removes.
DOCUMENTS_BY_EXPIRY = PREFIX + "documents:expiry"
# String per mail sent: its Message-ID, so a retried email job never sends twice.
MAIL_SENT_PREFIX = PREFIX + "mail:sent:"
# Hash of counts since the last digest: `{job type}:{complete|failed|dead}` and
# `documents:processed`, bumped in the same script as the change they count.
STATS_PENDING = PREFIX + "stats:pending"
# The counts one digest run took over (renamed from STATS_PENDING), by job id,
# so a retried digest reports the same numbers.
STATS_DIGEST_PREFIX = PREFIX + "stats:digest:"


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def index_key(queue: str, index: str) -> str:
    return f"{INDEX_PREFIX}{queue}:{index}"


def idempotency_key(job_type: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{job_type}:{key}"


def wake_channel(queue: str) -> str:
    return WAKE_PREFIX + queue


def document_key(document_id: str) -> str:
    return DOCUMENT_PREFIX + document_id


def document_content_key(document_id: str) -> str:
    return DOCUMENT_PREFIX + document_id + DOCUMENT_CONTENT_SUFFIX


def mail_sent_key(mail_key: str) -> str:
    return MAIL_SENT_PREFIX + mail_key


def stats_digest_key(job_id: str) -> str:
    return STATS_DIGEST_PREFIX + job_id


def rate_limit_key(subject: str) -> str:
    return RATE_LIMIT_PREFIX + subject
