"""Request ids, HTTP metrics, the access log and ``GET /metrics``.

``request_id_middleware`` runs outermost: it takes a sane ``X-Request-ID`` or makes one, binds it
into structlog's context for everything logged while the request is served, and the
``on_response_prepare`` hook echoes it on every response, including problem+json errors, streams
and the 500s that aiohttp renders itself. ``metrics_middleware`` sits just outside the
problem+json middleware, so it sees the status the client receives.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.metrics import CONTENT_TYPE_LATEST
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
    if _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def route_template(request: web.Request) -> str:
    """The matched resource's template (``/v1/jobs/{job_id}``), never the raw path: a label per
    job id would grow the scrape without bound."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    # bound_contextvars restores the previous values: a keep-alive connection serves its requests
    # in one task, so a plain bind would leak this id into the next request's logs.
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response carries the request's id."""
    request_id = request.get(REQUEST_ID)
    if isinstance(request_id, str):
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[COMPONENTS_KEY].metrics
    started = time.perf_counter()
    status = 500
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
        seconds = time.perf_counter() - started
        route = route_template(request)
        metrics.http_request(
            request.method, route, status, seconds, timed=not _waits_by_design(request, route)
        )
        emit = log.debug if route in QUIET_ROUTES else log.info
        emit(
            "http.request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )


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
