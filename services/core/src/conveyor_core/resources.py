"""Resources a job module's handlers share: a DB pool, an HTTP client, a mailer.

A resource is declared once, in a job module's `RESOURCES`, with a factory in
the shape of FastAPI's lifespan: a function that returns an async context
manager. Each worker process enters it once, before its first job, and exits
it at shutdown; the api never opens one. A handler reaches a resource through
its context, typed: `ctx.resource(MAILER)` is the mailer.

    @asynccontextmanager
    async def open_pool(scope: ResourceScope) -> AsyncIterator[Pool]:
        pool = await create_pool(...)
        try:
            yield pool
        finally:
            await pool.close()

    POOL = Resource("pool", open_pool)
"""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from arq.connections import ArqRedis

T = TypeVar("T")


class ResourceNotOpenError(LookupError):
    """A handler asked for a resource that no job module of this worker declares."""


@dataclass(slots=True)
class ResourceScope:
    """What a resource factory gets: the worker's Redis client, and the resources
    opened before this one (a module's resources open in the order declared)."""

    redis: "ArqRedis"
    opened: dict[str, Any] = field(default_factory=dict)

    def resource(self, resource: "Resource[T]") -> T:
        try:
            value: T = self.opened[resource.name]
        except KeyError:
            raise ResourceNotOpenError(
                f"resource {resource.name!r} is not open yet: declare it before those using it"
            ) from None
        return value


@dataclass(frozen=True, slots=True, eq=False)
class Resource(Generic[T]):
    """One shared resource: its name, and the factory that opens (and closes) it."""

    name: str
    open: Callable[[ResourceScope], AbstractAsyncContextManager[T]]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"resource name {self.name!r}: use letters, digits, _ and -")
