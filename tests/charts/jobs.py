"""A job type on a queue of its own, so a second worker pool has work (two-pools values)."""

from pydantic import BaseModel

from conveyor_core.catalog import JobType
from conveyor_core.context import JobContext

MODULE = "tests.charts.jobs"


class Note(BaseModel):
    text: str


async def deliver(ctx: JobContext, payload: Note) -> str:
    """Stands in for sending a mail: returns which queue it ran from."""
    return f"{ctx.job_id}: {payload.text}"


JOB_TYPES = [JobType("deliver_note", Note, f"{MODULE}:deliver", queue="emails")]
