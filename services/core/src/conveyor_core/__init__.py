"""Conveyor's public surface for job authors: everything a job module needs.

    from conveyor_core import JobContext, JobType, Resource, RetryPolicy, Schedule

A job module imports from here only, so both services load it: the api to
validate payloads, the worker to run handlers. Anything else in
`conveyor_core` is the platform's own and may change.
"""

from conveyor_core.catalog import (
    DEFAULT_QUEUE,
    JobModuleError,
    JobType,
    PermanentJobError,
    Queue,
    RecordId,
    RetryPolicy,
    ScheduledRun,
)
from conveyor_core.checkpoint import Checkpoint, CheckpointError, Interrupted
from conveyor_core.context import AnyHandler, JobContext, JobHandler
from conveyor_core.debounce import Debounce
from conveyor_core.groups import Call, ChildFailure, FailurePolicy, Group
from conveyor_core.jobs import JobState
from conveyor_core.resources import Resource, ResourceNotOpenError, ResourceScope
from conveyor_core.schedule import InvalidScheduleError, Schedule
from conveyor_core.snooze import RateLimited, Snooze, retry_after_s
from conveyor_core.store import JobStore, Submitted

__all__ = [
    "DEFAULT_QUEUE",
    "AnyHandler",
    "Call",
    "Checkpoint",
    "CheckpointError",
    "ChildFailure",
    "Debounce",
    "FailurePolicy",
    "Group",
    "Interrupted",
    "InvalidScheduleError",
    "JobContext",
    "JobHandler",
    "JobModuleError",
    "JobState",
    "JobStore",
    "JobType",
    "PermanentJobError",
    "Queue",
    "RateLimited",
    "RecordId",
    "Resource",
    "ResourceNotOpenError",
    "ResourceScope",
    "RetryPolicy",
    "Schedule",
    "ScheduledRun",
    "Snooze",
    "Submitted",
    "retry_after_s",
]
