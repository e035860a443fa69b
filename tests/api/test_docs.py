"""`/docs`: the api reference page, every file of it from this origin, under
the same strict Content-Security-Policy as the rest of the api."""

import re

import httpx

from conveyor_api.headers import CONTENT_SECURITY_POLICY

ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


async def test_the_docs_page_loads_only_files_of_its_own_origin(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # every script is a file
    assert "style=" not in page.text
    referenced = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert len(referenced) == 4, referenced  # the css, the icon and two scripts
    for url in referenced:
        assert url.startswith("/docs/assets/"), url  # same origin: no CDN
        asset = await client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.headers["content-type"].startswith(ASSET_TYPES[suffix]), url
        assert len(asset.content) > 100, url
    openapi_url = re.search(r'data-openapi-url="([^"]*)"', page.text)
    assert openapi_url is not None
    assert (await client.get(openapi_url[1])).json()["info"]["title"] == "Conveyor"


async def test_only_the_page_files_are_served(client: httpx.AsyncClient) -> None:
    for path in (
        "/docs/assets/index.html",  # in Swagger UI's files, but not the page's
        "/docs/assets/swagger-initializer.js",
        "/docs/assets/..%2F..%2Fpyproject.toml",
        "/redoc",  # FastAPI's, which loads from a CDN: gone
    ):
        assert (await client.get(path)).status_code == 404, path
