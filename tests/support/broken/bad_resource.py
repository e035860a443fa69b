"""A job module whose resource fails to open (its database refuses connections)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor_core import Resource, ResourceScope


@asynccontextmanager
async def open_pool(scope: ResourceScope) -> AsyncIterator[None]:
    raise ConnectionRefusedError("db.internal:5432 refused the connection")
    yield


JOB_TYPES: list[object] = []
RESOURCES = [Resource("orders_db", open_pool)]
