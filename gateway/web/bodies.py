"""Request bodies become Python values here and nowhere else, so one set of limits holds for every
route that takes a body, and no body, however hostile, reaches a handler as anything but a 4xx.

Depth is limited because a deep body that parses fine can still fail later, in the encoder that
forwards ``request`` upstream and stores it (orjson stops at about 250 levels): that was a 500
for 252-1020 levels. The limit is checked right after parsing, before any model or service sees
the value; orjson itself refuses 1024 levels and more, which is reported the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.web.problems import BadInput


def too_deep(max_depth: int) -> BadInput:
    return BadInput(
        "request_too_deep",
        f"the request body nests more than {max_depth} levels deep "
        f"(server.max_json_depth = {max_depth}; the body itself is level 1)",
        max_depth=max_depth,
    )


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests more than ``max_depth`` containers deep. Iterative, so it cannot
    hit the recursion limit it guards against, and it stops at the first path that is too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


def load_json(raw: bytes, max_depth: int) -> Any:
    """``raw`` as JSON, or a 400 that says why not. Duplicate keys keep the last value (as every
    common parser does); NaN, Infinity, numbers beyond a double and invalid UTF-8 are refused."""
    if not raw.strip():
        raise BadInput("invalid_json", "the request body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise too_deep(max_depth) from exc
        raise BadInput("invalid_json", f"the request body is not valid JSON: {exc}") from exc
    if isinstance(value, dict | list) and depth_exceeds(value, max_depth):
        raise too_deep(max_depth)
    return value


async def read_body(request: web.Request, max_depth: int, within: float) -> Any:
    """The body of ``request`` as JSON. A body that cannot be received whole (a bad chunked
    encoding, a Content-Encoding that does not decode) is the client's fault: 400, not 500; one
    that does not arrive ``within`` seconds (a slow-loris after the head) is 408, and its
    connection is closed."""
    try:
        async with asyncio.timeout(within):
            raw = await request.read()
    except TimeoutError as exc:
        request.content.set_exception(exc)  # the stream is mid-body: close after answering
        raise BadInput(
            "body_timeout",
            f"the request body did not arrive within {within:g} s (server.body_timeout_seconds)",
            status=408,
        ) from exc
    except web.RequestPayloadError as exc:
        raise BadInput(
            "invalid_body",
            "the request body could not be read: its chunked framing or Content-Encoding is broken",
        ) from exc
    return load_json(raw, max_depth)


async def close_after_a_broken_body(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` hook. A body that broke mid-stream leaves the connection at an
    unknown point of the byte stream, so no further request can be read from it: say so with
    ``Connection: close`` (a pooling client would otherwise send its next request into a closing
    socket), and mark the body ended, or aiohttp drains it once more after the answer and logs the
    client's broken encoding as an unhandled server exception."""
    if request.content.exception() is not None:
        # The hook runs after the headers are computed: set the header as well as the intent.
        response.force_close()
        response.headers["Connection"] = "close"
        request.content.feed_eof()
