"""Fencing: each try's token, and what a refused call of a stale try does.

The claim mints a token per try (see lua/lib/claim.lua) that the job's lock and
record hold. The try's end, its progress reports, its checkpoints and its lock
renewals carry it; once the record holds another token (the lock lapsed, say in
a long pause, and another worker claimed the job again), each of those calls is
refused whole by its script. The refusal is counted every time and logged once per try.
"""

import logging
from dataclasses import dataclass

from conveyor_core.metrics import STALE_CALLS

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Fence:
    """One try's token, shared by the worker (end, renewal) and the job's context
    (progress, checkpoints)."""

    queue: str
    job_id: str
    token: str
    warned: bool = False

    def refused(self, call: str) -> None:
        """A call of this try (`end`, `progress`, `checkpoint` or `renew`) was refused as stale."""
        STALE_CALLS.labels(self.queue, call).inc()
        if self.warned:
            return
        self.warned = True
        logger.warning(
            "job %s: this try is stale (its lock lapsed and the job was claimed again); "
            "its %s was refused and changed nothing",
            self.job_id,
            call,
        )
