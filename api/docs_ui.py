"""The interactive API docs at /docs: Swagger UI 5 (which reads OpenAPI 3.1) with its files served by the API
itself, from the fastapi-offline package, so they work without reaching a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def assets_dir() -> Path:
    """Swagger UI's bundle and stylesheet as fastapi-offline ships them."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Serve /docs from local assets; create the app with docs_url=None and redoc_url=None (both use a CDN)."""
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # the key typed into "Authorize" stays for the page's lifetime only
            swagger_ui_parameters={"persistAuthorization": False, "displayRequestDuration": True},
        )
