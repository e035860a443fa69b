"""Api keys and scopes, route by route: every protected route of the app, as
the app is built (so a route added later is covered without a new test)."""

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from conveyor_api.auth import (
    KEY_NAME_ATTRIBUTE,
    ApiKey,
    KeyRing,
    Scope,
    key_digest,
    protected_routes,
    secure_routes,
)
from conveyor_api.settings import Settings
from conveyor_core.local.run import ALL_SCOPES
from conveyor_core.logging import JsonFormatter
from tests.api.conftest import make_app, serve
from tests.support.auth import TEST_KEY, TEST_KEY_NAME, api_key, bearer
from tests.support.processes import api_process

# One key per scope, and one per scope with every scope but that one.
ONLY = {scope: f"cvk_only_{scope.name.lower()}" for scope in Scope}
ALL_BUT = {scope: f"cvk_all_but_{scope.name.lower()}" for scope in Scope}
KEYS = [
    *(api_key(f"only-{s.name.lower()}", k, [s]) for s, k in ONLY.items()),
    *(api_key(f"all-but-{s.name.lower()}", k, set(Scope) - {s}) for s, k in ALL_BUT.items()),
    api_key(TEST_KEY_NAME, TEST_KEY),
]
# Values for path parameters: a known job type, a job that does not exist.
PATH_VALUES = {"job_type": "create_task", "job_id": "no-such-job"}


def every_protected_route() -> list[tuple[str, str, Scope | None]]:
    """(method, path, declared scope) of every protected route of the app as built."""
    app = make_app("redis://unused:6379/0")
    return [
        (method, route.path, route.scope)
        for route in protected_routes(app)
        for method in sorted(route.methods)
    ]


PROTECTED = every_protected_route()


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


@pytest.fixture
async def keyed(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no key by default; the app knows KEYS."""
    async with serve(make_app(redis_url, keys=KEYS), authenticated=False) as client:
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


def test_the_app_has_protected_routes_of_every_kind() -> None:
    """The enumeration below sees the real routes (and so cannot pass on an empty list)."""
    paths = {path for _, path, _ in PROTECTED}
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/queues", "/task"} <= paths
    assert len(PROTECTED) >= 9


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED, ids=lambda v: str(v))
async def test_every_protected_route_wants_the_right_key(
    keyed: httpx.AsyncClient, method: str, path: str, scope: Scope | None
) -> None:
    assert scope is not None, f"{method} {path} declares no scope"
    url = concrete(path)
    body: dict[str, Any] | None = {} if method == "POST" else None

    no_key = await keyed.request(method, url, json=body)
    assert_problem(no_key, 401)
    assert no_key.headers["www-authenticate"].startswith("Bearer")

    bad_key = await keyed.request(method, url, json=body, headers=bearer("cvk_not_a_key"))
    assert_problem(bad_key, 401)
    assert 'error="invalid_token"' in bad_key.headers["www-authenticate"]
    assert "cvk_not_a_key" not in bad_key.text

    not_bearer = await keyed.request(method, url, json=body, headers={"Authorization": TEST_KEY})
    assert_problem(not_bearer, 401)

    wrong_scope = await keyed.request(method, url, json=body, headers=bearer(ALL_BUT[scope]))
    assert scope.value in assert_problem(wrong_scope, 403)["detail"]

    right_scope = await keyed.request(method, url, json=body, headers=bearer(ONLY[scope]))
    assert right_scope.status_code not in (401, 403, 429), right_scope.text
    assert right_scope.status_code < 500, right_scope.text


def test_a_protected_route_without_a_scope_stops_the_app() -> None:
    app = FastAPI()

    @app.get("/v1/forgotten")
    async def forgotten() -> None: ...

    with pytest.raises(RuntimeError, match=r"\['GET'\] /v1/forgotten declares no scope"):
        secure_routes(app)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
async def test_probes_metrics_and_docs_need_no_key(keyed: httpx.AsyncClient, path: str) -> None:
    assert (await keyed.get(path)).status_code == 200


async def test_openapi_declares_the_bearer_scheme_and_the_auth_answers(
    keyed: httpx.AsyncClient,
) -> None:
    schema = (await keyed.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    read = schema["paths"]["/v1/jobs/{job_id}"]["get"]
    assert read["security"] == [{"HTTPBearer": []}]
    assert {"401", "403", "429"} <= set(read["responses"])
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_keys_are_found_by_digest_whatever_their_order() -> None:
    ring = KeyRing(KEYS)
    for key in KEYS:
        assert key.name
    assert ring.find(ONLY[Scope.JOBS_READ]) == KEYS[1]
    assert ring.find(TEST_KEY) == KEYS[-1]
    assert ring.find("") is None
    assert ring.find(TEST_KEY + "x") is None


def test_key_settings_refuse_what_is_not_a_sha256_and_repeated_names() -> None:
    with pytest.raises(ValidationError, match="64 hex digits"):
        ApiKey(name="a", sha256="abc", scopes=frozenset({Scope.JOBS_READ}))
    with pytest.raises(ValidationError):
        ApiKey.model_validate({"name": "a", "sha256": key_digest("k"), "scopes": ["jobs:fly"]})
    upper = ApiKey(name="a", sha256=key_digest("k").upper(), scopes=frozenset())
    assert upper.sha256 == key_digest("k")
    with pytest.raises(ValueError, match="unique"):
        KeyRing([api_key("same", "one"), api_key("same", "two")])


def test_the_api_refuses_to_start_without_keys_unless_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONVEYOR_API_KEYS", raising=False)
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT", raising=False)
    with pytest.raises(ValidationError, match="CONVEYOR_API_KEYS is empty"):
        Settings()
    monkeypatch.setenv("CONVEYOR_API_DEVELOPMENT", "true")
    assert Settings().keys == []
    entry = {"name": "ci", "sha256": key_digest("k"), "scopes": ["jobs:read"]}
    monkeypatch.setenv("CONVEYOR_API_KEYS", json.dumps([entry]))
    monkeypatch.delenv("CONVEYOR_API_DEVELOPMENT")
    assert Settings().keys[0].scopes == {Scope.JOBS_READ}


def test_the_local_runner_grants_every_scope_there_is() -> None:
    assert set(ALL_SCOPES) == {s.value for s in Scope}


class JsonLines(logging.Handler):
    """Formats each record at once, inside the request's log context."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("api"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def request_logs() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("conveyor.requests")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_the_key_name_not_the_key_is_in_logs_and_spans(
    keyed: httpx.AsyncClient, request_logs: JsonLines, spans: InMemorySpanExporter
) -> None:
    key = ONLY[Scope.JOBS_READ]
    assert (await keyed.get("/v1/jobs", headers=bearer(key))).status_code == 200

    line = next(e for e in request_logs.lines if e.get("route") == "/v1/jobs")
    assert line["api_key"] == "only-jobs_read"
    assert key not in json.dumps(request_logs.lines)
    server = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert server, "no server span"
    assert server[-1].attributes is not None
    assert server[-1].attributes[KEY_NAME_ATTRIBUTE] == "only-jobs_read"
    assert key not in repr([s.attributes for s in spans.get_finished_spans()])


async def test_error_bodies_do_not_echo_secret_values(client: httpx.AsyncClient) -> None:
    secret = "hunter2-correct-horse"
    response = await client.post(
        "/v1/jobs/welcome", json={"name": "Ada", "email": ["x"], "password": {"v": secret}}
    )
    assert response.status_code == 422
    assert secret not in response.text
    assert {e["field"] for e in response.json()["errors"]} == {"email", "password"}


def test_the_api_process_will_not_start_without_keys(redis_url: str, log_dir: Path) -> None:
    api = api_process(redis_url, log_dir, CONVEYOR_API_KEYS="[]")
    api.start(wait_ready=False)
    assert api.process is not None
    assert api.process.wait(timeout=60) != 0
    assert "CONVEYOR_API_KEYS is empty" in api.output()
