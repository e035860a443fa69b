"""`/docs` in a real browser (Debian's chromium): Swagger UI renders the api's
operations from files of the api's own origin, under its strict
Content-Security-Policy, with nothing refused and nothing fetched elsewhere."""

from pathlib import Path

from playwright.sync_api import Request

from tests.e2e.conftest import Stack
from tests.support.browser import open_page


def test_the_docs_page_renders_from_its_own_origin(stack: Stack, tmp_path: Path) -> None:
    requested: list[str] = []
    with open_page(tmp_path / "profile") as (page, errors):

        def record(request: Request) -> None:
            requested.append(request.url)

        page.on("request", record)
        page.goto(f"{stack.api.base_url}/docs")
        page.wait_for_selector(".opblock")  # an operation, as Swagger UI draws them
        page.wait_for_load_state("networkidle")
        titles = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/v1/jobs" in title for title in titles), titles
        assert page.locator("button.authorize").count() == 1  # for the bearer key
        # A CSP refusal (a script, style, image or worker) is a console error.
        assert errors.console == []
        assert errors.uncaught == []
    assert requested, "the page requested nothing"
    assert all(url.startswith(stack.api.base_url) for url in requested), requested
