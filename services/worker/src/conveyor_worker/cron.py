"""The worker's scheduler: each schedule's runs enter through the same submit as
every job.

arq's `next_cron` finds each schedule's next run, on the schedule's own clock
(its time zone, summer time included). A run is submitted a little ahead of
its time (deferred to it, so it is listed from then on) under an id of its
own, `{job type}:{scheduled ms}`: among many replicas one submit wins and the
others find the id taken, so each run happens once. Being an ordinary submit,
a run gets its type's priority, limits, flow entry and `enqueued` history.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from arq.cron import next_cron
from pydantic import ValidationError

from conveyor_core.catalog import JobModuleError, JobType
from conveyor_core.enqueue import enqueue
from conveyor_core.keys import job_id_for
from conveyor_core.schedule import Schedule
from conveyor_core.store import JobStore

logger = logging.getLogger(__name__)

# A run is submitted this long before it is due, so it is listed before it starts.
SUBMIT_AHEAD_S = 1.0


def run_id(job_type: JobType, run_at: datetime) -> str:
    """The id of one run: the same on every replica, in its queue's slot (keys.job_id_for)."""
    return job_id_for(job_type.queue, f"{job_type.name}:{int(run_at.timestamp() * 1000)}")


def next_run(schedule: Schedule, after: datetime) -> datetime:
    """The schedule's first run after `after`, on the schedule's clock."""
    fields = schedule.cron_fields()
    return next_cron(after.astimezone(schedule.zone), microsecond=0, **fields)


def check_runnable(job_type: JobType) -> None:
    """A scheduled run has no payload: its type's model must accept `{}`."""
    try:
        job_type.payload.model_validate({})
    except ValidationError as exc:
        raise JobModuleError(
            job_type.handler.partition(":")[0],
            f"job type {job_type.name!r} has a schedule, but its payload needs fields "
            f"(a scheduled run has none): {exc}",
        ) from exc


@dataclass(slots=True)
class Entry:
    """One schedule of one job type, and its next run."""

    job_type: JobType
    schedule: Schedule
    run_at: datetime


class Scheduler:
    """Submits the runs of the schedules of a worker's job types as they fall due."""

    def __init__(
        self, store: JobStore, schedules: list[tuple[JobType, Schedule]], now: datetime
    ) -> None:
        self.store = store
        for job_type, _ in schedules:
            check_runnable(job_type)
        self.entries = [Entry(t, s, next_run(s, now)) for t, s in schedules]

    def next_submit_s(self) -> float | None:
        """When the next run is to be submitted (Unix seconds), or None without schedules."""
        if not self.entries:
            return None
        return min(e.run_at.timestamp() for e in self.entries) - SUBMIT_AHEAD_S

    async def submit_due(self, now: datetime) -> None:
        """Submit each run due within SUBMIT_AHEAD_S. A run missed while no worker
        ran is submitted once (due at once), not once per missed tick. A Redis
        fault leaves the run to the next call."""
        for entry in self.entries:
            if entry.run_at.timestamp() - SUBMIT_AHEAD_S > now.timestamp():
                continue
            submitted = await enqueue(
                self.store,
                entry.job_type,
                {},
                run_at=max(entry.run_at, now).astimezone(UTC),
                job_id=run_id(entry.job_type, entry.run_at),
            )
            if submitted.created:
                logger.info("scheduled run %s submitted", submitted.job_id)
            entry.run_at = next_run(entry.schedule, max(entry.run_at, now))
