"""The admin API's status page: its files (package data in ``tickertape/server/static``),
served with a strict content security policy.

Not here: the data the page polls (:mod:`tickertape.server.admin_status`), routing and
errors (:mod:`tickertape.server.admin`).
"""

from __future__ import annotations

import importlib.resources
from typing import Final

from aiohttp import web

STATIC_FILES: Final = {
    "status.html": "text/html",
    "status.js": "text/javascript",
    "status.css": "text/css",
}
"""The status page's files, by name: what GET / and GET /static/{name} serve."""
PAGE_HEADERS: Final = {
    # Everything the page needs comes from here; it may not be framed by another page.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
PAGE: Final = "status.html"
"""What GET / serves."""


def page_file(name: str) -> web.Response | None:
    """One of the status page's files, from the package's data; None if ``name`` is not
    one of them (nothing else is ever read)."""
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return None
    data = importlib.resources.files("tickertape.server").joinpath("static", name)
    return web.Response(
        body=data.read_bytes(),
        content_type=content_type,
        charset="utf-8",
        headers=PAGE_HEADERS,
    )
