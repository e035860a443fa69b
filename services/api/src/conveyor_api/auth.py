"""Api keys and scopes: who is calling, and may they call this route.

Clients send `Authorization: Bearer <key>`. Settings hold only each key's
SHA-256 (hex), its name and its scopes (`CONVEYOR_API_KEYS`, a JSON list).
Every `/v1` route declares the one scope it needs, next to its path:

    @router.get("/{job_id}", dependencies=[Depends(require(Scope.JOBS_READ))])

`create_app` refuses to build an app with a `/v1` route that declares none.
"""

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from pydantic import BaseModel, Field, field_validator

from conveyor_core.logging import bind
from conveyor_core.ratelimit import RateLimiter

# Routes under these prefixes need a key; anything else (probes, metrics, docs) is open.
PROTECTED_PREFIXES = ("/v1/", "/task")
# The span attribute and log field that name the caller (the key's name, never the key).
KEY_NAME_ATTRIBUTE = "conveyor.api_key.name"
KEY_NAME_FIELD = "api_key"
# What a 401 tells the client to send (RFC 6750).
CHALLENGE = 'Bearer realm="conveyor"'


class Scope(StrEnum):
    """What a key may do."""

    JOBS_SUBMIT = "jobs:submit"  # submit jobs (and the tutorial's POST /task)
    JOBS_READ = "jobs:read"  # read, list and watch jobs
    JOBS_ADMIN = "jobs:admin"  # cancel, requeue, queue statistics
    DOCUMENTS_WRITE = "documents:write"  # upload documents
    DOCUMENTS_READ = "documents:read"  # read documents: their text and summary


class ApiKey(BaseModel):
    """One entry of `CONVEYOR_API_KEYS`."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    sha256: str = Field(description="Hex SHA-256 of the key: the key itself is never stored.")
    scopes: frozenset[Scope]

    @field_validator("sha256")
    @classmethod
    def _is_a_sha256(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 must be 64 hex digits (sha256sum of the key)")
        return value


def key_digest(key: str) -> str:
    """What `CONVEYOR_API_KEYS` holds for a key: `printf %s KEY | sha256sum`."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, looked up by digest in constant time."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"api key names must be unique: {sorted(names)}")
        digests = [k.sha256 for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("two api keys have the same sha256")

    def find(self, presented: str) -> ApiKey | None:
        """The key whose digest matches; every entry is compared, so the time taken
        says nothing about which one matched, or how much of a digest did."""
        digest = key_digest(presented).encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found


_bearer = HTTPBearer(auto_error=False, description="An api key: `Authorization: Bearer <key>`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = CHALLENGE + (f', error="{error}"' if error else "")
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


async def authenticate(request: Request, credentials: Credentials) -> ApiKey:
    """The caller's key, or 401. Names the caller in the request's logs and span."""
    if credentials is None:
        raise _unauthorized("Send an api key: `Authorization: Bearer <key>`.")
    keyring: KeyRing = request.app.state.keyring
    key = keyring.find(credentials.credentials)
    if key is None:
        raise _unauthorized("The api key is not valid.", "invalid_token")
    request.state.api_key = key.name
    bind(**{KEY_NAME_FIELD: key.name})
    trace.get_current_span().set_attribute(KEY_NAME_ATTRIBUTE, key.name)
    return key


async def _within_rate(request: Request, key: ApiKey) -> None:
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    decision = await limiter.hit(key.name)
    if not decision.allowed:
        raise HTTPException(
            429,
            f"Api key {key.name!r} is over its request rate; "
            f"retry in {decision.retry_after_s:.2f} s.",
            headers={"Retry-After": decision.retry_after_header},
        )


Requirement = Callable[[Request, ApiKey], Awaitable[ApiKey]]


def require(scope: Scope) -> Requirement:
    """A dependency: a valid key (else 401) with `scope` (else 403), within its rate (else 429)."""

    async def requirement(
        request: Request, key: Annotated[ApiKey, Depends(authenticate)]
    ) -> ApiKey:
        if scope not in key.scopes:
            raise HTTPException(403, f"Api key {key.name!r} lacks the scope {scope.value!r}.")
        await _within_rate(request, key)
        return key

    requirement.scope = scope  # type: ignore[attr-defined]  # read by declared_scope()
    requirement.__name__ = f"require_{scope.name.lower()}"
    return requirement


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES)


@dataclass(frozen=True, slots=True)
class ProtectedRoute:
    methods: frozenset[str]
    path: str
    scope: Scope | None


def protected_routes(app: FastAPI) -> list[ProtectedRoute]:
    """Every protected route of the app, as served (router prefixes and router
    dependencies included), with the scope it declares, if any."""
    found = []
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and is_protected(route.path or ""):
            scope = declared_scope(route.dependant)
            found.append(ProtectedRoute(frozenset(route.methods or ()), route.path or "", scope))
    return found


def declared_scope(dependant: Dependant) -> Scope | None:
    """The scope a route requires, found among its dependencies (at any depth)."""
    pending = [dependant]
    while pending:
        current = pending.pop()
        scope = getattr(current.call, "scope", None)
        if isinstance(scope, Scope):
            return scope
        pending.extend(current.dependencies)
    return None


PROBLEM_RESPONSE: dict[str, Any] = {
    "content": {"application/problem+json": {"schema": {"type": "object"}}}
}
AUTH_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {"description": "No api key, or not a valid one", **PROBLEM_RESPONSE},
    "403": {"description": "The api key lacks this route's scope", **PROBLEM_RESPONSE},
    "429": {
        "description": "The api key is over its rate; retry after Retry-After",
        **PROBLEM_RESPONSE,
    },
}


def secure_routes(app: FastAPI) -> None:
    """Check that every protected route declares its scope, and document the
    answers the scope check adds. A route that forgot its scope stops the app
    from being built: access fails closed."""
    for route in protected_routes(app):
        if route.scope is None:
            raise RuntimeError(
                f"route {sorted(route.methods)} {route.path} declares no scope: add "
                "dependencies=[Depends(require(Scope....))] to it"
            )
    build_openapi = app.openapi

    def openapi_with_auth_answers() -> dict[str, Any]:
        schema = build_openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if isinstance(operation, dict) and operation.get("security"):
                    operation["responses"] = {**AUTH_RESPONSES, **operation["responses"]}
        return schema

    app.openapi = openapi_with_auth_answers  # type: ignore[method-assign]
