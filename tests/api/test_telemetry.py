"""Request ids in and out, and /metrics, on the in-process app."""

import httpx
import pytest


async def test_a_valid_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers={"X-Request-ID": "abc-123.x"})
    assert response.headers["x-request-id"] == "abc-123.x"


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", ""])
async def test_an_invalid_or_missing_request_id_is_replaced(
    client: httpx.AsyncClient, bad: str
) -> None:
    response = await client.get("/", headers={"X-Request-ID": bad} if bad else {})
    generated = response.headers["x-request-id"]
    assert generated != bad
    assert len(generated) == 32
    int(generated, 16)


async def test_the_request_id_reaches_the_job(client: httpx.AsyncClient) -> None:
    job = (
        await client.post(
            "/v1/jobs/create_task", json={"sleep_s": 0}, headers={"X-Request-ID": "req-9"}
        )
    ).json()
    assert job["request_id"] == "req-9"
    assert job["trace_id"] is not None
    assert len(job["trace_id"]) == 32


async def test_metrics_use_route_templates_not_raw_paths(client: httpx.AsyncClient) -> None:
    await client.get("/v1/jobs/abc123")
    await client.get("/no/such/page")
    await client.get("/ui/app.js")
    text = (await client.get("/metrics")).text
    assert 'route="/v1/jobs/{job_id}"' in text
    assert 'route="unmatched"' in text
    assert 'route="/ui/{path}"' in text  # the status page's files, under one label
    assert "app.js" not in text
    assert "abc123" not in text
    assert "conveyor_queue_oldest_ready_age_seconds" in text
