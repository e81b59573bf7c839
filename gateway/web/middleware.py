"""The one middleware the gateway installs: observe (request id, metrics, access log), turn
problems into problem+json, authorize, then the handler.

One layer rather than three: each middleware layer is a coroutine and a wrapper per request, and
on a status read served from memory those were a large part of the cost. The three concerns stay
in their own modules (``observability``, ``problems``, ``auth``) as plain functions; this only
composes them, in the order the separate middlewares had: problems inside observe, so the metrics
and the log see the status the client receives; auth inside problems, so a refused key is a
problem like any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.web.auth import authorize
from gateway.web.observability import CLIENT_CLOSED, REQUEST_ID, record, request_id_of
from gateway.web.problems import PROBLEMS, problem_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    # No reset needed: aiohttp serves each request in a task of its own, with a copy of the
    # context, so nothing bound here reaches the connection's next request.
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        try:
            principal = await authorize(request)
            if principal is not None:
                structlog.contextvars.bind_contextvars(tenant=principal.tenant)
            response = await handler(request)
        except PROBLEMS as error:
            answer = problem_for(request, error)
            if answer is None:
                raise
            response = answer
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
