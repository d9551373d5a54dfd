"""The OpenAPI docs at /docs, served entirely from this service: Swagger UI's files come from
the swagger-ui-bundle package (GPU servers often have no internet, and a CDN script runs with
the page's rights), and the page starts it from a static file (no inline script, as the
Content-Security-Policy demands)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs-assets"

_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{title}} - API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>"""


def add_docs(app: FastAPI) -> None:
    """Call on an app created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    page = _PAGE.replace("{title}", app.title)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page)
