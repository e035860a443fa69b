"""A job module with a schedule that can never run (hour 25)."""

from conveyor_core import JobType, Schedule
from tests.support.jobs import Nothing

JOB_TYPES = [
    JobType("nightly", Nothing, "tests.support.jobs:doomed", schedules=(Schedule(hour=25),))
]
