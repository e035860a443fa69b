"""The job modules' resources in a worker process: opened once before the first
job, closed once at shutdown, each failure named in one line."""

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from conveyor_core.catalog import Catalog, one_line
from conveyor_core.resources import ResourceScope

logger = logging.getLogger(__name__)


class ResourceOpenError(RuntimeError):
    """A resource failed to open; the worker refuses to start."""


@dataclass(slots=True)
class OpenResources:
    """The open resources by name, and what closes them."""

    by_name: dict[str, Any] = field(default_factory=dict)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def close(self, timeout_s: float) -> None:
        """Close in reverse order of opening; a resource that fails or hangs is
        logged, and never holds shutdown past `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.stack.aclose()
        except TimeoutError:
            logger.error("resources did not close within %.1f s; shutting down anyway", timeout_s)
        except Exception as exc:
            logger.error("a resource failed to close: %s: %s", type(exc).__name__, exc)
        self.by_name.clear()


async def open_resources(catalog: Catalog, redis: ArqRedis) -> OpenResources:
    """Enter each declared resource's factory, in the order declared."""
    opened = OpenResources()
    scope = ResourceScope(redis=redis, opened=opened.by_name)
    for resource in catalog.resources:
        module = catalog.resource_modules.get(resource.name, "?")
        try:
            value = await opened.stack.enter_async_context(resource.open(scope))
        except Exception as exc:
            await opened.close(timeout_s=5.0)
            raise ResourceOpenError(
                f"job module {module!r}: resource {resource.name!r} failed to open: "
                f"{type(exc).__name__}: {one_line(str(exc))}"
            ) from exc
        opened.by_name[resource.name] = value
        logger.info("resource %s of job module %s is open", resource.name, module)
    return opened
