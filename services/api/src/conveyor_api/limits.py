"""Input limits: body size, JSON depth, upload file names; each answered as
problem+json (Starlette's own answers are plain text, and Python's JSON parser
dies of RecursionError, a 500, on deeply nested input)."""

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import compile_path
from starlette.types import Scope, Send

from conveyor_api.problems import PROBLEM_JSON
from conveyor_core.catalog import Catalog


class BodyTooLargeError(Exception):
    pass


async def send_problem(
    send: Send,
    scope: Scope,
    status: int,
    title: str,
    detail: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
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
    framing = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": [*framing, *headers]})
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


def offloading_submits(catalog: Catalog) -> list[str]:
    """The submit paths of job types whose large payloads go to the blob store."""
    return [f"/v1/jobs/{t.name}" for t in catalog.public() if t.offload_above_bytes is not None]


def upload_routes(app: FastAPI, submits: Iterable[str] = ()) -> Callable[[Scope], bool]:
    """Does a request go to one of the app's routes that take a file upload (or
    a large payload, to the blob store: the `submits` paths, POST)? Those, and
    only those, get the large body limit (`max_upload_bytes`). A route declares
    a file by its signature: a `File()` (`UploadFile`) parameter."""
    uploads: list[tuple[frozenset[str], re.Pattern[str]]] = [
        (frozenset({"POST"}), re.compile(re.escape(path) + "$")) for path in submits
    ]
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.path:
            continue
        if _takes_a_file(route.dependant):
            uploads.append((frozenset(route.methods or ()), compile_path(route.path)[0]))

    def takes_upload(scope: Scope) -> bool:
        path, root_path = scope["path"], scope.get("root_path", "")
        path = path[len(root_path) :] if path.startswith(root_path) else path
        return any(
            scope["method"] in methods and pattern.match(path) for methods, pattern in uploads
        )

    return takes_upload


def _takes_a_file(dependant: Dependant) -> bool:
    """Is a body parameter of the route, or of a dependency at any depth, a file?"""
    pending = [dependant]
    while pending:
        current = pending.pop()
        if any(isinstance(field.field_info, params.File) for field in current.body_params):
            return True
        pending.extend(current.dependencies)
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
