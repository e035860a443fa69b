"""`/ui`: the status page's files, served from the package, ready for a strict CSP."""

import subprocess
import zipfile
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import httpx
import pytest

from conveyor_core.redaction import DEFAULT_KEYS
from conveyor_core.settings import CatalogSettings
from tests.api.conftest import make_app, serve
from tests.support import jobs
from tests.support.processes import REPO_ROOT

STATIC = files("conveyor_api").joinpath("ui", "static")


class InlineCode(HTMLParser):
    """Collects what a `script-src 'self'; style-src 'self'` policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.blocked.append("<style>")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.blocked.append("<script> without src")
            else:
                self.scripts.append(str(names["src"]))
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.blocked.append(f"{tag} {name}={value!r}")
            if name in ("href", "src") and value and value.startswith(("javascript:", "data:")):
                self.blocked.append(f"{tag} {name}={value!r}")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.blocked.append("inline script text")


async def test_ui_redirects_to_the_page_under_its_own_path(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui")

    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith("/ui/")


async def test_the_page_and_every_file_it_loads_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")

    parser = InlineCode()
    parser.feed(page.text)
    assert parser.scripts == ["app.js", "console.js"]
    for name, kind in [
        ("app.js", "javascript"),
        ("console.js", "javascript"),
        ("api.js", "javascript"),
        ("sse.js", "javascript"),
        ("format.js", "javascript"),
        ("dom.js", "javascript"),
        ("workflow.js", "javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        response = await client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["content-type"], name
        # Revalidated on each load: a new release's script replaces the old one at once.
        assert response.headers["cache-control"] == "no-cache"
        again = await client.get(f"/ui/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304


async def test_the_page_has_no_inline_script_or_style(client: httpx.AsyncClient) -> None:
    parser = InlineCode()
    parser.feed((await client.get("/ui/")).text)

    assert parser.blocked == []


def test_no_script_sets_inline_styles_or_html() -> None:
    """Styles come from app.css and text is set as text: nothing a strict CSP refuses."""
    for script in (p for p in STATIC.iterdir() if p.name.endswith(".js")):
        source = script.read_text()
        for risky in (".style.", 'setAttribute("style"', "innerHTML", "eval(", "new Function"):
            assert risky not in source, f"{script.name} uses {risky}"


async def test_an_unknown_file_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui/no-such-file.js")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_config_names_the_keys_the_page_masks(client: httpx.AsyncClient) -> None:
    config = (await client.get("/ui/config.json")).json()

    assert config["redact_keys"] == list(DEFAULT_KEYS)
    assert config["refresh_s"] > 0
    assert config["submit_tasks"]  # the seed app's module mounts POST /task


async def test_config_hides_the_task_form_without_the_seed_app(redis_url: str) -> None:
    app = make_app(redis_url, catalog=CatalogSettings(job_modules=jobs.MODULE))
    async with serve(app) as client:
        config = (await client.get("/ui/config.json")).json()
        assert not config["submit_tasks"]


@pytest.mark.e2e
def test_the_files_ship_in_the_api_wheel(tmp_path: Path) -> None:
    """Package data: an image built from the wheel serves the same page."""
    uv = REPO_ROOT / ".tools" / "bin" / "uv"
    subprocess.run(
        [str(uv), "build", "--wheel", "--out-dir", str(tmp_path), "services/api"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("conveyor_api-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for static in STATIC.iterdir():
        assert f"conveyor_api/ui/static/{static.name}" in names
