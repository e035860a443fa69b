from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from conveyor_api.main import create_app
from conveyor_api.settings import Settings
from conveyor_core.settings import CatalogSettings, RedisSettings
from tests.support import jobs


def make_app(redis_url: str) -> FastAPI:
    return create_app(
        Settings(
            redis=RedisSettings(url=redis_url, connect_timeout_s=0.5, socket_timeout_s=0.5),
            task_sleep_min_s=0.01,
            task_sleep_max_s=0.05,
            catalog=CatalogSettings(job_modules=jobs.MODULE),
        )
    )


async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, behind an in-process HTTP client."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api", timeout=5) as client,
    ):
        yield client


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(make_app(redis_url)):
        yield c
