"""``/docs``: the OpenAPI document in Swagger UI, served by the gateway itself.

Swagger UI's files come from the npm registry at install time (``tools/vendor_swagger_ui.py``, run
by ``make install``); nothing is loaded from a CDN, so the page works where the gateway has no
internet. An install without them (``pip install`` alone) gets a plain page that says how to
fetch them and links the raw document, rather than a blank one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from aiohttp import web

STATIC: Final = Path(__file__).resolve().parent / "static"
SWAGGER_UI: Final = STATIC / "swagger-ui"
ASSETS: Final = {
    "swagger-ui-bundle.js": SWAGGER_UI / "swagger-ui-bundle.js",
    "swagger-ui.css": SWAGGER_UI / "swagger-ui.css",
    "favicon-32x32.png": SWAGGER_UI / "favicon-32x32.png",
    "init.js": STATIC / "docs" / "init.js",
}
"""The only files ``/docs/assets/`` serves: a name is looked up here, never joined to a path."""

# Swagger UI styles its widgets with inline style attributes, hence 'unsafe-inline' for styles
# only; scripts come from this origin alone, and try-it calls only this origin.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Final = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


def swagger_version() -> str | None:
    try:
        version = json.loads((SWAGGER_UI / ".version").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version) if all(path.is_file() for path in ASSETS.values()) else None


def page(version: str) -> str:
    # ?v= changes with each Swagger UI version, so a browser never mixes a cached old bundle in.
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jobgate API reference</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png?v={version}">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css?v={version}">
</head>
<body>
<main>
<p id="loading">Loading the API reference from <a href="/openapi.json">/openapi.json</a>...</p>
<noscript><p>This reference needs JavaScript. The document itself is at
<a href="/openapi.json">/openapi.json</a> (OpenAPI 3.2).</p></noscript>
<div id="swagger-ui"></div>
</main>
<script src="/docs/assets/swagger-ui-bundle.js?v={version}"></script>
<script src="/docs/assets/init.js?v={version}"></script>
</body>
</html>
"""


MISSING: Final = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>jobgate API reference</title></head>
<body>
<h1>jobgate API reference</h1>
<p>Swagger UI is not installed beside this gateway: run <code>make install</code> (or
<code>python tools/vendor_swagger_ui.py</code> in the repository) and reload.</p>
<p>The OpenAPI 3.2 document is at <a href="/openapi.json">/openapi.json</a>.</p>
</body>
</html>
"""


async def docs_page(request: web.Request) -> web.Response:
    version = swagger_version()
    text = MISSING if version is None else page(version)
    return web.Response(text=text, content_type="text/html", headers=SECURITY_HEADERS)


async def docs_asset(request: web.Request) -> web.StreamResponse:
    path = ASSETS.get(request.match_info["name"])
    if path is None or not path.is_file():
        raise web.HTTPNotFound()
    # FileResponse answers conditional requests (ETag, Last-Modified) and ranges by itself.
    response = web.FileResponse(path, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
    return response
