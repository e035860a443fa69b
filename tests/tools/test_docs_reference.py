"""The generated reference pages are what the code generates now, and a setting,
a metric or a route added without regenerating them fails the check."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter
from pydantic import Field

from conveyor_api.main import create_app
from conveyor_worker.settings import Settings as WorkerSettings
from tools import docs_reference


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """The pages as `make docs-reference` writes them, in a folder of their own."""
    for name, make in docs_reference.PAGES.items():
        (tmp_path / name).write_text(make())
    return tmp_path


def test_the_committed_pages_are_the_generated_ones() -> None:
    assert docs_reference.stale_pages() == [], "run `make docs-reference` and commit the pages"


def test_a_fresh_generation_is_not_stale(committed: Path) -> None:
    assert docs_reference.stale_pages(committed) == []


def test_a_new_setting_makes_the_settings_page_stale(
    committed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class WithNewSetting(WorkerSettings):
        # A setting someone just added.
        brand_new_s: float = Field(default=1.5, gt=0)

    roots = docs_reference.settings_roots()
    monkeypatch.setattr(
        docs_reference,
        "settings_roots",
        lambda: [(name, WithNewSetting if cls is WorkerSettings else cls) for name, cls in roots],
    )
    assert docs_reference.stale_pages(committed) == ["settings.md"]
    assert (
        "| `CONVEYOR_WORKER_BRAND_NEW_S` | `float` | `1.5` | A setting someone just added. |"
        in (docs_reference.settings_page())
    )


@pytest.fixture
def new_metric() -> Iterator[Counter]:
    metric = Counter("conveyor_brand_new", "A metric someone just added.", ["queue"])
    try:
        yield metric
    finally:
        REGISTRY.unregister(metric)


def test_a_new_metric_makes_the_metrics_page_stale(committed: Path, new_metric: Counter) -> None:
    assert docs_reference.stale_pages(committed) == ["metrics.md"]
    assert "| `conveyor_brand_new_total` | counter | `queue` | A metric someone just added. |" in (
        docs_reference.metrics_page()
    )


def test_a_new_route_makes_the_http_api_page_stale(
    committed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = docs_reference.openapi_document

    def with_new_route() -> dict[str, Any]:
        document = original()
        document["paths"]["/v1/brand-new"] = {
            "get": {"tags": ["jobs"], "summary": "A route someone just added", "responses": {}}
        }
        return document

    monkeypatch.setattr(docs_reference, "openapi_document", with_new_route)
    assert docs_reference.stale_pages(committed) == ["http-api.md"]


def test_a_route_added_to_the_app_reaches_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a hand-made document: a route on the app itself shows in the page."""

    def app_with_route(settings: Any) -> Any:
        app = create_app(settings)

        @app.get("/brand-new", tags=["health"], summary="A route someone just added")
        async def brand_new() -> dict[str, str]:
            return {}

        return app

    monkeypatch.setattr(docs_reference, "create_app", app_with_route)
    assert "### `GET /brand-new`" in docs_reference.http_api_page()


def test_check_mode_names_each_stale_page(
    committed: Path, new_metric: Counter, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(docs_reference, "REFERENCE", committed)
    assert docs_reference.main(["--check"]) == 1
    assert (
        "docs/reference/metrics.md is stale: run `make docs-reference`" in capsys.readouterr().err
    )


def test_values_comments_follow_the_key_paths() -> None:
    text = "# The api.\napi:\n  # -- Replicas.\n  replicas: 2\n  limits:\n    maxBodyBytes: 1\n"
    assert docs_reference.values_comments(text) == {"api": "The api.", "api.replicas": "Replicas."}
