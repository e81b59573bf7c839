"""CORS for the configured browser origins (``server.cors_origins``), so frontends can call the API
and open SSE streams from another origin.

- Origins match exactly (scheme, host and port as the browser sends them); ``*`` allows any.
- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here,
  before routing would refuse the method: 204 with the allowed methods, headers and a max age, or
  403 problem+json for an origin that is not allowed.
- Every other response to an allowed origin, streams and problems included, gets
  ``Access-Control-Allow-Origin``, ``Vary: Origin`` and the headers a script may read. The headers
  are added when the response is prepared, because a streamed response (SSE, large results) has
  sent its headers long before a middleware would see it return.
- A response to any other origin gets no CORS header at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.web.problems import problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-ID",
    # EventSource polyfills send it on every stream request.
    "Cache-Control",
)
EXPOSE_HEADERS = (
    "Location",
    "X-Request-ID",
    "Idempotent-Replayed",
    "Retry-After",
    "WWW-Authenticate",
)
DEFAULT_METHODS = ("GET", "POST", "DELETE")
MAX_AGE = 600
"""Seconds a browser may cache a preflight answer."""


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        cleaned = {origin.strip().rstrip("/") for origin in origins if origin.strip()}
        self.any = "*" in cleaned
        self.origins = frozenset(cleaned - {"*"})

    def allowed(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or ``None`` if not allowed."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def preflight(self, request: web.Request) -> web.StreamResponse:
        allow = self.allowed(request.headers.get(hdrs.ORIGIN))
        if allow is None:
            return problem(
                request,
                status=403,
                code="cors_origin_not_allowed",
                title="The origin is not allowed",
                detail=f"origin {request.headers.get(hdrs.ORIGIN)!r} is not in server.cors_origins",
            )
        methods: Iterable[str] = DEFAULT_METHODS
        exception = request.match_info.http_exception
        if isinstance(exception, web.HTTPMethodNotAllowed):
            methods = sorted(exception.allowed_methods - {"HEAD"})
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: allow,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(methods),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(ALLOW_HEADERS),
                hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE),
                hdrs.VARY: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            },
        )

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return  # not a browser's cross-origin call: most requests stop here
        if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
            return  # a preflight answer, complete already
        allow = self.allowed(origin)
        if allow is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allow
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ", ".join(EXPOSE_HEADERS)
        vary = response.headers.get(hdrs.VARY)
        if vary is None:
            response.headers[hdrs.VARY] = "Origin"
        elif "origin" not in {part.strip().lower() for part in vary.split(",")}:
            response.headers[hdrs.VARY] = f"{vary}, Origin"


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def cors_middleware(policy: CorsPolicy) -> Middleware:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A preflight for a path that does not exist falls through to the 404.
        if is_preflight(request) and not isinstance(
            request.match_info.http_exception, web.HTTPNotFound
        ):
            return policy.preflight(request)
        return await handler(request)

    return cors


def setup_cors(app: web.Application, origins: Iterable[str]) -> None:
    """Answer preflights before routing, and mark allowed responses. With no origins configured
    nothing is installed: same-origin callers need none of it.

    The middleware goes inside the others (the gateway's own answers a preflight's route as
    public), so a preflight still gets a request id, a log line and a place in the HTTP metrics.
    """
    policy = CorsPolicy(origins)
    if not policy.any and not policy.origins:
        return
    app.middlewares.append(cors_middleware(policy))

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        policy.decorate(request, response)

    app.on_response_prepare.append(on_prepare)
