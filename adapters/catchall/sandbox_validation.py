"""FastAPI-shaped errors and request validation for the CatchAll sandbox.

Errors are ``{"detail": ...}`` bodies (the router's own 404/405 as well, via ``json_errors``);
invalid input gets 422 ``{"detail": [{type, loc, msg, input}]}``, as FastAPI and pydantic write
it. ``Checker`` collects the issues of one JSON object of a body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

import orjson
from aiohttp import web

from adapters.http import parse_time

_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    422: web.HTTPUnprocessableEntity,
    429: web.HTTPTooManyRequests,
    500: web.HTTPInternalServerError,
}


def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.HTTPException:
    return _ERRORS[status](
        text=orjson.dumps({"detail": detail}).decode(),
        content_type="application/json",
        headers=headers,
    )


def issue(kind: str, loc: Sequence[str | int], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's own 404/405 answer in FastAPI's ``{"detail": ...}`` shape too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=headers)


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise error(422, [issue("json_invalid", ["body", 0], "JSON decode error")]) from exc
    if body is None:
        raise error(422, [issue("missing", ["body"], "Field required")])
    if not isinstance(body, dict):
        raise error(
            422,
            [
                issue(
                    "model_attributes_type",
                    ["body"],
                    "Input should be a valid dictionary or object to extract fields from",
                    body,
                )
            ],
        )
    return body


def query_int(
    request: web.Request, name: str, default: int, low: int, high: int | None = None
) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    loc = ["query", name]
    try:
        value = int(raw)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise error(422, [issue("int_parsing", loc, msg, raw)]) from None
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        raise error(422, [issue("greater_than_equal", loc, msg, raw)])
    if high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        raise error(422, [issue("less_than_equal", loc, msg, raw)])
    return value


class Checker:
    """Collects FastAPI-style issues for one object of the body (``loc`` is where it sits)."""

    def __init__(
        self,
        body: dict[str, Any],
        loc: Sequence[str | int] = ("body",),
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        self.body = body
        self.loc = list(loc)
        self.issues: list[dict[str, Any]] = [] if issues is None else issues

    def fail(self, kind: str, where: Sequence[str | int], msg: str, value: Any) -> None:
        self.issues.append(issue(kind, [*self.loc, *where], msg, value))

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                self.fail("missing", [name], "Field required", self.body)
        elif not isinstance(value, str):
            self.fail("string_type", [name], "Input should be a valid string", value)
        elif required and not value.strip():
            self.fail("string_too_short", [name], "String should have at least 1 character", value)
        else:
            return value
        return None

    def integer(self, name: str, low: int) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail("int_type", [name], "Input should be a valid integer", value)
        elif value < low:
            msg = f"Input should be greater than or equal to {low}"
            self.fail("greater_than_equal", [name], msg, value)
        else:
            return value
        return None

    def moment(self, name: str) -> datetime | None:
        value = self.body.get(name)
        if value is None:
            return None
        parsed = parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            msg = "Input should be a valid datetime or date, invalid character in year"
            self.fail("datetime_from_date_parsing", [name], msg, value)
        return parsed

    def choice(self, name: str, options: Sequence[str], default: str | None) -> str | None:
        """One of ``options``; absent means ``default``, and is an issue when that is ``None``."""
        value = self.body.get(name, default)
        if value is None:
            self.fail("missing", [name], "Field required", self.body)
        elif value not in options:
            allowed = " or ".join(f"'{o}'" for o in options)
            self.fail("literal_error", [name], f"Input should be {allowed}", value)
        else:
            return str(value)
        return None

    def items(self, name: str, most: int | None = None) -> list[Any]:
        value = self.body.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail("list_type", [name], "Input should be a valid list", value)
            return []
        if most is not None and len(value) > most:
            msg = f"List should have at most {most} items after validation, not {len(value)}"
            self.fail("too_long", [name], msg, value)
        return value

    def strings(self, name: str, most: int | None = None) -> list[str]:
        value = self.items(name, most)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail("string_type", [name, i], "Input should be a valid string", item)
        return [item for item in value if isinstance(item, str)]

    def string_map(self, name: str) -> dict[str, str] | None:
        """An object of strings (headers, query params); ``None`` when absent or wrong."""
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail("dict_type", [name], "Input should be a valid dictionary", value)
            return None
        before = len(self.issues)
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail("string_type", [name, key], "Input should be a valid string", item)
        return dict(value) if len(self.issues) == before else None

    def schemas(self, name: str, types: Sequence[str], default: str | None) -> list[dict[str, Any]]:
        """A list of ``{name, description, type}``; ``type`` must be one of ``types``."""
        out: list[dict[str, Any]] = []
        for i, item in enumerate(self.items(name)):
            if not isinstance(item, dict):
                msg = "Input should be a valid dictionary or object to extract fields from"
                self.fail("model_attributes_type", [name, i], msg, item)
                continue
            before = len(self.issues)
            inner = Checker(item, [*self.loc, name, i], self.issues)
            inner.string("name", required=True)
            inner.string("description", required=True)
            kind = inner.choice("type", types, default)
            if len(self.issues) == before:
                out.append({**item, "type": kind})
        return out
