"""Rate limits per key (shared by replicas through Redis) and input limits, all
answered as problem+json."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
import redis as redis_sync
from arq.connections import ArqRedis
from fastapi import FastAPI, File, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from conveyor_api.auth import Scope
from conveyor_api.edge import Edge
from conveyor_api.limits import check_filename, json_problem, upload_routes
from conveyor_core.local.redis_server import RedisProcess
from conveyor_core.ratelimit import RateLimiter
from tests.api.conftest import make_app, serve
from tests.api.test_auth import concrete, every_protected_route
from tests.support.auth import api_key, bearer

FLOODER, BYSTANDER = "cvk_flooder", "cvk_bystander"
KEYS = [api_key("flooder", FLOODER), api_key("bystander", BYSTANDER)]
BURST = 5


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two api replicas on one Redis, each key allowed 1 request/s and a burst of 5."""

    def replica() -> FastAPI:
        return make_app(redis_url, keys=KEYS, rate_limit_per_s=1, rate_limit_burst=BURST)

    async with (
        serve(replica(), authenticated=False) as one,
        serve(replica(), authenticated=False) as two,
    ):
        yield one, two


async def test_a_flooding_key_gets_429s_and_another_key_does_not(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    one, two = replicas
    flood = [
        await (one if i % 2 else two).get("/v1/jobs", headers=bearer(FLOODER)) for i in range(20)
    ]
    statuses = [r.status_code for r in flood]
    # The burst is shared by both replicas: 5 in all, then 429s.
    assert statuses == [200] * BURST + [429] * (20 - BURST)
    refused = flood[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert "flooder" in refused.json()["detail"]

    others = [await two.get("/v1/jobs", headers=bearer(BYSTANDER)) for _ in range(BURST)]
    assert [r.status_code for r in others] == [200] * BURST


async def test_the_limit_refills_at_its_rate(redis: ArqRedis) -> None:
    limiter = RateLimiter(redis, rate_per_s=20, burst=2)
    assert [(await limiter.hit("k")).allowed for _ in range(3)] == [True, True, False]
    denied = await limiter.hit("k")
    assert 0 < denied.retry_after_s <= 0.05
    await asyncio.sleep(denied.retry_after_s + 0.01)
    assert (await limiter.hit("k")).allowed
    # The state is one small key that expires once the burst is whole again.
    assert 0 < await redis.pttl("conveyor:ratelimit:k") <= 200


async def test_an_unauthenticated_flood_spends_no_key_budget(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], redis: ArqRedis
) -> None:
    one, _ = replicas
    for _ in range(10):
        assert (await one.get("/v1/jobs", headers=bearer("cvk_wrong"))).status_code == 401
    assert await redis.keys("conveyor:ratelimit:*") == []


def every_route_once() -> list[tuple[str, str]]:
    """Each protected route, with one of the per-type submit routes standing for
    all of them (they are one endpoint, built per type)."""
    routes = []
    for method, path, _ in every_protected_route():
        if path.startswith("/v1/jobs/") and "{" not in path and path != "/v1/jobs/create_task":
            continue
        routes.append((method, path))
    return routes


# A valid request per route, so that nothing but the rate refuses it.
TASK = {"job_type": "create_task", "payload": {"sleep_s": 0}}
BODIES: dict[str, Any] = {
    "/task": {"count": 1},
    "/v1/jobs/create_task": {"sleep_s": 0},
    "/v1/groups": {"children": [TASK]},
    "/v1/batches": {"jobs": [TASK]},
}


@pytest.mark.parametrize(("method", "path"), every_route_once(), ids=str)
async def test_every_protected_route_answers_429_over_the_rate(
    redis_url: str, method: str, path: str
) -> None:
    """Whether the route spends its rate in its dependency or in its own round
    trip to Redis: once the burst is spent, it answers 429."""
    app = make_app(redis_url, keys=KEYS, rate_limit_per_s=0.01, rate_limit_burst=1)
    async with serve(app, authenticated=False) as client:
        spent = await client.get("/v1/jobs", headers=bearer(FLOODER))
        assert spent.status_code == 200
        body = BODIES.get(path, {} if method == "POST" else None)
        url = "/v1/jobs/no_such_type" if path == "/v1/jobs/{job_type}" else concrete(path)
        refused = await client.request(method, url, json=body, headers=bearer(FLOODER))
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1


async def test_limits_apply_while_redis_is_out_of_memory(own_redis: RedisProcess) -> None:
    """A full Redis still answers reads, and still limits them: the limiter
    rewrites its one small key per api key in place (allow-oom scripts)."""
    app = make_app(own_redis.url, keys=KEYS, rate_limit_per_s=0.01, rate_limit_burst=2)
    async with serve(app, authenticated=False) as client:
        created = await client.post(
            "/v1/jobs/create_task", json={"sleep_s": 0}, headers=bearer(FLOODER)
        )
        job_id = created.json()["id"]
        with redis_sync.Redis.from_url(own_redis.url) as admin:
            admin.config_set("maxmemory", 1)
            try:
                # The rest of the flooder's burst of two (the submit spent one),
                # then 429s, by id and by listing alike.
                statuses = [
                    (await client.get(path, headers=bearer(FLOODER))).status_code
                    for path in [f"/v1/jobs/{job_id}", "/v1/jobs"] * 3
                ]
                assert statuses == [200, 429, 429, 429, 429, 429]
                refused = await client.get(f"/v1/jobs/{job_id}", headers=bearer(FLOODER))
                assert refused.status_code == 429
                assert refused.headers["content-type"] == "application/problem+json"
                assert int(refused.headers["retry-after"]) >= 1
                # Another key reads on, as it would with room.
                read = await client.get(f"/v1/jobs/{job_id}", headers=bearer(BYSTANDER))
                assert read.status_code == 200, read.text
                assert read.json()["id"] == job_id
                # While new jobs are refused whole (and spend nothing).
                refused_submit = await client.post(
                    "/v1/jobs/create_task", json={"sleep_s": 0}, headers=bearer(BYSTANDER)
                )
                assert refused_submit.status_code == 507, refused_submit.text
            finally:
                admin.config_set("maxmemory", 0)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("body", "too_deep"),
    [
        (deep(32), False),
        (deep(33), True),
        ('{"a": ' * 40 + "1" + "}" * 40, True),
        ('{"s": "' + "[" * 100 + '"}', False),  # brackets in strings are text
        (deep(100_000), True),  # beyond what the parser itself can recurse
        ("not json [[[[", False),  # left for validation to reject
        ("7", False),
    ],
    ids=["32", "33", "objects", "in-a-string", "huge", "not-json", "scalar"],
)
def test_json_depth(body: str, too_deep: bool) -> None:
    problem = json_problem(body.encode(), 32)
    assert (problem is not None and "deeper than 32" in problem) is too_deep


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"name": "\xff\xfe"}', "not UTF-8"),
        (b'{"name": "\\udbe9x"}', "lone surrogate"),
        (b'{"\\udc00": 1}', "lone surrogate"),
    ],
    ids=["latin-1", "surrogate-value", "surrogate-key"],
)
async def test_json_that_redis_could_not_store_gets_422(
    client: httpx.AsyncClient, body: bytes, why: str
) -> None:
    assert json_problem('{"ok": "\\ud83d\\ude00 é"}'.encode(), 32) is None  # a pair is fine
    response = await client.post(
        "/v1/jobs/welcome", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert why in response.json()["detail"]


async def test_deep_json_gets_422_not_500(client: httpx.AsyncClient) -> None:
    body = '{"sleep_s": 1, "x": ' + deep(10_000) + "}"
    response = await client.post(
        "/v1/jobs/create_task", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "deeper than 32" in response.json()["detail"]


async def test_a_payload_over_its_limit_gets_413(redis_url: str) -> None:
    async with serve(make_app(redis_url, max_payload_bytes=300)) as client:
        small = await client.post(
            "/v1/jobs/welcome", json={"name": "A", "email": "a@b", "password": "p"}
        )
        assert small.status_code == 201
        big = await client.post(
            "/v1/jobs/welcome", json={"name": "A" * 400, "email": "a@b", "password": "p"}
        )
        assert big.status_code == 413
        assert big.headers["content-type"] == "application/problem+json"
        assert "over the limit of 300" in big.json()["detail"]


async def echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


async def upload_size(file: Annotated[UploadFile, File()]) -> dict[str, int]:
    return {"bytes": len(await file.read())}


@pytest.mark.parametrize(
    ("path", "body", "size", "status"),
    [
        ("/upload", "file", 2048, 200),
        ("/upload", "file", 5000, 413),
        ("/echo", "file", 2048, 413),  # multipart, to a route that takes no file
        ("/echo", "json", 2048, 413),
        ("/echo", "json", 512, 200),
    ],
)
async def test_only_upload_routes_have_the_upload_body_limit(
    path: str, body: str, size: int, status: int
) -> None:
    app = FastAPI()
    app.add_api_route("/upload", upload_size, methods=["POST"])
    app.add_api_route("/echo", echo_size, methods=["POST"])
    limited = Edge(
        app,
        max_body_bytes=1024,
        max_upload_bytes=4096,
        max_json_depth=32,
        upload_routes=upload_routes(app),
    )
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        if body == "file":
            response = await client.post(path, files={"file": ("a.txt", b"x" * size)})
        else:
            response = await client.post(path, json="x" * size)
    assert response.status_code == status, response.text
    if status == 413:
        assert json.loads(response.text)["status"] == 413


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("report.pdf", None),
        ("Résumé 2026.txt", None),
        ("", "no name"),
        (None, "no name"),
        ("../etc/passwd", "path"),
        ("a\\b.txt", "path"),
        ("..", "path"),
        ("bad\x00name", "control"),
        ("new\nline", "control"),
        ("rtl\u202etxt.exe", "control"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_file_names(name: str | None, error: str | None) -> None:
    if error is None:
        assert check_filename(name, 255) == name
    else:
        with pytest.raises(ValueError, match=error):
            check_filename(name, 255)


def test_every_scope_has_a_value_a_key_setting_can_name() -> None:
    assert [s.value for s in Scope] == [
        "jobs:submit",
        "jobs:read",
        "jobs:admin",
        "documents:write",
        "documents:read",
    ]


async def test_a_run_at_centuries_ago_is_due_now_not_a_500(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: the arq key's expiry went negative."""
    response = await client.post(
        "/v1/jobs/create_task", params={"run_at": "0288-09-04T05:08:27+14:49"}, json={"sleep_s": 0}
    )
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "queued"
