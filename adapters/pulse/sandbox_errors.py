"""The Pulse sandbox's error answers and the API-key check.

Every error body (bar those of the presigned-URL stand-in, which answers S3 XML like S3 does) is
``{"error": {"code", "message", "details"}}``; ``pulse_errors`` gives the router's own 404/405 and
413 the same shape.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from adapters.simulator import SETTINGS_KEY

JSON = Any


def error_response(
    status: int,
    code: str,
    message: str,
    details: JSON = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def s3_error(status: int, code: str, message: str) -> web.Response:
    request_id = secrets.token_hex(8).upper()
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(status=status, text=text, content_type="application/xml")


def auth_error(request: web.Request) -> web.Response | None:
    key = request.headers.get("x-api-key")
    if request.app[SETTINGS_KEY].key_ok(key):
        return None
    if not key:
        return error_response(
            401, "MISSING_API_KEY", "Missing API key: send it in the x-api-key header", None
        )
    return error_response(401, "INVALID_API_KEY", "Invalid API key", None)


def not_found(job_id: str) -> web.Response:
    return error_response(404, "JOB_NOT_FOUND", f"Job {job_id} not found", {"job_id": job_id})


_CODES: Final[dict[int, str]] = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def pulse_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unmatched paths and methods answer in Pulse's error shape rather than aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "HTTP_ERROR")
        return error_response(exc.status, code, exc.reason)
