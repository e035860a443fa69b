"""A job module whose job prints 5 MB lines to the worker's stdout: a service
gone wild, for `make run`'s runner (tests/core/local/test_run.py)."""

import sys

from pydantic import BaseModel, Field

from conveyor_core import JobContext, JobType

MODULE = "tests.support.loud_jobs"
LINE_BYTES = 5 * 1024 * 1024


class Shout(BaseModel):
    lines: int = Field(default=1, ge=1, le=10)


async def shout(ctx: JobContext, payload: Shout) -> int:
    """Writes `lines` lines of LINE_BYTES each, blocking as a print does: a
    worker whose pipe is not drained stops here."""
    for _ in range(payload.lines):
        sys.stdout.write("x" * LINE_BYTES + "\n")
        sys.stdout.flush()
    return payload.lines


JOB_TYPES = [JobType("shout", Shout, f"{MODULE}:shout")]
