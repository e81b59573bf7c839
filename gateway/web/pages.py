"""The jobs page: ``/`` redirects to ``/ui/``, which serves the static files of ``static/ui``.

The page is plain HTML, CSS and ES modules with no build step, so a fresh clone serves it with
nothing but Python. It is public (``gateway/web/auth.py``): it holds no data, and the API calls
it makes carry the user's key.

- Only the files of that directory with a known type are served, by name; anything else is the
  usual 404 problem, so no path ever reaches the filesystem unchecked.
- Each file's ``ETag`` is the SHA-256 of its bytes and ``Cache-Control`` is ``no-cache``: a
  browser revalidates on each load (304 while unchanged), so a reload picks up a new version. A
  file edited on disk is read again (its size or mtime changed), without a restart.
- A strict ``Content-Security-Policy``: the page's own scripts and styles only, API calls to its
  own origin only, no frames, no ``<base>``; with ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).parent / "static" / "ui"
INDEX = "index.html"
CONTENT_TYPES: dict[str, tuple[str, str | None]] = {
    ".html": ("text/html", "utf-8"),
    ".js": ("text/javascript", "utf-8"),
    ".css": ("text/css", "utf-8"),
    ".svg": ("image/svg+xml", None),
    ".ico": ("image/x-icon", None),
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.[a-z]+")
"""A file the page may name: one plain segment, no dots but the extension's, no hidden files."""

CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: str
    content_type: tuple[str, str | None]
    stamp: tuple[int, int]
    """(mtime in ns, size) when read: a change means the file is read again."""


class Assets:
    """The page's files, read on first use and again whenever one changes on disk."""

    def __init__(self, root: Path = UI_DIR) -> None:
        self.root = root
        self._cache: dict[str, Asset] = {}

    def get(self, name: str) -> Asset | None:
        suffix = Path(name).suffix
        if not _NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
            return None
        path = self.root / name
        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached.stamp == stamp:
            return cached
        try:
            body = path.read_bytes()
        except OSError:
            return None
        asset = Asset(
            body=body,
            etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
            content_type=CONTENT_TYPES[suffix],
            stamp=stamp,
        )
        self._cache[name] = asset
        return asset


ASSETS = Assets()


async def root_redirect(request: web.Request) -> web.StreamResponse:
    """``/`` (with its query, so a shared filtered view survives) to ``/ui/``."""
    # The raw query: the decoded one would turn %23 into a '#' that starts a fragment.
    query = request.rel_url.raw_query_string
    target = "/ui/" + (f"?{query}" if query else "")
    raise web.HTTPFound(target)


async def ui_index(request: web.Request) -> web.StreamResponse:
    return _serve(request, INDEX)


async def ui_file(request: web.Request) -> web.StreamResponse:
    return _serve(request, request.match_info["file"])


def _serve(request: web.Request, name: str) -> web.StreamResponse:
    asset = ASSETS.get(name)
    if asset is None:
        raise web.HTTPNotFound()
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("If-None-Match"), asset.etag):
        return web.Response(status=304, headers=headers)
    content_type, charset = asset.content_type
    return web.Response(
        body=asset.body, headers=headers, content_type=content_type, charset=charset
    )


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {item.strip().removeprefix("W/") for item in header.split(",")}
    return "*" in tags or etag in tags


def setup_pages(app: web.Application) -> None:
    """Register ``/``, ``/ui/`` and ``/ui/{file}`` (public: see ``gateway/web/auth.py``)."""
    app.router.add_get("/", root_redirect, name="ui_root")
    app.router.add_get("/ui/", ui_index, name="ui_index")
    app.router.add_get("/ui/{file}", ui_file, name="ui_file")
