"""The tutorial's job."""

import asyncio
from typing import Any


async def create_task(ctx: dict[str, Any], sleep_s: float) -> float:
    """Stand in for a long computation: sleep, then report how long."""
    await asyncio.sleep(sleep_s)
    return sleep_s
