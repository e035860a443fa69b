"""Input limits: body size, JSON depth, upload file names; each answered as
problem+json (Starlette's own answers are plain text, and Python's JSON parser
dies of RecursionError, a 500, on deeply nested input)."""

import json
import unicodedata
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor_api.problems import PROBLEM_JSON


class BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a body above `max_body_bytes` (multipart uploads: `max_upload_bytes`),
    by its Content-Length or as it streams in: for any ASGI app. The api itself
    has the same limit in its one middleware (edge.Edge), with the JSON guard."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max(max_upload_bytes, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if (
            not declared
            and b"transfer-encoding" not in headers
            and scope.get("http_version") in ("1.0", "1.1")
        ):
            # HTTP/1 frames a body by one of the two: without them there is none.
            await self.app(scope, receive, send)
            return
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send, limit)
            return

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

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        detail = f"The request body is over the limit of {limit} bytes."
        await send_problem(send, scope, 413, "Content Too Large", detail)


async def send_problem(send: Send, scope: Scope, status: int, title: str, detail: str) -> None:
    """A problem+json answer from ASGI middleware, below FastAPI's exception handlers."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
        }
    ).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_problem(body: bytes, max_depth: int) -> str | None:
    """Why this JSON body must be refused before anything parses it, or None.

    The C parser reads it (linear time); the depth is then measured with an
    explicit stack, not recursion. Text too deep for the parser itself is too
    deep. Bytes that are not UTF-8, and strings with lone surrogates (which no
    UTF-8 encoder, Redis' included, accepts), are refused here too. Text that
    is simply not JSON is left for request validation to reject.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return "The body is not UTF-8 text."
    # A body with no more brackets than the depth allowed cannot nest deeper,
    # and UTF-8 text can hold a lone surrogate only as a \u escape: most
    # bodies need no parse here at all (the request's own parse follows).
    shallow = body.count(b"[") + body.count(b"{") <= max_depth
    if shallow and b"\\u" not in body:
        return None
    try:
        value = json.loads(text)
    except RecursionError:
        return f"The JSON body is nested deeper than {max_depth} levels."
    except ValueError:
        return None
    if not shallow and json_depth_exceeds(value, max_depth):
        return f"The JSON body is nested deeper than {max_depth} levels."
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return "The JSON body has a string with a lone surrogate (\\ud800-\\udfff)."
    return None


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Does this parsed JSON value nest arrays/objects deeper than `max_depth`?"""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def check_filename(name: str | None, max_chars: int) -> str:
    """An uploaded file's name, fit to show and store, or ValueError saying why not.

    No paths (`/`, `\\`, `..`), no control characters, not empty, at most
    `max_chars`; Unicode normalized (NFC) so one name has one spelling.
    """
    if not name:
        raise ValueError("the file has no name")
    name = unicodedata.normalize("NFC", name)
    if len(name) > max_chars:
        raise ValueError(f"the file name is longer than {max_chars} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise ValueError("the file name contains control characters")
    if "/" in name or "\\" in name or name.strip(". ") == "":
        raise ValueError("the file name must not be a path")
    return name
