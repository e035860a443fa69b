"""The api's one middleware: what every request gets, whatever its route, in
one layer with one wrapper of `send`.

In order: `/metrics` kept to its own port (when it has one); requests to
protected routes without a valid key answered 401 (or 429) before their body
is read, with no span (gate.py); the request id, in and out; the server span
(continuing the client's W3C trace context), one log line and the HTTP
metrics (telemetry.py); the security headers (headers.py); CORS where
configured; the body limit (413: the large one only for routes that take a
file upload) and, for a JSON body, the guard against bodies no parser should
meet (422, limits.py). Then the app, unless a fast route answers first (see
`FastRoute`).

Five middleware did this before, each a layer of calls and most a wrapper
of `send` on every request: with FastAPI's layers between them and the
route, about a quarter of a submit's CPU under load (py-spy).
"""

from collections.abc import Awaitable, Callable

from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor_api.gate import Gate, Refusal
from conveyor_api.headers import (
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    DEFAULT_NAMES,
    security_headers,
)
from conveyor_api.limits import BodyTooLargeError, json_problem, send_problem
from conveyor_api.telemetry import (
    QUIET_PATHS,
    REQUEST_ID_HEADER,
    VALID_REQUEST_ID,
    RequestRecord,
    new_request_id,
)
from conveyor_core.logging import log_context

# A fast route: answers the request itself (True), or leaves it to the app (False)
# before it has sent or spent anything. Given the request's headers (lower-case
# names; of a repeated one, the first, as Starlette's `Headers.get`) and its
# whole body.
FastRoute = Callable[[Scope, dict[bytes, bytes], bytes, Receive, Send], Awaitable[bool]]
# Finds the fast route for a method and path, if there is one.
FastRoutes = Callable[[str, str], FastRoute | None]
# Does this request go to a route that takes a file upload (the large body limit)?
UploadRoutes = Callable[[Scope], bool]
# Where the request's headers, read once, wait for the inner layers.
HEADERS_KEY = "conveyor.headers"
# Where a refusal of the gate waits for its answer (sent through CORS).
REFUSAL_KEY = "conveyor.refusal"


def _no_fast_routes(method: str, path: str) -> None:
    return None


def _no_upload_routes(scope: Scope) -> bool:
    return False


class Edge:
    """Everything the api does around every request (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        max_json_depth: int,
        cors_origins: list[str] | None = None,
        metrics_port: int | None = None,
        fast_routes: FastRoutes = _no_fast_routes,
        upload_routes: UploadRoutes = _no_upload_routes,
        gate: Gate | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max(max_upload_bytes, max_body_bytes)
        self.max_json_depth = max_json_depth
        self.metrics_port = metrics_port
        self.fast_routes = fast_routes
        self.upload_routes = upload_routes
        self.gate = gate  # None: the routes alone authenticate (after the body)
        # Outside the limits, so preflights and every answer get CORS headers;
        # inside the security headers, so preflights get those too. Around the
        # gate's refusals too, so a browser client can read its 401.
        self.inner: ASGIApp = self._limited
        self.refuse: ASGIApp = self._refuse
        if cors_origins:
            self.inner, self.refuse = (
                CORSMiddleware(
                    inner,
                    allow_origins=cors_origins,
                    allow_methods=["GET", "POST", "DELETE"],
                    allow_headers=CORS_ALLOW_HEADERS,
                    expose_headers=CORS_EXPOSE_HEADERS,
                    max_age=600,
                )
                for inner in (self._limited, self._refuse)
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(reversed(scope["headers"]))  # the first of repeated ones wins
        scope[HEADERS_KEY] = headers
        path = scope["path"]
        if self.gate is not None and (refusal := self.gate.check(scope, headers)):
            await self._refused(scope, headers, refusal, receive, send)
            return
        record = RequestRecord(scope, headers, quiet=path in QUIET_PATHS)
        added = (*security_headers(path), record.request_id_header)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                if present.isdisjoint(DEFAULT_NAMES):  # most answers: add them all
                    headers += added
                else:  # the answer set some of its own
                    headers += [(n, v) for n, v in added if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        try:
            with log_context(request_id=record.request_id):
                try:
                    if self.metrics_port and not self._on_its_port(scope):
                        await Response(status_code=404)(scope, receive, send_with_headers)
                    else:
                        await self.inner(scope, receive, send_with_headers)
                except Exception as exc:
                    record.failed(exc)
                    raise
                finally:
                    record.done()
        finally:
            record.detach()

    async def _refused(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        refusal: Refusal,
        receive: Receive,
        send: Send,
    ) -> None:
        """The gate's answer, with the security headers and a request id (but no
        span and no request log line: the gate counts and logs refusals)."""
        incoming = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = incoming if VALID_REQUEST_ID.match(incoming) else new_request_id()
        added = (*security_headers(scope["path"]), (REQUEST_ID_HEADER, request_id.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        scope[REFUSAL_KEY] = refusal
        await self.refuse(scope, receive, send_with_headers)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal: Refusal = scope[REFUSAL_KEY]
        await send_problem(
            send, scope, refusal.status, refusal.title, refusal.detail, refusal.headers
        )

    def _on_its_port(self, scope: Scope) -> bool:
        """With a metrics port, `/metrics` is served there and only there, so the
        api's public port (behind the ingress) does not expose it."""
        server = scope.get("server") or ("", None)
        metrics_path: bool = scope["path"] == "/metrics"
        return (server[1] == self.metrics_port) == metrics_path

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """413 for a body over its limit, by its Content-Length or as it streams
        in (`max_upload_bytes` for a route that takes a file upload, whatever
        the body's type; `max_body_bytes` for every other); a JSON body is read whole
        (it is bounded) and refused with 422 if `json_problem` finds it unfit.
        A fast route then answers, or the app."""
        headers: dict[bytes, bytes] = scope[HEADERS_KEY]
        declared = headers.get(b"content-length", b"")
        if declared == b"0" or (
            not declared
            and b"transfer-encoding" not in headers
            and scope.get("http_version") in ("1.0", "1.1")
        ):
            # HTTP/1 frames a body by one of the two: without them there is none.
            await self._route(scope, headers, b"", receive, send)
            return
        content_type = headers.get(b"content-type", b"").lower()
        limit = self.max_upload_bytes if self.upload_routes(scope) else self.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send, limit)
            return
        if b"json" in content_type:
            await self._json(scope, headers, receive, send, limit)
        else:
            await self._streamed(scope, receive, send, limit)

    async def _json(
        self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send, limit: int
    ) -> None:
        chunks: list[bytes] = []  # joined once: `body += chunk` is quadratic
        received = 0
        went_away: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                went_away = message  # the client disconnected: the app hears it
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            received += len(chunk)
            if received > limit:
                await self._too_large(scope, send, limit)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if problem := json_problem(body, self.max_json_depth):
            await send_problem(send, scope, 422, "Unacceptable JSON body", problem)
            return
        # The app reads the body as one message (or the disconnect), then the client.
        pending = [went_away or {"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self._route(scope, headers, body, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if response_started:
                raise
            await self._too_large(scope, send, limit)

    async def _route(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes, receive: Receive, send: Send
    ) -> None:
        fast = None if scope.get("root_path") else self.fast_routes(scope["method"], scope["path"])
        if fast is None or not await fast(scope, headers, body, receive, send):
            await self.app(scope, receive, send)

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        detail = f"The request body is over the limit of {limit} bytes."
        await send_problem(send, scope, 413, "Content Too Large", detail)
