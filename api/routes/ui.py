"""The dashboard at `/ui`: one HTML page, a script and a stylesheet from this package (api/static/ui/),
nothing from another host. It is a client of the public API like any other: the page itself is open (it
holds no data), and the script sends the key that the user typed, kept in the browser's localStorage, in
the `Authorization` header of every API call. The event stream is read with fetch (EventSource cannot
send a header), so a key never appears in a URL, a server log or the browser history."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from api.errors import Problem

ASSETS = Path(str(files("api") / "static" / "ui"))
# Only these files are served (no directory listing, no path from the request touches the file system).
MEDIA = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
# Own scripts and styles only (no inline ones); images from the API (the curves) arrive as blob: URLs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-cache"}

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse((ASSETS / "index.html").read_text(), headers=HEADERS)


@router.get("/assets/{name}")
def asset(name: str) -> FileResponse:
    if name not in MEDIA:
        raise Problem(404, f"no dashboard asset {name!r}")
    return FileResponse(ASSETS / name, media_type=MEDIA[name], headers=HEADERS)
