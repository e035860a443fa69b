"""What one request costs Redis: the commands it runs and the round trips it takes.

Counted on a Redis of the test's own (INFO commandstats is server-wide), with
CONFIG RESETSTAT after a warm-up request, and with a hook on the client's
connections for the round trips (one `send_packed_command` is one round trip:
a pipeline sends all its commands at once). Commands inside a Lua script
count too (TIME, GET, SET, ...): only the commands the client sends are
pinned here, so the job engine may change its scripts freely.
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
from redis.asyncio.connection import AbstractConnection

from conveyor_core.local.redis_server import RedisProcess
from tests.api.conftest import make_app, serve

# Commands a script may run, which the client did not send itself.
INSIDE_SCRIPTS = {
    "time",
    "get",
    "set",
    "exists",
    "psetex",
    "zadd",
    "hset",
    "hget",
    "hgetall",
    "zscore",
    "publish",
    "spublish",
    "hincrby",
    "expire",
}


class RoundTrips:
    """Counts the api's writes to Redis while `counting` is on."""

    def __init__(self) -> None:
        self.count = 0
        self.counting = False


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    trips = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        if trips.counting:
            trips.count += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return trips


@pytest.fixture
async def own_client(own_redis: RedisProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_app(own_redis.url)) as client:
        yield client


def client_commands(url: str) -> dict[str, int]:
    """Calls per command since CONFIG RESETSTAT (which counts itself), less our
    own INFO, and less the commands run inside scripts."""
    with redis_sync.Redis.from_url(url) as admin:
        stats: dict[str, Any] = admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    return {name: n for name, n in calls.items() if name not in INSIDE_SCRIPTS}


async def measure(
    client: httpx.AsyncClient, trips: RoundTrips, url: str, method: str, path: str, **kw: Any
) -> tuple[httpx.Response, dict[str, int], int]:
    with redis_sync.Redis.from_url(url) as admin:
        admin.config_resetstat()
    trips.count, trips.counting = 0, True
    try:
        response = await client.request(method, path, **kw)
    finally:
        trips.counting = False
    return response, client_commands(url), trips.count


async def test_a_submit_sends_the_rate_limit_and_the_submit_script_and_reads_nothing_back(
    own_client: httpx.AsyncClient, own_redis: RedisProcess, round_trips: RoundTrips
) -> None:
    payload = {"sleep_s": 0}
    assert (await own_client.post("/v1/jobs/create_task", json=payload)).status_code == 201

    response, commands, trips = await measure(
        own_client, round_trips, own_redis.url, "POST", "/v1/jobs/create_task", json=payload
    )

    assert response.status_code == 201
    assert response.json()["state"] == "queued"
    # One call spends the rate and submits (the submit is a Redis function,
    # core's functions.py): no limiter round trip of its own, no HGETALL of the
    # record it just wrote, no SCRIPT EXISTS, no WATCH/MULTI.
    assert commands == {"fcall": 1}
    assert trips == 1


async def test_a_read_is_one_script_for_the_rate_limit_and_the_record(
    own_client: httpx.AsyncClient, own_redis: RedisProcess, round_trips: RoundTrips
) -> None:
    job = (await own_client.post("/v1/jobs/create_task", json={"sleep_s": 0})).json()
    assert (await own_client.get(f"/v1/jobs/{job['id']}")).status_code == 200  # warm

    response, commands, trips = await measure(
        own_client, round_trips, own_redis.url, "GET", f"/v1/jobs/{job['id']}"
    )

    assert response.status_code == 200
    assert response.json() == job
    # One script spends the rate and reads the job (its hash, arq's job key and
    # its queue score): no pipeline of a command per queue and per key.
    assert commands == {"evalsha": 1}
    assert trips == 1


async def test_a_read_after_redis_restarted_reloads_the_read_script(
    own_client: httpx.AsyncClient, own_redis: RedisProcess
) -> None:
    """The read script's EVALSHA meets NOSCRIPT once after a restart (scripts are
    not kept): the script is loaded and sent again, and the read answers."""
    job = (await own_client.post("/v1/jobs/create_task", json={"sleep_s": 0})).json()
    with redis_sync.Redis.from_url(own_redis.url) as admin:
        admin.script_flush()
    response = await own_client.get(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["id"] == job["id"]
