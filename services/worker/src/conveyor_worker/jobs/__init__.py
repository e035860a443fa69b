"""Job functions: business logic only; the worker wraps them."""

from conveyor_worker.jobs.tutorial import create_task

FUNCTIONS = [create_task]

__all__ = ["FUNCTIONS", "create_task"]
