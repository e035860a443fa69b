"""RFC 9457 problem details: every error the api returns has this shape."""

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ResponseError
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor_core.blobs import BLOB_STORE_ERRORS
from conveyor_core.redaction import clean
from conveyor_core.redis import (
    REDIS_FAULT_ERRORS,
    RedisFault,
    describe_redis_error,
    record_redis_fault,
    redis_fault,
)
from conveyor_core.redis_health import RedisEvictsError
from conveyor_core.replicas import ReplicasShortError

logger = logging.getLogger("conveyor.api")

PROBLEM_JSON = "application/problem+json"
VALIDATION_PROBLEM = "urn:conveyor:problem:validation"
REDIS_UNAVAILABLE_PROBLEM = "urn:conveyor:problem:redis-unavailable"
REDIS_FULL_PROBLEM = "urn:conveyor:problem:redis-full"
REDIS_EVICTS_PROBLEM = "urn:conveyor:problem:redis-evicts"
INTERNAL_PROBLEM = "urn:conveyor:problem:internal"
BLOB_STORE_PROBLEM = "urn:conveyor:problem:blob-store-unavailable"
REPLICAS_SHORT_PROBLEM = "urn:conveyor:problem:redis-replicas-short"
# A field's name in a validation problem (a JSON body's keys are the client's).
FIELD_NAME_MAX_CHARS = 200
# A validation problem lists at most this many errors (a body may hold thousands).
MAX_ERRORS = 50

# Per Redis fault: the title and detail of its problem answer. Every transient
# one is a 503 with Retry-After (redis-unavailable, as clients already know it);
# a full Redis is a 507: retrying soon will not help until jobs expire or an
# operator adds memory, but reads still work.
_FAULT_TEXT = {
    RedisFault.UNREACHABLE: ("Redis unavailable", "The job broker did not answer"),
    RedisFault.TIMED_OUT: ("Redis unavailable", "The job broker did not answer in time"),
    RedisFault.LOADING: ("Redis unavailable", "The job broker is loading its data after a restart"),
    RedisFault.READ_ONLY: (
        "Redis unavailable",
        "The job broker is a read-only replica (a failover is under way)",
    ),
    RedisFault.CLUSTER_DOWN: (
        "Redis unavailable",
        "The job broker's cluster is moving slots (a failover or resharding is under way)",
    ),
    RedisFault.BUSY: (
        "Redis unavailable",
        "The job broker is busy running a long script and answers nothing else",
    ),
    RedisFault.OUT_OF_MEMORY: (
        "Job store full",
        "The job broker is out of memory and refuses new writes; reads still work. "
        "Operators: see the ConveyorRedisMemoryNearFull runbook",
    ),
}


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    problem_type: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": problem_type, "title": title, "status": status}
    # A detail may quote what the client sent (a name, an address): bounded, scrubbed.
    body["detail"] = clean(detail)
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _field_name(loc: tuple[int | str, ...]) -> str:
    """`("body", "count")` -> `count`; `("query", "limit")` -> `limit`.

    An error in the body as a whole (missing, or not JSON: pydantic then gives
    the byte offset) is reported on the field `body`.
    """
    if loc[:1] == ("body",) and (len(loc) == 1 or isinstance(loc[1], int)):
        return "body"
    return ".".join(str(part) for part in loc[1:]) or str(loc[0])


async def _validation_problem(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each field, its message and its error type; never the input
    (pydantic's `input`): the answer, and any log of it, stays small and clean."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": clean(_field_name(tuple(err["loc"])), FIELD_NAME_MAX_CHARS),
            "detail": clean(err["msg"]),
            "type": err["type"],
        }
        for err in exc.errors()[:MAX_ERRORS]
    ]
    summary = "; ".join(f"{e['field']}: {e['detail']}" for e in errors)
    if (total := len(exc.errors())) > len(errors):
        summary = f"{total} errors, the first {len(errors)} listed: {summary}"
    return problem_response(
        422,
        "Request validation failed",
        summary,
        instance=request.url.path,
        problem_type=VALIDATION_PROBLEM,
        errors=errors,
    )


async def _http_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # A refusal may name its problem type and add members (tenants.PolicyRefusal).
    return problem_response(
        exc.status_code,
        HTTPStatus(exc.status_code).phrase,
        str(exc.detail),
        instance=request.url.path,
        problem_type=getattr(exc, "problem_type", "about:blank"),
        headers=exc.headers,
        **getattr(exc, "extensions", {}),
    )


class FieldError(Exception):
    """A request whose `field` is wrong in a way validation cannot see (a forged
    cursor: 400): a problem naming the field, as a validation problem does."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status, self.field, self.detail = status, field, detail


async def _field_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldError)
    return problem_response(
        exc.status,
        HTTPStatus(exc.status).phrase,
        f"{exc.field}: {exc.detail}",
        instance=request.url.path,
        errors=[{"field": exc.field, "detail": exc.detail, "type": "value_error"}],
    )


def redis_unavailable(
    request: Request, retry_after_s: int, fault: RedisFault = RedisFault.UNREACHABLE
) -> JSONResponse:
    """The answer to a Redis fault: 503 + Retry-After, or 507 when Redis is full."""
    title, detail = _FAULT_TEXT[fault]
    return problem_response(
        503 if fault.transient else 507,
        title,
        f"{detail}; try again in {retry_after_s} s.",
        instance=request.url.path,
        problem_type=REDIS_UNAVAILABLE_PROBLEM if fault.transient else REDIS_FULL_PROBLEM,
        headers={"Retry-After": str(retry_after_s)},
        redis_fault=fault.value,
    )


def redis_evicts(request: Request, retry_after_s: int, reason: str) -> JSONResponse:
    """The answer to a submit while Redis may evict: 503, nothing acknowledged."""
    return problem_response(
        503,
        "Redis may evict jobs",
        f"{reason} No job is accepted until then; try again in {retry_after_s} s.",
        instance=request.url.path,
        problem_type=REDIS_EVICTS_PROBLEM,
        headers={"Retry-After": str(retry_after_s)},
    )


def replicas_short(request: Request, retry_after_s: int, exc: ReplicasShortError) -> JSONResponse:
    """A submit whose job fewer replicas than REDIS_WAIT_REPLICAS acknowledged
    in time: 503, not acknowledged, though the job was written and may run."""
    return problem_response(
        503,
        "Job not acknowledged by enough replicas",
        f"Job {exc.job_id} was written, but {exc.acknowledged} of {exc.wanted} replica(s) "
        "acknowledged it in time, so a failover now may lose it. It may exist and run: "
        "retry with the same Idempotency-Key (or debounce key) to get it rather than a "
        f"second job; try again in {retry_after_s} s.",
        instance=request.url.path,
        problem_type=REPLICAS_SHORT_PROBLEM,
        headers={"Retry-After": str(retry_after_s)},
        job_id=exc.job_id,
    )


def _internal_error(request: Request) -> JSONResponse:
    """A bug: problem+json, and the connection closed (the app's state for it is unknown)."""
    return problem_response(
        500,
        "Internal Server Error",
        "The api failed to answer this request; it is logged with its request id.",
        instance=request.url.path,
        problem_type=INTERNAL_PROBLEM,
        headers={"Connection": "close"},
    )


def install_problem_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Answer validation, HTTP and Redis errors, and bugs, as problem+json."""

    async def _redis_fault(request: Request, exc: Exception) -> JSONResponse:
        fault = redis_fault(exc)
        if fault is None:  # a reply error that is not a fault: a bug
            logger.error("unhandled redis error: %s", describe_redis_error(exc), exc_info=exc)
            return _internal_error(request)
        record_redis_fault(fault, exc, f"{request.method} {request.url.path}")
        return redis_unavailable(request, retry_after_s, fault)

    async def _evicts(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RedisEvictsError)
        return redis_evicts(request, retry_after_s, exc.reason)

    async def _blob_store_fault(request: Request, exc: Exception) -> JSONResponse:
        # The store's own message names paths and endpoints: logged, not answered.
        logger.warning("blob store fault on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            503,
            "Blob store unavailable",
            f"The blob store did not answer; try again in {retry_after_s} s.",
            instance=request.url.path,
            problem_type=BLOB_STORE_PROBLEM,
            headers={"Retry-After": str(retry_after_s)},
        )

    async def _replicas_short(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ReplicasShortError)
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return replicas_short(request, retry_after_s, exc)

    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's last resort (ServerErrorMiddleware): it re-raises after we
        # answer, so uvicorn logs the traceback. A Redis fault raised outside the
        # routes (a middleware) still gets its own answer here.
        if redis_fault(exc) is not None:
            return await _redis_fault(request, exc)
        return _internal_error(request)

    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(RedisEvictsError, _evicts)
    app.add_exception_handler(ReplicasShortError, _replicas_short)
    app.add_exception_handler(FieldError, _field_error)
    for error in (*REDIS_FAULT_ERRORS, ResponseError):
        app.add_exception_handler(error, _redis_fault)
    for error in BLOB_STORE_ERRORS:
        app.add_exception_handler(error, _blob_store_fault)
    app.add_exception_handler(Exception, _unhandled)


# The shape of every error answer, for OpenAPI (RFC 9457; extensions allowed).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}
VALIDATION_PROBLEM_SCHEMA: dict[str, Any] = {
    **PROBLEM_SCHEMA,
    "title": "ValidationProblem",
    "properties": {
        **PROBLEM_SCHEMA["properties"],
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "detail": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def document_problems(app: FastAPI) -> None:
    """Make OpenAPI tell the truth about errors: every 4xx and 5xx answer is
    `application/problem+json` (FastAPI's default documents 422 as its own
    `HTTPValidationError` in `application/json`)."""
    build_openapi = app.openapi

    def openapi_with_problems() -> dict[str, Any]:
        schema = build_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = PROBLEM_SCHEMA
        components["ValidationProblem"] = VALIDATION_PROBLEM_SCHEMA
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    if str(status)[0] in "45":
                        name = "ValidationProblem" if str(status) == "422" else "Problem"
                        ref = {"$ref": f"#/components/schemas/{name}"}
                        response["content"] = {PROBLEM_JSON: {"schema": ref}}
        return schema

    app.openapi = openapi_with_problems  # type: ignore[method-assign]
