"""The tutorial's job."""

import asyncio

from conveyor_core import JobContext
from conveyor_seed import CreateTask

PROGRESS_STEPS = 10


async def create_task(ctx: JobContext, payload: CreateTask) -> float:
    """Stand in for a long computation: sleep in steps, reporting progress."""
    if not payload.sleep_s:
        return 0.0
    step_s = payload.sleep_s / PROGRESS_STEPS
    for step in range(1, PROGRESS_STEPS + 1):
        await asyncio.sleep(step_s)
        if step < PROGRESS_STEPS:
            await ctx.progress(step * 100 // PROGRESS_STEPS, f"slept {step * step_s:.2f} s")
    return payload.sleep_s
