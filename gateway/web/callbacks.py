"""``POST /v1/callbacks/{provider}``: authenticate, read, hand to :class:`CallbackInbox`.

The token travels in the query string, so nothing here logs the URL; the problem body names only
the path (``instance``), never the query.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from gateway.callbacks import TOKEN_HEADER, TOKEN_PARAM, CallbackInbox
from gateway.web.handlers import json_response, read_json
from gateway.web.state import COMPONENTS_KEY


class CallbackAck(BaseModel):
    """Accepted: the job it names (if jobgate tracks one) is polled now."""

    matched: bool
    duplicate: bool | None = None
    """A repeat of a delivery seen moments ago: accepted again, but no second poll."""


def _inbox(request: web.Request) -> CallbackInbox:
    inbox = request.app[COMPONENTS_KEY].callbacks
    if inbox is None:
        raise RuntimeError("the application has not started")
    return inbox


async def receive_callback(request: web.Request) -> web.Response:
    inbox = _inbox(request)
    provider = request.match_info["provider"]
    token = request.query.get(TOKEN_PARAM) or request.headers.get(TOKEN_HEADER)
    inbox.authenticate(provider, token)
    answer = await inbox.receive(provider, await read_json(request))
    return json_response(answer, status=202)
