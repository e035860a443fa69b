"""defer_by_s and run_at share one range (now … a year by default), checked
before anything is written: every stored time is one the api can read back."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from arq.connections import ArqRedis

from tests.api.conftest import make_app, serve
from tests.api.test_jobs import assert_problem, conveyor_keys, submit


@pytest.mark.parametrize(
    "run_at",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+14:00",  # year 0 in UTC
        "9999-12-31T23:59:59Z",  # a time, but ~8,000 years away
    ],
)
async def test_a_run_at_outside_the_range_is_a_422_and_nothing_is_stored(
    client: httpx.AsyncClient, redis: ArqRedis, run_at: str
) -> None:
    problem = assert_problem(await submit(client, params={"run_at": run_at}), 422)
    assert [e["field"] for e in problem["errors"]] == ["run_at"]
    assert await conveyor_keys(redis) == []
    listing = await client.get("/v1/jobs")
    assert listing.status_code == 200, listing.text
    assert listing.json()["items"] == []


async def test_a_defer_by_s_beyond_a_year_is_a_422(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    problem = assert_problem(await submit(client, params={"defer_by_s": 367 * 86_400}), 422)
    assert [e["field"] for e in problem["errors"]] == ["defer_by_s"]
    assert await conveyor_keys(redis) == []


async def test_a_run_at_just_inside_a_year_is_accepted(client: httpx.AsyncClient) -> None:
    run_at = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0)
    response = await submit(client, params={"run_at": run_at.isoformat()})
    assert response.status_code == 201, response.text
    assert datetime.fromisoformat(response.json()["scheduled_at"]) == run_at


async def test_the_range_is_a_setting(redis_url: str, redis: ArqRedis) -> None:
    async with serve(make_app(redis_url, max_defer_s=60)) as client:
        problem = assert_problem(await submit(client, params={"defer_by_s": 61}), 422)
        assert [e["field"] for e in problem["errors"]] == ["defer_by_s"]
        later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
        problem = assert_problem(await submit(client, params={"run_at": later}), 422)
        assert [e["field"] for e in problem["errors"]] == ["run_at"]
        assert await conveyor_keys(redis) == []
        assert (await submit(client, params={"defer_by_s": 59})).status_code == 201


async def test_a_run_at_in_the_past_is_due_now(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    job = (await submit(client, params={"run_at": "0288-09-04T05:08:27+14:49"})).json()
    assert job["state"] == "queued"
    assert datetime.fromisoformat(job["scheduled_at"]) >= before - timedelta(seconds=1)
