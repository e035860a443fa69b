"""Api keys and scopes: who is calling, and may they call this route.

Clients send `Authorization: Bearer <key>`. Settings hold only each key's
SHA-256 (hex), its name and its scopes (`CONVEYOR_API_KEYS`, a JSON list).
Every `/v1` route declares the one scope it needs, next to its path:

    @router.get("/{job_id}", dependencies=[Depends(require(Scope.JOBS_READ))])

`require` also spends one request of the key's rate limit (a round trip to
Redis); `authorize` leaves that to the route, which can then send it with its
own reads in one round trip (see `Caller`). `create_app` refuses to build an
app with a `/v1` route that declares no scope.
"""

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from opentelemetry import trace
from pydantic import BaseModel, Field, field_validator

from conveyor_core.jobs import HIGHEST_PRIORITY, LOWEST_PRIORITY
from conveyor_core.logging import bind
from conveyor_core.ratelimit import RateDecision, RateLimit, RateLimiter

if TYPE_CHECKING:  # deps imports settings, which imports this module
    from conveyor_api.deps import Services

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


class Reads(StrEnum):
    """Which jobs (and documents) a key reads."""

    ALL = "all"  # every one
    OWN = "own"  # only those it submitted (uploaded); another key's are 404


class ApiKey(BaseModel):
    """One entry of `CONVEYOR_API_KEYS`: who, what it may do, and its tenant
    policy (see tenants.py; every policy field is optional: unset, no limit)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    sha256: str = Field(description="Hex SHA-256 of the key: the key itself is never stored.")
    scopes: frozenset[Scope]
    job_types: frozenset[str] | None = Field(
        default=None, description="The job types it may submit; unset: every public one."
    )
    queues: frozenset[str] | None = Field(
        default=None, description="The queues it may submit to; unset: every queue."
    )
    highest_priority: int | None = Field(
        default=None,
        ge=HIGHEST_PRIORITY,
        le=LOWEST_PRIORITY,
        description="The highest priority (lowest number) its jobs may have; unset: any.",
    )
    max_outstanding_jobs: int | None = Field(
        default=None,
        ge=1,
        description="Jobs it submitted that may be waiting, running or retrying at once.",
    )
    max_stored_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Bytes it may keep in the blob store at once: its documents and its "
        "jobs' offloaded payloads, counted until their records expire.",
    )
    reads: Reads = Field(default=Reads.ALL, description="Every job and document, or only its own.")

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


# Where the api's middleware (gate.Gate) leaves the key it found, so the route
# does not look it up again.
AUTHENTICATED_KEY = "conveyor.api_key"
NO_KEY_DETAIL = "Send an api key: `Authorization: Bearer <key>`."
BAD_KEY_DETAIL = "The api key is not valid."


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """Why a request has no valid key: its 401's detail and challenge."""

    detail: str
    challenge: str  # the WWW-Authenticate header (RFC 6750)
    invalid_key: bool  # a key was sent, and matched none


def identify(keyring: KeyRing, authorization: str) -> ApiKey | Unauthenticated:
    """The key an `Authorization` header value sends, or why there is none."""
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not credentials or scheme.lower() != "bearer":
        return Unauthenticated(NO_KEY_DETAIL, CHALLENGE, invalid_key=False)
    key = keyring.find(credentials)
    if key is None:
        challenge = f'{CHALLENGE}, error="invalid_token"'
        return Unauthenticated(BAD_KEY_DETAIL, challenge, invalid_key=True)
    return key


def authenticate(request: Request) -> ApiKey:
    """The caller's key, or 401. Names the caller in the request's logs and span.

    The api's middleware has found the key already (and answered 401 itself
    if there was none); without it, the `Authorization: Bearer <key>` header
    is read here. Not through FastAPI's HTTPBearer dependency: one dependency
    less to solve on every request. The OpenAPI schema declares the scheme
    all the same (see `secure_routes`).
    """
    key: ApiKey | Unauthenticated | None = request.scope.get(AUTHENTICATED_KEY)
    if key is None:
        keyring: KeyRing = request.app.state.keyring
        key = identify(keyring, request.headers.get("authorization", ""))
    if isinstance(key, Unauthenticated):
        raise HTTPException(401, key.detail, headers={"WWW-Authenticate": key.challenge})
    request.state.api_key = key.name
    name_the_caller(key)
    return key


def bearer_key(keyring: KeyRing, authorization: bytes | None) -> ApiKey | None:
    """The key an `Authorization: Bearer <key>` header value sends, if valid: for
    a fast route, which leaves any other answer (401) to its FastAPI route."""
    key = identify(keyring, (authorization or b"").decode("latin-1"))
    return None if isinstance(key, Unauthenticated) else key


def name_the_caller(key: ApiKey) -> None:
    """The key's name (never the key) in the request's log line and server span."""
    bind(**{KEY_NAME_FIELD: key.name})
    trace.get_current_span().set_attribute(KEY_NAME_ATTRIBUTE, key.name)


def over_rate(key: ApiKey, decision: RateDecision) -> HTTPException:
    return HTTPException(
        429,
        f"Api key {key.name!r} is over its request rate; retry in {decision.retry_after_s:.2f} s.",
        headers={"Retry-After": decision.retry_after_header},
    )


@dataclass(frozen=True, slots=True)
class Caller:
    """A valid key with the route's scope, whose request has yet to spend its
    rate: the route spends it, in its own round trip to Redis where it can."""

    key: ApiKey
    services: "Services"  # what the route works with

    def rate_limit(self) -> RateLimit | None:
        """The key's rate, for a script that spends it in its own step (submit, read)."""
        limiter = self.services.rate_limiter
        return limiter.limit_for(self.key.name) if limiter is not None else None

    def over_rate(self, retry_after_s: float) -> HTTPException:
        return over_rate(self.key, RateDecision(False, retry_after_s, 0))

    async def spend(self, cost: int = 1) -> None:
        """Spend `cost` requests of the key's rate (one round trip), or 429."""
        if (limiter := self.services.rate_limiter) is not None:
            decision = await limiter.hit(self.key.name, cost)
            if not decision.allowed:
                raise over_rate(self.key, decision)


def _permitted(request: Request, scope: Scope) -> ApiKey:
    key = authenticate(request)
    if scope not in key.scopes:
        raise HTTPException(403, f"Api key {key.name!r} lacks the scope {scope.value!r}.")
    return key


Requirement = Callable[[Request], Awaitable[ApiKey]]


def require(scope: Scope) -> Requirement:
    """A dependency: a valid key (else 401) with `scope` (else 403), within its rate
    (else 429). One dependency, one round trip to Redis (the rate limit)."""

    async def requirement(request: Request) -> ApiKey:
        key = _permitted(request, scope)
        limiter: RateLimiter | None = request.app.state.rate_limiter
        if limiter is not None:
            decision = await limiter.hit(key.name)
            if not decision.allowed:
                raise over_rate(key, decision)
        return key

    requirement.scope = scope  # type: ignore[attr-defined]  # read by declared_scope()
    requirement.__name__ = f"require_{scope.name.lower()}"
    return requirement


Authorization = Callable[[Request], Awaitable[Caller]]


def authorize(scope: Scope) -> Authorization:
    """A dependency: a valid key (else 401) with `scope` (else 403), as a `Caller`
    whose rate the route spends itself (`spend`, or a store script given
    `rate_limit()`), so that a route that reads Redis spends the rate and reads
    in one round trip.

    A route that takes it must spend it on every path that reaches Redis; the
    rate-limit tests send every protected route over its rate."""

    async def authorization(request: Request) -> Caller:
        key = _permitted(request, scope)
        return Caller(key, request.app.state.services)

    authorization.scope = scope  # type: ignore[attr-defined]  # read by declared_scope()
    authorization.__name__ = f"authorize_{scope.name.lower()}"
    return authorization


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


# How OpenAPI names and describes the api keys (as FastAPI's HTTPBearer would).
SECURITY_SCHEME = "HTTPBearer"
BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An api key: `Authorization: Bearer <key>`.",
}
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
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SECURITY_SCHEME] = BEARER_SCHEME
        paths = schema.get("paths", {})
        for route in protected_routes(app):
            for method in route.methods:
                operation = paths.get(route.path, {}).get(method.lower())
                if isinstance(operation, dict):
                    operation["security"] = [{SECURITY_SCHEME: []}]
                    operation["responses"] = {**AUTH_RESPONSES, **operation["responses"]}
        return schema

    app.openapi = openapi_with_auth_answers  # type: ignore[method-assign]
