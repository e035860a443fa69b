"""The cron jobs: the operator's digest and the removal of expired uploads.

The worker runs them on the schedules in its settings; arq's cron gives each
run a job id of its own (name and scheduled time), so with many worker
replicas each run is enqueued, and so runs, once.
"""

import logging
from datetime import UTC, datetime
from typing import Any

from conveyor_core.catalog import ScheduledRun
from conveyor_core.stats import OUTCOMES, DigestCounts, take_counts
from conveyor_worker.context import JobContext

logger = logging.getLogger(__name__)


def render_digest(counts: DigestCounts, at: datetime) -> str:
    """Plain text: a table of outcomes per job type, then the documents."""
    width = max([len("job type"), len("total"), *(len(name) for name in counts.jobs)])
    header = "job type".ljust(width) + "".join(f"{o:>10}" for o in OUTCOMES)
    lines = [
        f"Conveyor digest, {at:%Y-%m-%d %H:%M:%S} UTC",
        "What happened since the previous digest. 'retried' counts tries that",
        "failed and were retried; 'dead' counts jobs that gave up.",
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
    to = ctx.flow.cron.digest_to
    if not to:
        logger.warning("no digest sent: CONVEYOR_DIGEST_TO is not set")
        return {"sent": False, "reason": "CONVEYOR_DIGEST_TO is not set"}
    counts = await take_counts(ctx.redis, ctx.job_id)
    at = datetime.fromtimestamp(counts.taken_at_ms / 1000, tz=UTC)
    subject = (
        f"Conveyor digest: {counts.total('complete')} complete, {counts.total('retried')} retried, "
        f"{counts.total('dead')} dead, {counts.documents_processed} documents"
    )
    sent = await ctx.flow.mailer.send_once(
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
    """Remove every document past its retention: record, content and index entry."""
    removed = await ctx.flow.documents.remove_expired()
    if removed:
        logger.info("removed %d expired documents", len(removed))
    return {"removed": len(removed), "document_ids": removed[:100]}
