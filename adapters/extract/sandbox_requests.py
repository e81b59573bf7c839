"""The request side of the extract sandbox: Boom error bodies and extract-body validation.

``boom`` renders an error in hapi's ``{statusCode, error, message}`` shape. ``parse_request``
checks an extract body the way the provider's Joi schema does and raises ``InvalidRequest``, which
renders as a 400 Boom body naming the field (``validation.keys``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from aiohttp import web

DEFAULT_MAX_PAGES: Final = 10
MAX_PAGES: Final = 20


# --------------------------------------------------------------------------------------------------
# Boom bodies


_REASONS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def boom(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An error in hapi's Boom shape: ``{statusCode, error, message}``."""
    body: dict[str, Any] = {
        "statusCode": status,
        "error": _REASONS.get(status, "Error"),
        "message": message,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


class InvalidRequest(Exception):
    """A request body that breaks a rule; rendered as a 400 Boom body naming the field."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

    def response(self) -> web.Response:
        if self.key is None:
            return boom(400, self.message)
        return boom(
            400, self.message, extra={"validation": {"source": "payload", "keys": [self.key]}}
        )


# --------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class ExtractRequest:
    url: str
    max_pages: int
    single_page: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    callback_url: str | None = None


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _patterns(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(key, f'"{key}" must be an array of strings')
    return tuple(value)


def parse_request(body: object) -> ExtractRequest:
    """Validate an extract body the way the provider's Joi schema does; raise ``InvalidRequest``."""
    if not isinstance(body, dict):
        raise InvalidRequest("value", '"value" must be of type object')
    url = body.get("url")
    if url is None:
        raise InvalidRequest("url", '"url" is required')
    if not isinstance(url, str) or not _is_http_url(url):
        raise InvalidRequest(
            "url", '"url" must be a valid uri with a scheme matching the http|https'
        )
    max_pages = body.get("maxPages", DEFAULT_MAX_PAGES)
    if isinstance(max_pages, bool) or not isinstance(max_pages, int):
        raise InvalidRequest("maxPages", '"maxPages" must be an integer')
    if max_pages < 1:
        raise InvalidRequest("maxPages", '"maxPages" must be greater than or equal to 1')
    if max_pages > MAX_PAGES:
        raise InvalidRequest("maxPages", f'"maxPages" must be less than or equal to {MAX_PAGES}')
    single_page = body.get("singlePage", False)
    if not isinstance(single_page, bool):
        raise InvalidRequest("singlePage", '"singlePage" must be a boolean')
    callback = body.get("callbackUrl")
    if callback is not None and (not isinstance(callback, str) or not _is_http_url(callback)):
        raise InvalidRequest(
            "callbackUrl", '"callbackUrl" must be a valid uri with a scheme matching the http|https'
        )
    return ExtractRequest(
        url=url,
        max_pages=max_pages,
        single_page=single_page,
        include_patterns=_patterns(body, "includePatterns"),
        exclude_patterns=_patterns(body, "excludePatterns"),
        callback_url=callback,
    )
