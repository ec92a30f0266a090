"""The kiosk page: plain HTML, CSS and JavaScript files in the package, served at ``GET /``.

No build step and nothing from a CDN: the files in ``static/`` are what the browser runs.
They are read once, at first use, and served with headers that keep the page to this server
(a Content-Security-Policy of ``'self'``) and out of caches between versions. A WebSocket
upgrade on ``/`` is the native protocol; only a plain ``GET`` gets the page.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PAGE_PATH = "/"
STATIC_PREFIX = "/static/"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    # Scripts, styles, worklets and the WebSocket from this server only; no framing.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; media-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


@functools.cache
def assets() -> dict[str, Asset]:
    """URL path → file, for every file of the page."""
    folder = resources.files("voice_agent.server") / "static"
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if entry.is_file() and suffix in _TYPES:
            path = PAGE_PATH if entry.name == "index.html" else STATIC_PREFIX + entry.name
            found[path] = Asset(entry.read_bytes(), _TYPES[suffix])
    return found


def wants_page(request: Request, path: str) -> bool:
    """A plain ``GET`` of one of the page's files (not a WebSocket upgrade of ``/``)."""
    if "websocket" in request.headers.get("Upgrade", "").lower():
        return False
    return path in assets()


def page_response(path: str, template: Response) -> Response:
    """The file at ``path`` as a response, built on ``template`` (the server's own plain
    response, for its Date and Connection headers)."""
    asset = assets()[path]
    headers = Headers(template.headers)
    for name in ("Content-Type", "Content-Length"):
        del headers[name]
    headers["Content-Type"] = asset.content_type
    headers["Content-Length"] = str(len(asset.body))
    for name, value in _SECURITY_HEADERS.items():
        headers[name] = value
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, asset.body)
