"""RFC 9457 problem details: every error the api returns has this shape."""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor_core.redis import REDIS_DOWN_ERRORS

PROBLEM_JSON = "application/problem+json"
VALIDATION_PROBLEM = "urn:conveyor:problem:validation"
REDIS_UNAVAILABLE_PROBLEM = "urn:conveyor:problem:redis-unavailable"


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
    body["detail"] = detail
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
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_name(tuple(err["loc"])), "detail": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['detail']}" for e in errors)
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
    return problem_response(
        exc.status_code,
        HTTPStatus(exc.status_code).phrase,
        str(exc.detail),
        instance=request.url.path,
        headers=exc.headers,
    )


def redis_unavailable(request: Request, retry_after_s: int) -> JSONResponse:
    return problem_response(
        503,
        "Redis unavailable",
        f"The job broker did not answer; try again in {retry_after_s} s.",
        instance=request.url.path,
        problem_type=REDIS_UNAVAILABLE_PROBLEM,
        headers={"Retry-After": str(retry_after_s)},
    )


def install_problem_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Answer validation, HTTP and Redis-outage errors as problem+json."""

    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        return redis_unavailable(request, retry_after_s)

    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    for error in REDIS_DOWN_ERRORS:
        app.add_exception_handler(error, _redis_down)


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
