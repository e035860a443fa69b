"""Hostile clients at the api's edge, against the api as a process on a real
socket: nothing is free before authentication.

The api runs with the default limit on requests without a valid key (per
client address) and believes one proxy's X-Forwarded-For, so each test
speaks from an address of its own.
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, eventually, running
from tests.support.auth import TEST_KEY, bearer

# A body larger than any limit of the api (uploads: 10 MiB with framing).
BIG_BYTES = 9 * 1024 * 1024
BURST = 20  # the default CONVEYOR_API_UNAUTHENTICATED_BURST


@pytest.fixture
def edge(redis_url: str, log_dir: Path) -> Iterator[Stack]:
    env = {
        "CONVEYOR_API_UNAUTHENTICATED_RATE_PER_S": "5",
        "CONVEYOR_API_UNAUTHENTICATED_BURST": str(BURST),
        "CONVEYOR_API_TRUSTED_PROXY_HOPS": "1",
    }
    with running(Stack(redis_url, log_dir, **env)) as stack:
        yield stack


def forwarded_for(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def request_head(path: str, content_type: str, headers: dict[str, str]) -> bytes:
    """The head of a POST that announces a BIG_BYTES body."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {BIG_BYTES}\r\n{lines}\r\n"
    ).encode()


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" from recv);
    a server waiting for the body instead would make this time out."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


NO_VALID_KEY = [
    ("/v1/documents", "multipart/form-data; boundary=b", {}),
    ("/v1/jobs/create_task", "application/json", {}),
    ("/task", "application/json", {"Authorization": "Bearer cvk_wrong"}),
    ("/v1/documents", "multipart/form-data; boundary=b", {"Authorization": "Basic eDp5"}),
]


def test_a_9_mib_body_without_a_valid_key_is_answered_401_before_it_is_sent(
    edge: Stack,
) -> None:
    """A client that waits to be told to send its body (`Expect: 100-continue`,
    as curl does for large ones) is told 401 instead, and sends none of it."""
    for n, (path, content_type, headers) in enumerate(NO_VALID_KEY):
        headers = {**headers, **forwarded_for(f"198.51.100.{n}"), "Expect": "100-continue"}
        with socket.create_connection(("127.0.0.1", edge.api.port), timeout=10) as sock:
            sock.sendall(request_head(path, content_type, headers))
            answer = read_to_close(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().lower().split("\r\n")
        assert lines[0] == "http/1.1 401 unauthorized", answer[:500]  # not "100 continue"
        assert "connection: close" in lines
        assert "content-type: application/problem+json" in lines
        assert any(line.startswith('www-authenticate: bearer realm="conveyor"') for line in lines)
        assert json.loads(body)["status"] == 401


def test_a_9_mib_body_without_a_valid_key_is_cut_off_unread(edge: Stack) -> None:
    """A client that sends its body at once finds the connection closed long
    before the body is through: the api answered, closed, and read none of it
    (a server reading it, even to discard it, would take all 9 MiB)."""
    for n, (path, content_type, headers) in enumerate(NO_VALID_KEY):
        head = request_head(path, content_type, {**headers, **forwarded_for(f"198.51.100.{n}")})
        with (
            socket.create_connection(("127.0.0.1", edge.api.port), timeout=10) as sock,
            pytest.raises((BrokenPipeError, ConnectionResetError)),
        ):
            sock.sendall(head + b"x" * BIG_BYTES)


def test_the_client_upload_stops_at_the_401(edge: Stack) -> None:
    """An ordinary client streaming 9 MiB without a key gets its 401 and is cut
    off: the api never reads what it has not yet sent."""
    sent = 0
    answered = False

    def upload() -> Iterator[bytes]:
        nonlocal sent
        while sent < BIG_BYTES and not answered:
            yield b"x" * 65536
            sent += 65536

    with httpx.Client(base_url=edge.api.base_url, timeout=10) as client:
        request = client.build_request(
            "POST",
            "/v1/documents",
            content=upload(),
            headers={
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": str(BIG_BYTES),
                **forwarded_for("198.51.100.251"),
            },
        )
        try:
            response = client.send(request)
        except httpx.TransportError:
            # The api closed the connection while the client still wrote: what
            # it did not send, nobody read (and the raw socket test reads the 401).
            response = None
        answered = True
    if response is not None:
        assert response.status_code == 401
        assert response.headers["connection"] == "close"
    assert sent < BIG_BYTES


def test_a_malformed_multipart_body_without_a_key_gets_401_not_400(edge: Stack) -> None:
    response = httpx.post(
        f"{edge.api.base_url}/v1/documents",
        content=b"--b\r\n6.8e+44--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b", **forwarded_for("192.0.2.1")},
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    with_key = edge.http.post(
        "/v1/documents",
        content=b"--b\r\n6.8e+44--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert with_key.status_code == 400  # the route's own answer, once the key is good


def test_a_flood_of_bad_keys_from_one_address_is_rate_limited(edge: Stack) -> None:
    flooder = forwarded_for("203.0.113.66")
    with httpx.Client(base_url=edge.api.base_url, timeout=10) as client:
        statuses = [
            client.get("/v1/jobs", headers={**flooder, **bearer(f"cvk_guess_{i}")}).status_code
            for i in range(BURST * 3)
        ]
        over = client.get("/v1/jobs", headers={**flooder, **bearer("cvk_guess")})
        other = client.get("/v1/jobs", headers={**forwarded_for("203.0.113.67")})
        valid = client.get("/v1/jobs", headers={**flooder, **bearer(TEST_KEY)})
    assert statuses[:BURST] == [401] * BURST
    assert statuses.count(429) >= BURST  # the rest, but what the rate refilled meanwhile
    assert over.status_code == 429
    assert over.headers["content-type"] == "application/problem+json"
    assert int(over.headers["retry-after"]) >= 1
    assert other.status_code == 401  # another address has its own budget
    assert valid.status_code == 200  # a valid key is not held to it

    def refusals() -> list[dict[str, Any]]:
        return [
            line
            for line in edge.log_lines(edge.api)
            if line["message"] == "unauthenticated" and line.get("client") == "203.0.113.66"
        ]

    eventually(lambda: bool(refusals()), edge.logs)
    time.sleep(0.2)  # a second line, if one were written, would be out by now too
    assert len(refusals()) == 1, refusals()  # one sampled line, not one per request
    assert not any("cvk_guess" in json.dumps(line) for line in edge.log_lines(edge.api))


def test_a_large_body_on_a_route_that_takes_no_upload_gets_413(edge: Stack) -> None:
    body = json.dumps({"sleep_s": 0, "pad": "x" * (2 * 1024 * 1024)})
    response = edge.http.post(
        "/v1/jobs/create_task", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    # Multipart makes no difference: only the upload route takes the large limit.
    files = {"file": ("a.txt", b"x" * (2 * 1024 * 1024))}
    assert edge.http.post("/v1/jobs/create_task", files=files).status_code == 413
    upload = edge.http.post("/v1/documents", files={"file": ("a.txt", b"hello " * 1000)})
    assert upload.status_code == 202, upload.text
