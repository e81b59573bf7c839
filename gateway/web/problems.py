"""RFC 9457 problem+json: one renderer, and the middleware that turns every 4xx/5xx into it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from adapters.redact import Scrubber
from gateway.errors import ServiceError
from gateway.logs import secrets_of
from gateway.web.state import COMPONENTS_KEY

log = structlog.get_logger("jobgate.web")
PROBLEM_TYPE = "application/problem+json"
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadInput(ServiceError):
    """Input the handler could not parse: bad JSON, bad query parameters, unknown fields."""

    status = 400
    code = "invalid_json"
    title = "The request body is not valid JSON"

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code
        self.status = status
        self.title = _TITLES.get(code, "Bad request")


_TITLES = {
    "invalid_json": "The request body is not valid JSON",
    "validation_error": "The request does not match the schema",
    "invalid_query": "A query parameter is not valid",
    "body_too_large": "The request body is too large",
    "not_found": "No such resource",
    "method_not_allowed": "Method not allowed",
    "unsupported_media_type": "Unsupported media type",
    "invalid_header": "A request header is not valid",
    "invalid_body": "The request body could not be read",
    "request_too_deep": "The request body nests too deeply",
    "body_timeout": "The request body did not arrive in time",
}


def problem(
    request: web.Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"https://jobgate.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        **{k: v for k, v in extra.items() if v is not None},
    }
    # The last line: the adapters already masked what providers echoed, but every problem body
    # of every source leaves through here, so no configured secret leaves whatever quoted it.
    body = _scrubber(request).value(body)
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers
    )


def _scrubber(request: web.Request) -> Scrubber:
    """The configured secrets, read per problem (a rotated key file is masked at once); an app
    without components (a bare test app) masks credential patterns only."""
    components = request.config_dict.get(COMPONENTS_KEY)
    return Scrubber(secrets_of(components.settings) if components is not None else ())


def validation_problem(request: web.Request, error: ValidationError) -> web.Response:
    """Name every field that is wrong: unknown, missing, or of the wrong type."""
    errors = []
    phrases = []
    for item in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"]) or "(body)"
        kind = item["type"]
        if kind == "extra_forbidden":
            message = f"unknown field: {field}"
        elif kind == "missing":
            message = f"missing field: {field}"
        else:
            message = f"{field}: {item['msg']}"
        errors.append({"field": field, "type": kind, "message": message})
        phrases.append(message)
    return problem(
        request,
        status=422,
        code="validation_error",
        title=_TITLES["validation_error"],
        detail="; ".join(phrases),
        errors=errors,
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def problem_for(request: web.Request, error: Exception) -> web.StreamResponse | None:
    """The problem+json answer for ``error``, or ``None`` for one that is not a problem (not ours,
    or an HTTP exception below 400: a redirect)."""
    if isinstance(error, ValidationError):
        return validation_problem(request, error)
    if isinstance(error, ServiceError):
        headers = None
        retry_after = error.extra.get("retry_after")
        if isinstance(retry_after, int | float):
            headers = {"Retry-After": str(max(1, round(retry_after)))}
        if error.extra.get("replayed") is True:
            headers = {**(headers or {}), "Idempotent-Replayed": "true"}
        if error.headers:
            headers = {**(headers or {}), **error.headers}
        return problem(
            request,
            status=error.status,
            code=error.code,
            title=error.title,
            detail=error.message,
            headers=headers,
            **error.extra,
        )
    if isinstance(error, web.HTTPException) and error.status >= 400:
        exc = error
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        detail = exc.text or exc.reason
        if exc.status == 413:
            detail = f"the request body exceeds the limit of {request.app[MAX_BODY_KEY]} bytes"
        elif exc.status == 404:
            detail = f"no route for {request.method} {request.path}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            detail = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        return problem(
            request,
            status=exc.status,
            code=code,
            title=_TITLES.get(code, exc.reason),
            detail=detail,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"} or None,
        )
    return None


PROBLEMS = (ValidationError, ServiceError, web.HTTPException)
"""What :func:`problem_for` may turn into an answer."""


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PROBLEMS as error:
        answer = problem_for(request, error)
        if answer is None:
            raise
        return answer
