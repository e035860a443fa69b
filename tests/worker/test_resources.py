"""Job modules' resources in the worker: opened in order, a failure to open names
its module in one line, a close that fails or hangs never holds shutdown."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from arq.connections import ArqRedis

from conveyor_core import Resource, ResourceScope
from conveyor_core.catalog import Catalog
from conveyor_worker.resources import ResourceOpenError, open_resources


def catalog_of(*resources: Resource[object]) -> Catalog:
    catalog = Catalog([], resources)
    catalog.resource_modules = {r.name: "team.jobs" for r in resources}
    return catalog


def recording(name: str, events: list[str], *, fail_open: bool = False) -> Resource[object]:
    @asynccontextmanager
    async def open_it(scope: ResourceScope) -> AsyncIterator[object]:
        if fail_open:
            raise ConnectionRefusedError("db:5432 refused")
        events.append(f"open {name}")
        try:
            yield name
        finally:
            events.append(f"close {name}")

    return Resource(name, open_it)


async def test_resources_open_in_order_and_close_in_reverse(redis: ArqRedis) -> None:
    events: list[str] = []
    opened = await open_resources(catalog_of(recording("a", events), recording("b", events)), redis)
    assert opened.by_name == {"a": "a", "b": "b"}
    await opened.close(timeout_s=1)
    assert events == ["open a", "open b", "close b", "close a"]


async def test_a_resource_may_use_one_declared_before_it(redis: ArqRedis) -> None:
    first = Resource("first", lambda scope: _value(41))

    @asynccontextmanager
    async def second_open(scope: ResourceScope) -> AsyncIterator[int]:
        yield scope.resource(first) + 1

    second = Resource("second", second_open)
    opened = await open_resources(catalog_of(first, second), redis)  # type: ignore[arg-type]
    assert opened.by_name["second"] == 42
    await opened.close(timeout_s=1)


@asynccontextmanager
async def _value(value: int) -> AsyncIterator[int]:
    yield value


async def test_a_resource_that_fails_to_open_names_module_and_resource(redis: ArqRedis) -> None:
    events: list[str] = []
    catalog = catalog_of(recording("a", events), recording("db", events, fail_open=True))
    with pytest.raises(ResourceOpenError) as error:
        await open_resources(catalog, redis)
    assert str(error.value) == (
        "job module 'team.jobs': resource 'db' failed to open: "
        "ConnectionRefusedError: db:5432 refused"
    )
    # What opened before it is closed again.
    assert events == ["open a", "close a"]


async def test_a_close_that_hangs_or_fails_does_not_hold_shutdown(redis: ArqRedis) -> None:
    @asynccontextmanager
    async def hangs(scope: ResourceScope) -> AsyncIterator[str]:
        yield "hangs"
        await asyncio.sleep(3600)

    @asynccontextmanager
    async def fails(scope: ResourceScope) -> AsyncIterator[str]:
        yield "fails"
        raise RuntimeError("cannot close")

    opened = await open_resources(
        catalog_of(Resource("hangs", hangs), Resource("fails", fails)),
        redis,
    )
    start_s = time.monotonic()
    await opened.close(timeout_s=0.3)
    # A fault bound: a close that waited for the hanging resource would take
    # an hour; the limit and a busy machine's slack, seconds at most.
    assert time.monotonic() - start_s < 10
