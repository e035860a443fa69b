"""`/docs`: the api's reference page (Swagger UI), every file of it served from
this package, so the page needs no CDN and runs under the same strict
Content-Security-Policy as the rest of the api (no inline script or style,
nothing from another origin).

Swagger UI's files come from the `swagger-ui-bundle-v2` package (its `dist`
files); the script that starts it is ours (`ui/docs/start.js`).
"""

from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"
# The files the page loads, by the name it asks for: nothing else is served.
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (Path(swagger_ui_path) / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (Path(swagger_ui_path) / "swagger-ui-bundle.js", "text/javascript"),
    "favicon-32x32.png": (Path(swagger_ui_path) / "favicon-32x32.png", "image/png"),
    "start.js": (
        Path(str(files("conveyor_api") / "ui" / "docs" / "start.js")),
        "text/javascript",
    ),
}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body data-openapi-url="{openapi_url}">
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/start.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH)
async def docs_page(request: Request) -> HTMLResponse:
    root_path = request.scope.get("root_path", "").rstrip("/")
    app: FastAPI = request.app
    page = PAGE.format(
        title=escape(f"{app.title} - api reference"),
        assets=escape(root_path + ASSETS_PATH),
        openapi_url=escape(root_path + (app.openapi_url or "/openapi.json")),
    )
    return HTMLResponse(page)


@router.get(f"{ASSETS_PATH}/{{name}}")
async def docs_asset(name: Annotated[str, PathParam(max_length=64)]) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"The docs page has no file {name!r}.")
    path, media_type = ASSETS[name]
    # Revalidated on every load (a 304 when unchanged), as the status page's files.
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
