"""A job module with one queue over three shards, for the tests of shards
with real processes: `sharded_effect`, the test jobs' `effect` on it, and
`sharded_member`, their group `member`."""

from conveyor_core import JobType, Queue, RetryPolicy
from tests.support.jobs import Effect, Member

QUEUE = "sharded"
QUEUES = [Queue(QUEUE, shards=3)]
JOB_TYPES = [
    JobType(
        "sharded_effect",
        Effect,
        "tests.support.jobs:effect",
        queue=QUEUE,
        retry=RetryPolicy(max_tries=3, backoff_base_s=0.2),
    ),
    JobType(
        "sharded_member",
        Member,
        "tests.support.jobs:member",
        queue=QUEUE,
        retry=RetryPolicy(max_tries=3, backoff_base_s=0.2),
    ),
]
