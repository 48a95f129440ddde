"""Swagger UI (`/docs`) and ReDoc (`/redoc`) served from this machine, not from a CDN.

FastAPI's own pages load swagger-ui and redoc from jsdelivr, so they are blank on a machine without
internet (many clusters are air-gapped). The assets here come from the installed `fastapi-offline`
package (its `static/` folder: swagger-ui-dist's bundle and CSS, redoc's standalone bundle, a favicon),
served under `/docs/static/`. The pages need no API key, like `/openapi.json` (`api.errors.OPEN_PATHS`).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(files("fastapi_offline") / "static"))
STATIC_URL = "/docs/static"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# FastAPI's defaults, plus: no online validator (swagger-ui would fetch a badge from validator.swagger.io),
# the time each "Try it out" took, and a filter box over the operations.
SWAGGER_PARAMETERS = {"validatorUrl": None, "displayRequestDuration": True, "filter": True}

# The pages may load nothing from another host, so the browser never waits on one that an air-gapped
# machine cannot reach. The one thing the bundles would still fetch is the "API docs by Redocly" logo
# (cdn.redoc.ly, unconditional in redoc 2): refused here, redoc then hides it. Inline scripts and styles:
# the pages' own start-up script, and the styles both UIs inject. blob: workers: redoc's search.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
       "frame-ancestors 'self'")


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


def install(app: FastAPI) -> None:
    """Adds the pages to an app made with `docs_url=None, redoc_url=None`."""
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-static")

    def url(request: Request, path: str) -> str:  # behind a proxy that strips a prefix, keep the prefix
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _local_only(get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"), title=f"{app.title} - Swagger UI",
            swagger_js_url=url(request, f"{STATIC_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{STATIC_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{STATIC_URL}/favicon.png"),
            oauth2_redirect_url=url(request, OAUTH2_REDIRECT_URL),
            swagger_ui_parameters=SWAGGER_PARAMETERS))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _local_only(get_redoc_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"), title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{STATIC_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{STATIC_URL}/favicon.png"), with_google_fonts=False))
