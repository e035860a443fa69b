"""The gate: requests to protected routes without a valid key, answered by the
api's middleware before their body is read, rate-limited per client address,
with no span and sampled log lines."""

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Message, Receive, Scope, Send

from conveyor_api.auth import AUTHENTICATED_KEY, KeyRing
from conveyor_api.edge import Edge
from conveyor_api.gate import LOG_INTERVAL_S, Gate, client_address, rate_group
from tests.api.conftest import make_app, serve
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer

KEYRING = KeyRing([api_key(TEST_KEY_NAME, TEST_KEY)])


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class BodyReads:
    """An app that records whether anything read the request's body."""

    def __init__(self) -> None:
        self.reads = 0
        self.keys: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.reads += 1
        self.keys.append(scope.get(AUTHENTICATED_KEY))
        assert message["type"] == "http.request"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def gated(app: Any, gate: Gate, **edge: Any) -> httpx.AsyncClient:
    limits = {"max_body_bytes": 1024, "max_upload_bytes": 4096, "max_json_depth": 32}
    transport = httpx.ASGITransport(app=Edge(app, gate=gate, **{**limits, **edge}))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def gate(clock: Clock, **overrides: Any) -> Gate:
    settings: dict[str, Any] = {"rate_per_s": 1.0, "burst": 3, "max_clients": 100}
    return Gate(lambda: KEYRING, clock=clock, **{**settings, **overrides})


@pytest.fixture
def refusal_lines() -> Iterator[list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "unauthenticated":
                lines.append(getattr(record, "fields", {}))

    handler = Collect()
    logger = logging.getLogger("conveyor.requests")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_no_key_is_answered_before_the_body_is_read() -> None:
    app = BodyReads()
    async with gated(app, gate(Clock())) as client:
        refused = await client.post("/v1/jobs/x", content=b"{}" * 100)
        malformed = await client.post(
            "/v1/documents",
            content=b"--b\r\nnot multipart at all",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        too_large = await client.post("/v1/jobs/x", content=b"x" * 5000)
        admitted = await client.post("/v1/jobs/x", content=b"{}", headers=bearer(TEST_KEY))
    for response in (refused, malformed, too_large):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["connection"] == "close"
        assert response.headers["www-authenticate"] == 'Bearer realm="conveyor"'
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"]
    assert admitted.status_code == 204
    assert app.reads == 1
    assert [key.name for key in app.keys] == [TEST_KEY_NAME]  # found once, by the gate


async def test_only_protected_routes_and_not_preflights_are_gated() -> None:
    app = BodyReads()
    async with gated(app, gate(Clock()), cors_origins=["https://app.example"]) as client:
        open_route = await client.post("/ui/x", content=b"{}")
        preflight = await client.options(
            "/v1/jobs/x",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        refused = await client.post(
            "/task", content=b"{}", headers={"Origin": "https://app.example"}
        )
        not_a_preflight = await client.request("OPTIONS", "/v1/jobs/x", content=b"{}")
    assert open_route.status_code == 204
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert refused.status_code == not_a_preflight.status_code == 401
    # A browser client may read the 401 (and its challenge).
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert app.reads == 1


async def test_a_flood_without_a_key_is_rate_limited_per_address() -> None:
    clock = Clock()
    async with gated(BodyReads(), gate(clock, rate_per_s=1.0, burst=3)) as client:
        flood = [(await client.get("/v1/jobs", headers=bearer("cvk_guess"))) for _ in range(5)]
        assert [r.status_code for r in flood] == [401, 401, 401, 429, 429]
        over = flood[-1]
        assert over.headers["content-type"] == "application/problem+json"
        assert over.headers["retry-after"] == "1"
        assert over.headers["connection"] == "close"
        assert over.json()["status"] == 429
        clock.now_s += 1.0  # one request's worth of rate back
        assert (await client.get("/v1/jobs")).status_code == 401
        assert (await client.get("/v1/jobs")).status_code == 429
        # A valid key is never counted against its address.
        assert (await client.get("/v1/jobs", headers=bearer(TEST_KEY))).status_code != 429


async def test_addresses_have_their_own_rate_and_the_table_is_bounded() -> None:
    clock = Clock()
    limited = gate(clock, rate_per_s=1.0, burst=1, max_clients=2)
    codes: dict[str, list[int]] = {}
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.3"):
        transport = httpx.ASGITransport(
            app=Edge(
                BodyReads(),
                gate=limited,
                max_body_bytes=1024,
                max_upload_bytes=1024,
                max_json_depth=8,
            ),
            client=(address, 40000),
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            codes.setdefault(address, []).append((await client.get("/v1/jobs")).status_code)
    assert codes == {"198.51.100.1": [401, 429], "198.51.100.2": [401], "198.51.100.3": [401]}
    # At most max_clients addresses are remembered, the least recently seen forgotten.
    assert list(limited.clients) == ["198.51.100.1", "198.51.100.3"]


async def test_refusals_are_logged_one_line_per_address_per_interval(
    refusal_lines: list[dict[str, Any]],
) -> None:
    clock = Clock()
    async with gated(BodyReads(), gate(clock, rate_per_s=1.0, burst=3)) as client:
        for _ in range(10):
            await client.get("/v1/jobs", headers=bearer("cvk_guess"))
        assert len(refusal_lines) == 1
        clock.now_s += LOG_INTERVAL_S
        await client.post("/task", content=b"{}")
    first, second = refusal_lines
    assert first == {
        "client": "127.0.0.1",
        "method": "GET",
        "path": "/v1/jobs",
        "status": 401,
        "reason": "invalid_key",
        "refused": 1,
        "interval_s": LOG_INTERVAL_S,
    }
    # The next line counts itself and the nine refusals it was not written for.
    assert (second["refused"], second["reason"], second["path"]) == (10, "no_key", "/task")
    assert "cvk_guess" not in repr(refusal_lines)


async def test_a_refused_request_costs_no_span(redis_url: str, spans: InMemorySpanExporter) -> None:
    async with serve(make_app(redis_url), authenticated=False) as client:
        assert (await client.get("/v1/jobs/x", headers=bearer("cvk_guess"))).status_code == 401
        assert spans.get_finished_spans() == ()
        assert (await client.get("/v1/jobs/x", headers=bearer(TEST_KEY))).status_code == 404
        assert len(spans.get_finished_spans()) >= 1


@pytest.mark.parametrize(
    ("peer", "forwarded", "hops", "address"),
    [
        ("10.0.0.9", [], 0, "10.0.0.9"),
        ("10.0.0.9", ["203.0.113.5"], 0, "10.0.0.9"),  # not trusted: ignored
        ("10.0.0.9", ["203.0.113.5"], 1, "203.0.113.5"),
        ("10.0.0.9", ["1.2.3.4, 203.0.113.5"], 1, "203.0.113.5"),  # the client wrote 1.2.3.4
        ("10.0.0.9", ["1.2.3.4", "203.0.113.5, 10.0.0.7"], 2, "203.0.113.5"),
        ("10.0.0.9", ["203.0.113.5"], 3, "203.0.113.5"),  # fewer entries than proxies
        ("10.0.0.9", [], 1, "10.0.0.9"),
        (None, [], 0, "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], hops: int, address: str) -> None:
    scope: dict[str, Any] = {
        "client": (peer, 1234) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }
    assert client_address(scope, hops) == address


async def test_a_chunked_json_body_is_read_whole() -> None:
    """Many small chunks (as a slow or hostile client sends them) make one body."""
    received: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            received.append(message["body"])
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    chunks: list[Message] = [
        {"type": "http.request", "body": b'{"a": "' + b"x" * 1000, "more_body": True},
        *({"type": "http.request", "body": b"y", "more_body": True} for _ in range(5000)),
        {"type": "http.request", "body": b'"}', "more_body": False},
    ]

    async def receive() -> Message:
        return chunks.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    edge = Edge(app, max_body_bytes=10_000, max_upload_bytes=10_000, max_json_depth=8)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "http_version": "1.1",
        "query_string": b"",
    }
    await edge(scope, receive, send)
    assert sent[0]["status"] == 204
    assert b"".join(received) == b'{"a": "' + b"x" * 1000 + b"y" * 5000 + b'"}'


async def test_a_json_body_in_one_byte_chunks_is_checked_whole() -> None:
    """The depth guard sees the body the chunks make, not any one of them."""
    body = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"
    chunks: list[Message] = [
        {"type": "http.request", "body": body[i : i + 1], "more_body": i < len(body) - 1}
        for i in range(len(body))
    ]

    async def receive() -> Message:
        return chunks.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    edge = Edge(BodyReads(), max_body_bytes=10_000, max_upload_bytes=10_000, max_json_depth=8)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "http_version": "1.1",
        "query_string": b"",
    }
    await edge(scope, receive, send)
    assert sent[0]["status"] == 422
    assert b"deeper than 8" in sent[1]["body"]


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same /64: one budget
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64(address: str, group: str) -> None:
    assert rate_group(address) == group
