"""Tenants: what each api key may submit and read, from its entry in
`CONVEYOR_API_KEYS` (auth.ApiKey; every policy field is optional).

A key may be limited to job types and queues, to a highest priority, to a
quota of outstanding jobs (waiting, running or retrying), and to reading only
the jobs (and documents) it submitted. Every job records the key it was
submitted with (`submitted_by`). Refusals are problem+json: 403 naming the
field (`job_type`, `queue`, `priority`), 429 with Retry-After for the quota,
and 404 for another key's job, as if it did not exist.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException

from conveyor_api.auth import ApiKey, Reads
from conveyor_core.catalog import Catalog, JobType
from conveyor_core.jobs import JobPublic
from conveyor_core.keys import outstanding_key
from conveyor_core.store import Quota
from conveyor_core.stored_bytes import ByteQuota, ByteQuotaError

POLICY_PROBLEM = "urn:conveyor:problem:key-policy"
QUOTA_PROBLEM = "urn:conveyor:problem:quota"


class PolicyRefusal(HTTPException):
    """A request the key's policy refuses: 403 naming the field at fault, or
    429 (its quota). The problem handler reads `problem_type` and `extensions`."""

    def __init__(
        self,
        key: ApiKey,
        field: str,
        detail: str,
        *,
        status: int = 403,
        problem_type: str = POLICY_PROBLEM,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, f"Api key {key.name!r} {detail}", headers=headers)
        self.problem_type = problem_type
        self.extensions: dict[str, Any] = {"field": field}


def submit_priority(key: ApiKey, job_type: JobType, priority: int | None) -> int | None:
    """The priority to submit `job_type` with for `key`, once the key may submit
    it at all (else PolicyRefusal): the one asked for, if the key may ask for it;
    none asked, the job type's, lowered to the key's highest if it is above it."""
    if key.job_types is not None and job_type.name not in key.job_types:
        allowed = ", ".join(sorted(key.job_types)) or "none"
        raise PolicyRefusal(
            key, "job_type", f"may not submit {job_type.name!r} jobs; it may submit: {allowed}."
        )
    if key.queues is not None and job_type.queue not in key.queues:
        raise PolicyRefusal(
            key, "queue", f"may not submit to queue {job_type.queue!r} ({job_type.name} jobs)."
        )
    highest = key.highest_priority
    if highest is None:
        return priority
    if priority is None:
        return max(job_type.priority, highest)
    if priority < highest:
        raise PolicyRefusal(
            key,
            "priority",
            f"may not submit at priority {priority}; its highest is {highest} "
            "(0 is the highest, 9 the lowest).",
        )
    return priority


def quota_of(key: ApiKey) -> Quota | None:
    """The key's quota of outstanding jobs, as the submit script keeps it."""
    if key.max_outstanding_jobs is None:
        return None
    return Quota(outstanding_key(key.name), key.max_outstanding_jobs)


def over_quota(key: ApiKey, retry_after_s: int) -> PolicyRefusal:
    return PolicyRefusal(
        key,
        "max_outstanding_jobs",
        f"has {key.max_outstanding_jobs} jobs waiting, running or retrying, its quota; "
        "submit more once some have finished.",
        status=429,
        problem_type=QUOTA_PROBLEM,
        headers={"Retry-After": str(retry_after_s)},
    )


def byte_quota_of(key: ApiKey) -> ByteQuota | None:
    """The key's quota of stored bytes (documents, offloaded payloads)."""
    if key.max_stored_bytes is None:
        return None
    return ByteQuota(key.name, key.max_stored_bytes)


def over_byte_quota(key: ApiKey, error: ByteQuotaError) -> PolicyRefusal:
    """413 for one thing larger than the whole quota (waiting cannot help),
    else 429 with Retry-After: when some of what the key stores stops counting."""
    if error.too_large:
        return PolicyRefusal(
            key,
            "max_stored_bytes",
            f"may store {key.max_stored_bytes} bytes in all; this is {error.size_bytes}.",
            status=413,
            problem_type=QUOTA_PROBLEM,
        )
    return PolicyRefusal(
        key,
        "max_stored_bytes",
        f"stores {error.used_bytes} bytes of its quota of {key.max_stored_bytes}; "
        f"{error.size_bytes} more do not fit until what it stored expires.",
        status=429,
        problem_type=QUOTA_PROBLEM,
        headers={"Retry-After": str(error.retry_after_s)},
    )


def reads(key: ApiKey, job: JobPublic) -> bool:
    """Whether `key` may see `job` (an own-jobs key sees only its own)."""
    return reads_owned_by(key, job.submitted_by)


def reads_owned_by(key: ApiKey, submitter: str | None) -> bool:
    """Whether `key` may see what `submitter` (an api key's name, or None:
    no key's) submitted or uploaded."""
    return key.reads is Reads.ALL or submitter == key.name


def owner(key: ApiKey) -> str | None:
    """The submitter whose jobs alone `key` reads, or None for every job."""
    return key.name if key.reads is Reads.OWN else None


def check_policies(keys: Iterable[ApiKey], catalog: Catalog) -> None:
    """Refuse keys whose policy names a job type or queue the catalog has not
    (or an internal type, which no key submits): a typo must not pass unseen."""
    public = {t.name for t in catalog.public()}
    queues = set(catalog.queues())
    for key in keys:
        for name in sorted(key.job_types or ()):
            if name not in catalog:
                raise ValueError(f"api key {key.name!r}: job_types names unknown type {name!r}")
            if name not in public:
                raise ValueError(
                    f"api key {key.name!r}: job_types names {name!r}, which is internal "
                    "(public=False): no key submits it"
                )
        for queue in sorted((key.queues or set()) - queues):
            raise ValueError(f"api key {key.name!r}: queues names unknown queue {queue!r}")
