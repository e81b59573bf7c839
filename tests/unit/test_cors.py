"""CORS on a tiny app: the policy, the preflight answer, and the headers on each response."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.web.cors import ALLOW_HEADERS, EXPOSE_HEADERS, CorsPolicy, setup_cors
from gateway.web.problems import MAX_BODY_KEY, problem_middleware

ORIGIN = "https://app.example.com"
Client = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


async def plain(request: web.Request) -> web.Response:
    return web.json_response({"ok": True}, headers={"Vary": "Accept-Encoding"})


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b": hello\n\n")
    await response.write_eof()
    return response


def make_app(origins: list[str]) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    app[MAX_BODY_KEY] = 1024
    app.router.add_get("/plain", plain)
    app.router.add_post("/plain", plain)
    app.router.add_get("/stream", streamed)
    setup_cors(app, origins)
    return app


@pytest.fixture
async def client() -> AsyncIterator[Callable[[list[str]], Awaitable[Client]]]:
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def build(origins: list[str]) -> Client:
        server = TestServer(make_app(origins), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        base = str(server.make_url("")).rstrip("/")

        async def call(
            method: str, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
            async with session.request(method, base + path, headers=headers) as response:
                return response.status, dict(response.headers), await response.read()

        return call

    yield build
    await session.close()
    for server in servers:
        await server.close()


def cors_headers(headers: dict[str, str]) -> set[str]:
    return {name.lower() for name in headers if name.lower().startswith("access-control-")}


def test_policy_matches_exactly() -> None:
    policy = CorsPolicy([ORIGIN, " https://other.example.com/ "])
    assert policy.allowed(ORIGIN) == ORIGIN
    assert policy.allowed("https://other.example.com") == "https://other.example.com"
    assert policy.allowed("http://app.example.com") is None
    assert policy.allowed("https://app.example.com:8443") is None
    assert policy.allowed("https://evil.app.example.com") is None
    assert policy.allowed(None) is None
    assert policy.allowed("") is None
    assert CorsPolicy(["*"]).allowed("https://anything.test") == "*"


PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


async def test_preflight_is_answered_before_routing(
    client: Callable[[list[str]], Awaitable[Client]],
) -> None:
    call = await client([ORIGIN])
    status, headers, body = await call("OPTIONS", "/plain", PREFLIGHT)
    assert status == 204
    assert body == b""
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == ", ".join(ALLOW_HEADERS)
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in headers["Vary"]

    # A path that does not exist is still a 404, and an OPTIONS that is no preflight a 405.
    status, headers, _ = await call("OPTIONS", "/nope", PREFLIGHT)
    assert status == 404
    status, headers, _ = await call("OPTIONS", "/plain", {"Origin": ORIGIN})
    assert status == 405
    assert headers["Access-Control-Allow-Origin"] == ORIGIN  # a response like any other


async def test_allowed_origin_gets_headers_on_every_response(
    client: Callable[[list[str]], Awaitable[Client]],
) -> None:
    call = await client([ORIGIN])
    for path, status in (("/plain", 200), ("/stream", 200), ("/nope", 404)):
        got, headers, _ = await call("GET", path, {"Origin": ORIGIN})
        assert got == status
        assert headers["Access-Control-Allow-Origin"] == ORIGIN, path
        assert headers["Access-Control-Expose-Headers"] == ", ".join(EXPOSE_HEADERS)
        assert "Origin" in [part.strip() for part in headers["Vary"].split(",")], path
    _, headers, _ = await call("GET", "/plain", {"Origin": ORIGIN})
    assert headers["Vary"] == "Accept-Encoding, Origin"


async def test_other_origins_and_no_origin_get_nothing(
    client: Callable[[list[str]], Awaitable[Client]],
) -> None:
    call = await client([ORIGIN])
    for headers in ({"Origin": "https://evil.example.com"}, {}):
        status, answer, _ = await call("GET", "/plain", headers)
        assert status == 200
        assert cors_headers(answer) == set()
    status, answer, body = await call(
        "OPTIONS", "/plain", {**PREFLIGHT, "Origin": "https://x.test"}
    )
    assert status == 403
    assert b"cors_origin_not_allowed" in body
    assert cors_headers(answer) == set()


async def test_wildcard_and_unconfigured(
    client: Callable[[list[str]], Awaitable[Client]],
) -> None:
    call = await client(["*"])
    status, headers, _ = await call("OPTIONS", "/plain", PREFLIGHT)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    _, headers, _ = await call("GET", "/stream", {"Origin": "https://any.test"})
    assert headers["Access-Control-Allow-Origin"] == "*"

    call = await client([])
    status, headers, _ = await call("OPTIONS", "/plain", PREFLIGHT)
    assert status == 405
    assert cors_headers(headers) == set()
