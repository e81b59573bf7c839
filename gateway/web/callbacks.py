"""``POST /v1/callbacks/{provider}``: authenticate, read, hand to :class:`CallbackInbox`.

Two ways in. Most providers present the callback token (``?token=`` or the header). A provider
that signs its deliveries (Pulse, through Svix) presents Standard Webhooks headers instead, and the
signature is checked over the raw body bytes exactly as they arrived, before the JSON is decoded:
re-encoding could change them, and an unauthenticated sender learns nothing from a parse error.

The token travels in the query string, so nothing here logs the URL; the problem body names only
the path (``instance``), never the query, and never a signature.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.callbacks import TOKEN_HEADER, TOKEN_PARAM, CallbackInbox
from gateway.web.handlers import json_response, read_json
from gateway.web.problems import BadInput
from gateway.web.state import COMPONENTS_KEY

_UNPARSED = frozenset({"invalid_json", "request_too_deep"})
"""Errors of a body that was read whole but is not acceptable JSON: held back until the signature
holds. Any other (a body that never arrived, a wrong media type) is answered at once."""


class CallbackAck(BaseModel):
    """Accepted: the job it names (if jobgate tracks one) is polled now."""

    matched: bool
    duplicate: bool | None = None
    """A repeat of a delivery seen moments ago (or of a signed delivery's ``webhook-id``):
    accepted again, but no second poll."""


def _inbox(request: web.Request) -> CallbackInbox:
    inbox = request.app[COMPONENTS_KEY].callbacks
    if inbox is None:
        raise RuntimeError("the application has not started")
    return inbox


async def receive_callback(request: web.Request) -> web.Response:
    inbox = _inbox(request)
    provider = request.match_info["provider"]
    if inbox.signs(provider):
        return await _receive_signed(request, inbox, provider)
    token = request.query.get(TOKEN_PARAM) or request.headers.get(TOKEN_HEADER)
    inbox.authenticate(provider, token)
    answer = await inbox.receive(provider, await read_json(request))
    return json_response(answer, status=202)


async def _receive_signed(
    request: web.Request, inbox: CallbackInbox, provider: str
) -> web.Response:
    inbox.check_enabled(provider)  # 404 before anything is read
    body: Any = None
    unparsed: BadInput | None = None
    try:
        # read_json applies every body limit (size, time, depth); the raw bytes stay cached.
        body = await read_json(request)
    except BadInput as exc:
        if exc.code not in _UNPARSED:
            raise
        unparsed = exc
    message_id = inbox.verify(provider, request.headers, await request.read())
    if unparsed is not None:
        raise unparsed
    answer = await inbox.receive(provider, body, message_id=message_id)
    return json_response(answer, status=202)
