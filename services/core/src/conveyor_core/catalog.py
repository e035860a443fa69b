"""The job types Conveyor knows: the api enqueues them, the worker runs them."""

from dataclasses import dataclass

# arq's own default queue, so a bare arq client or worker interoperates.
DEFAULT_QUEUE = "arq:queue"


@dataclass(frozen=True, slots=True)
class JobType:
    """One job type, declared once for both services."""

    name: str
    queue: str = DEFAULT_QUEUE


# The tutorial's job: sleeps a while, standing in for real work.
CREATE_TASK = JobType(name="create_task")
