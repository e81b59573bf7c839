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

from collections.abc import Awaitable, Callable
from functools import partial

import structlog
from aiohttp import web

from gateway.web.auth import authorize
from gateway.web.observability import observed
from gateway.web.problems import PROBLEMS, problem_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await observed(request, partial(_answer, handler=handler))


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer for an authorized caller, or the problem+json of what went wrong."""
    try:
        principal = await authorize(request)
        if principal is not None:
            structlog.contextvars.bind_contextvars(tenant=principal.tenant)
        return await handler(request)
    except PROBLEMS as error:
        answer = problem_for(request, error)
        if answer is None:
            raise
        return answer
