"""The scheduled jobs: the operator's digest and the removal of expired uploads.

Their job types declare their schedules (see the package's module); the
worker enqueues each run once, whatever the number of replicas. The digest
reads the platform's public counts (conveyor_core.stats): job outcomes per
type, and the documents processed, which the seed's own script counts.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor_core import JobContext, ScheduledRun
from conveyor_core.stats import OUTCOMES, take_counts
from conveyor_seed.keys import DOCUMENTS_PROCESSED
from conveyor_seed.resources import WORKFLOW

logger = logging.getLogger(__name__)
# The name under which the seed counts processed documents (see keys.py).
DOCUMENTS, _, PROCESSED = DOCUMENTS_PROCESSED.partition(":")


@dataclass(frozen=True, slots=True)
class DigestCounts:
    """What happened between two digests."""

    # job type -> outcome (complete, retrying: tries that failed, dead) -> count
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    documents_processed: int = 0
    taken_at_ms: int = 0

    def total(self, outcome: str) -> int:
        return sum(counts.get(outcome, 0) for counts in self.jobs.values())


async def take_digest_counts(ctx: JobContext) -> DigestCounts:
    """The counts since the last digest, owned by this run (a retry gets the same)."""
    counts = await take_counts(ctx.redis, ctx.job_id, ctx.catalog.all_shards())
    by_name = dict(counts.by_name)
    documents = by_name.pop(DOCUMENTS, {}).get(PROCESSED, 0)
    jobs = {name: {o: events.get(o, 0) for o in OUTCOMES} for name, events in by_name.items()}
    return DigestCounts(jobs, documents, counts.taken_at_ms)


def render_digest(counts: DigestCounts, at: datetime) -> str:
    """Plain text: a table of outcomes per job type, then the documents."""
    width = max([len("job type"), len("total"), *(len(name) for name in counts.jobs)])
    header = "job type".ljust(width) + "".join(f"{o:>10}" for o in OUTCOMES)
    lines = [
        f"Conveyor digest, {at:%Y-%m-%d %H:%M:%S} UTC",
        "What happened since the previous digest. 'retrying' counts tries that",
        "failed and were to be tried again; 'dead' counts jobs that gave up.",
        "",
        header,
    ]
    for name, by_outcome in counts.jobs.items():
        lines.append(name.ljust(width) + "".join(f"{by_outcome.get(o, 0):>10}" for o in OUTCOMES))
    lines.append("total".ljust(width) + "".join(f"{counts.total(o):>10}" for o in OUTCOMES))
    lines += ["", f"Documents processed: {counts.documents_processed}", ""]
    return "\n".join(lines)


async def send_digest(ctx: JobContext, payload: ScheduledRun) -> dict[str, Any]:
    """Mail the counts since the last digest to CONVEYOR_DIGEST_TO."""
    flow = ctx.resource(WORKFLOW)
    to = flow.settings.cron.digest_to
    if not to:
        logger.warning("no digest sent: CONVEYOR_DIGEST_TO is not set")
        return {"sent": False, "reason": "CONVEYOR_DIGEST_TO is not set"}
    counts = await take_digest_counts(ctx)
    at = datetime.fromtimestamp(counts.taken_at_ms / 1000, tz=UTC)
    subject = (
        f"Conveyor digest: {counts.total('complete')} complete, "
        f"{counts.total('retrying')} retrying, {counts.total('dead')} dead, "
        f"{counts.documents_processed} documents"
    )
    sent = await flow.mailer.send_once(
        f"send_digest:{ctx.job_id}",
        to=to,
        subject=subject,
        body=render_digest(counts, at),
        headers={"X-Conveyor-Job-Id": ctx.job_id},
    )
    return {
        "sent": True,
        "message_id": sent.message_id,
        "jobs": counts.jobs,
        "documents_processed": counts.documents_processed,
    }


async def cleanup_temp_uploads(ctx: JobContext, payload: ScheduledRun) -> dict[str, Any]:
    """Remove every document past its retention (record, index entry and blobs),
    then the blobs no document refers to any more (an upload cut short)."""
    documents = ctx.resource(WORKFLOW).documents
    removed = await documents.remove_expired()
    orphans = await documents.remove_orphans()
    if removed or orphans:
        logger.info("removed %d expired documents and %d orphan blobs", len(removed), orphans)
    return {"removed": len(removed), "document_ids": removed[:100], "orphan_blobs": orphans}
