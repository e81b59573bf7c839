"""Request ids, HTTP metrics, the access log and ``GET /metrics``.

``observe_middleware`` runs outermost: it takes a sane ``X-Request-ID`` or makes one, binds it
into structlog's context for everything logged while the request is served, counts and times the
request and writes its access-log line (``log.access`` says which requests get one). It sits just
outside the problem+json middleware, so it sees the status the client receives. The
``on_response_prepare`` hook echoes the id on every response, including problem+json errors,
streams and the 500s that aiohttp renders itself.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.settings import AccessLog
from gateway.web.state import COMPONENTS_KEY

log = structlog.get_logger("jobgate.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = "jobgate.request_id"
"""The request's key for its id (aiohttp has no typed request keys)."""
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED = "unmatched"
QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
"""Probed every few seconds by Prometheus and Kubernetes: logged at debug, not info."""
CLIENT_CLOSED = 499
"""Recorded when the client went away mid-request (nginx's convention; no response was sent)."""


def request_id_of(request: web.Request) -> str:
    """The client's id if it is short and plain enough to log and echo safely, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if given and _SANE_ID.fullmatch(given):
        return given
    return _new_request_id()


def _request_ids() -> Callable[[], str]:
    # 32 hex digits like a uuid4's, without a system call per request (os.urandom, which showed
    # long GIL waits under load): a random per-process half, then a counter.
    prefix = secrets.token_hex(8)
    counter = itertools.count(secrets.randbits(64))
    return lambda: f"{prefix}{next(counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _request_ids()


def route_template(request: web.Request) -> str:
    """The matched resource's template (``/v1/jobs/{job_id}``), never the raw path: a label per
    job id would grow the scrape without bound."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def logged(access: AccessLog, method: str, status: int, seconds: float, slow: float) -> bool:
    """Whether a request gets an access-log line. ``reads`` leaves out successful, quick reads:
    on a busy gateway they are most of the lines and most of the logging cost, and the HTTP
    metrics count every one of them anyway."""
    if access == "all":
        return True
    if access == "off":
        return False
    return method not in _READS or status >= 400 or seconds >= slow


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """:func:`observed` as a middleware of its own, for an app without the gateway's."""
    return await observed(request, handler)


async def observed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve ``request`` with ``handler`` under its request id (bound into structlog's context for
    everything logged meanwhile), then count and time it and write its access-log line."""
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    # No reset needed: aiohttp serves each request in a task of its own, with a copy of the
    # context, so nothing bound here reaches the connection's next request.
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        record(request, status, started)


def record(request: web.Request, status: int, started: float) -> None:
    """Count and time a served request, and write its access-log line if ``log.access`` wants
    one."""
    components = request.app[COMPONENTS_KEY]
    seconds = time.perf_counter() - started
    route = route_template(request)
    components.metrics.http_request(
        request.method, route, status, seconds, timed=not _waits_by_design(request, route)
    )
    config = components.settings.log
    if logged(config.access, request.method, status, seconds, config.slow_request_seconds):
        emit = log.debug if route in QUIET_ROUTES else log.info
        emit(
            "http.request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response carries the request's id."""
    request_id = request.get(REQUEST_ID)
    if isinstance(request_id, str):
        response.headers[REQUEST_ID_HEADER] = request_id


def _waits_by_design(request: web.Request, route: str) -> bool:
    """SSE streams and long polls last as long as the client asked: in the latency histogram they
    would drown out the time the gateway itself takes (they are still counted as requests)."""
    if route.endswith("/events"):
        return True
    wait = request.query.get("wait", "")
    return wait not in ("", "0", "0.0")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text exposition, with job counts read fresh from the
    store (a gauge kept up to date on every write would cost the runner for nobody watching)."""
    components = request.app[COMPONENTS_KEY]
    store = components.require_service().store
    components.metrics.set_job_counts(await store.count_by_state())
    response = web.Response(body=components.metrics.render())
    # CONTENT_TYPE_LATEST carries its own charset parameter, so set the header whole.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
