from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor_api.main import create_app
from conveyor_api.settings import Settings
from conveyor_core.settings import CatalogSettings, RedisSettings
from tests.support import jobs
from tests.support.auth import AUTH_HEADERS, TEST_KEY, TEST_KEY_NAME, api_key


def make_app(redis_url: str, **overrides: Any) -> FastAPI:
    """The api with the test job types, accepting the test key (and `overrides`)."""
    settings: dict[str, Any] = {
        # Patient: a loaded machine must not make a healthy Redis look hung.
        # The outage tests give their own tight bounds (test_redis_outage.TIGHT).
        "redis": RedisSettings(url=redis_url, connect_timeout_s=2, socket_timeout_s=2),
        "catalog": CatalogSettings(job_modules=jobs.MODULES),
        "keys": [api_key(TEST_KEY_NAME, TEST_KEY)],
        "rate_limit_per_s": 1000,
        "rate_limit_burst": 1000,
        # The tests send many requests without a key, all from one address.
        "unauthenticated_rate_per_s": 1000,
        "unauthenticated_burst": 1000,
    }
    return create_app(Settings(**{**settings, **overrides}))


@asynccontextmanager
async def serve(app: FastAPI, *, authenticated: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, behind an in-process HTTP client that sends
    the test key (unless `authenticated` is false).

    A context manager, not a generator to loop over: a test that fails inside
    it still stops the app at once, in its own task. An abandoned generator
    was closed only by the event loop's shutdown, which closes every nested
    lifespan generator at the same time as the one that runs it ("aclose():
    asynchronous generator is already running"), so the app's Redis client
    was never closed and the garbage collector reported its connection in a
    later test.
    """
    transport = httpx.ASGITransport(app=app)
    headers = AUTH_HEADERS if authenticated else {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://api", timeout=5, headers=headers
        ) as client,
    ):
        yield client


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app(redis_url)) as c:
        yield c
