"""A job module that declares a job name tests.support.jobs declares too."""

from conveyor_core import JobType
from tests.support.jobs import Nothing

JOB_TYPES = [JobType("flaky", Nothing, "tests.support.broken.duplicate:handler")]
