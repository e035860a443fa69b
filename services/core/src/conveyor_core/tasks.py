"""Stopping background tasks without swallowing the caller's own cancel.

The usual `task.cancel()` then `with suppress(CancelledError): await task`
cannot tell the task's CancelledError from the caller's: a caller cancelled
while it waits (a shutdown with a deadline, a request that goes away) has
its cancel cancel the awaited task instead, the suppress eats it, and the
caller runs on as if nothing had asked it to stop.
"""

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: "asyncio.Future[Any]", timeout_s: float | None = None) -> None:
    """Cancel `tasks` and return once every one has ended, or after
    `timeout_s` (a cancel redis-py loses leaves a task running to its next
    check of a stop flag).

    Their own cancellation is expected and not raised; the first other
    exception a task ended with is. A cancel of the caller while it waits
    raises in the caller (the tasks have been asked to stop already).
    """
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    if pending:
        # `asyncio.wait` never raises a task's outcome, so a CancelledError
        # out of it can only be the caller's.
        await asyncio.wait(pending, timeout=timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled() and (failed := task.exception()) is not None:
            raise failed
