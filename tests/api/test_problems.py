"""A bug in a route: a problem+json 500 that tells the client to close the
connection, so its next request does not die on a reset. A real uvicorn server
and a raw keep-alive client: an in-process transport has no connection to lose."""

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from fastapi import FastAPI

from conveyor_core import keys
from conveyor_core.local.redis_server import free_port
from tests.api.conftest import make_app, serve


async def boom() -> None:
    raise RuntimeError("a bug in a route")


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[int]:
    app: FastAPI = make_app(redis_url)
    app.add_api_route("/test-boom", boom)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await task


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, dict[str, str], bytes]:
    """One keep-alive HTTP/1.1 request on an open connection: status, headers, body."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status_line, *lines = head.strip().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def test_an_unhandled_error_is_a_problem_and_the_connection_stays_usable(
    server: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        assert (await exchange(reader, writer, "/healthz"))[0] == 200  # keep-alive works
        status, headers, body = await exchange(reader, writer, "/test-boom")
        assert status == 500
        assert headers["content-type"] == "application/problem+json"
        assert b'"status":500' in body
        assert b"a bug in a route" not in body  # no internals leak
        if headers.get("connection", "").lower() == "close":
            # Told to close: the server ends the connection cleanly (EOF, not a reset).
            async with asyncio.timeout(2):
                assert await reader.read() == b""
        else:  # or the next request on the same connection is answered
            assert (await exchange(reader, writer, "/healthz"))[0] == 200
    finally:
        writer.close()
    # And a new connection is served as ever.
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        assert (await exchange(reader, writer, "/healthz"))[0] == 200
    finally:
        writer.close()


async def test_a_validation_problem_names_fields_but_never_echoes_the_input(
    client: httpx.AsyncClient,
) -> None:
    payload = {"to_email": "ada@example.com@", "subject": "s" * 10_000, "body": "b"}
    response = await client.post("/v1/jobs/quick_mail", json=payload)
    assert response.status_code == 422
    problem = response.json()
    assert {e["field"] for e in problem["errors"]} == {"to_email", "subject"}
    assert all(set(e) == {"field", "detail", "type"} for e in problem["errors"])
    assert "ada@example.com" not in response.text
    assert "sssssssss" not in response.text
    assert len(response.content) < 2048


async def numbers(body: list[int]) -> int:
    return len(body)


async def test_a_validation_problem_lists_a_bounded_number_of_errors(redis_url: str) -> None:
    app = make_app(redis_url)
    app.add_api_route("/test-numbers", numbers, methods=["POST"])
    async with serve(app) as client:
        response = await client.post("/test-numbers", json=["ada@example.com"] * 5000)
        assert response.status_code == 422
        problem = response.json()
        assert len(problem["errors"]) == 50
        assert problem["detail"].startswith("5000 errors, the first 50 listed: body: ")
        assert len(problem["detail"]) < 1100
        assert "ada@example.com" not in response.text


async def test_a_jobs_error_is_shown_scrubbed_and_bounded(
    client: httpx.AsyncClient, redis: ArqRedis
) -> None:
    # An error as a worker may have stored it: an address, a token, 10 KB of text.
    job = (await client.post("/v1/jobs/create_task", json={"sleep_s": 1})).json()
    error = {
        "type": "SMTPRecipientsRefused",
        "message": "refused ada@example.com with token=abc123 " + "m" * 10_000,
        "traceback": 'File "mail.py", line 3\n' * 500 + "SMTPRecipientsRefused: ada@example.com",
    }
    await redis.hset(keys.job_key(job["id"]), "error", json.dumps(error))  # type: ignore[misc]
    read = await client.get(f"/v1/jobs/{job['id']}")
    listed = await client.get("/v1/jobs")
    for response, shown in [
        (read, read.json()["error"]),
        (listed, listed.json()["items"][0]["error"]),
    ]:
        assert "ada@example.com" not in response.text
        assert "abc123" not in response.text
        assert shown["message"].startswith("refused *** with token=*** mmm")
        assert shown["message"].endswith("more characters cut]")
        assert shown["traceback"].endswith("SMTPRecipientsRefused: ***")
        assert len(shown["traceback"]) < 4200
