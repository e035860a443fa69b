"""A job module whose resource never finishes closing."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor_core import Resource, ResourceScope


@asynccontextmanager
async def open_stuck(scope: ResourceScope) -> AsyncIterator[str]:
    yield "stuck"
    await asyncio.sleep(3600)


JOB_TYPES: list[object] = []
RESOURCES = [Resource("stuck_client", open_stuck)]
