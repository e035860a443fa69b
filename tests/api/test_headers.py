"""Security headers on every answer; CORS only for configured origins."""

import httpx
import pytest

from tests.api.conftest import make_app, serve

PREFLIGHT = {
    "Origin": "https://status.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


@pytest.mark.parametrize("path", ["/v1/jobs", "/healthz", "/v1/jobs/nope", "/nowhere", "/docs"])
async def test_security_headers_on_answers_good_and_bad(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    # Behind the ingress's TLS, browsers keep to https from then on.
    assert headers["strict-transport-security"] == "max-age=31536000"
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self';" in csp  # same-origin scripts only: no inline, no CDN


async def test_unauthenticated_answers_have_them_too(redis_url: str) -> None:
    async with serve(make_app(redis_url), authenticated=False) as client:
        response = await client.get("/v1/jobs")
        assert response.status_code == 401
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options("/v1/jobs/create_task", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    simple = await client.get("/v1/jobs", headers={"Origin": PREFLIGHT["Origin"]})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_allows_only_the_configured_origins(redis_url: str) -> None:
    app = make_app(redis_url, cors_origins="https://status.example.com, https://b.example.com")
    async with serve(app) as client:
        preflight = await client.options("/v1/jobs/create_task", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == PREFLIGHT["Origin"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert preflight.headers["x-content-type-options"] == "nosniff"

        evil = await client.options(
            "/v1/jobs/create_task", headers={**PREFLIGHT, "Origin": "https://evil.example.com"}
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
