from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.conftest import make_app, serve


@pytest.fixture
async def client(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The api with the seed's routes; the tutorial's tasks sleep briefly."""
    monkeypatch.setenv("CONVEYOR_API_TASK_SLEEP_MIN_S", "0.01")
    monkeypatch.setenv("CONVEYOR_API_TASK_SLEEP_MAX_S", "0.05")
    async with serve(make_app(redis_url)) as c:
        yield c
