"""The one place a request's credential is read and its scope checked.

Each route in the table (``gateway/web/routes.py``) names the scope it needs; :func:`authorize`
(called by the gateway's middleware) finds the matched route by name, authenticates the caller
and checks that scope before the handler runs, so no handler checks anything. A route outside the
table is public only if it is named in :data:`PUBLIC_PATHS` (``/metrics`` by setting); anything
else that matched needs ``admin``, so a route added without an entry fails closed.

SSE routes also take ``?access_token=`` (a stream token from ``POST /v1/stream-tokens``), because
``EventSource`` cannot send headers; no other route does, so a long-lived key never needs to go
in a URL. The access log records route templates, never query strings, and the log scrubber masks
tokens wherever they appear.
"""

from __future__ import annotations

from aiohttp import web

from gateway.access import Access
from gateway.auth import OPEN, Principal, Scope
from gateway.errors import Forbidden
from gateway.web.routes import ROUTES, Route
from gateway.web.state import COMPONENTS_KEY, PRINCIPAL

ACCESS_TOKEN = "access_token"
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", "/"})
PUBLIC_PREFIXES = ("/docs/assets/", "/ui/")
"""Static files of the public pages; each such route serves only the files it lists."""
ROUTES_BY_NAME: dict[str, Route] = {route.handler.__name__: route for route in ROUTES}


def required_scope(request: web.Request) -> tuple[Scope | None, bool]:
    """The scope the matched route needs (``None``: public) and whether it takes a stream token."""
    match = request.match_info
    if match.http_exception is not None:
        return None, False  # no such route or method: the 404 or 405 says so, to anyone
    route = ROUTES_BY_NAME.get(match.route.name or "")
    if route is not None:
        return route.scope, route.stream
    if (
        request.path in PUBLIC_PATHS
        or request.path.startswith(PUBLIC_PREFIXES)
        or request.method == "OPTIONS"
    ):
        return None, False
    if request.path == "/metrics":
        public = request.app[COMPONENTS_KEY].settings.auth.public_metrics
        return (None if public else Scope.ADMIN), False
    return Scope.ADMIN, False


async def authorize(request: web.Request) -> Principal | None:
    """Authenticate the caller and check the scope the matched route needs; ``None`` for a public
    route. Raises the problem (401, 403) otherwise."""
    scope, stream = required_scope(request)
    if scope is None:
        return None
    access: Access = request.app[COMPONENTS_KEY].require_access()
    if not access.required:
        return OPEN  # everyone is the default tenant with every scope: nothing to look up
    token = request.query.get(ACCESS_TOKEN) if stream else None
    if token is not None and "Authorization" not in request.headers:
        principal = await access.from_stream_token(token)
    else:
        principal = await access.authenticate(request.headers.get("Authorization"))
    if not principal.allows(scope):
        granted = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
        raise Forbidden(
            f"this operation needs the {scope.value} scope; the key has {granted}", scope.value
        )
    request[PRINCIPAL] = principal
    return principal
