"""Fixtures shared by every test layer: real sockets on 127.0.0.1 and clients that clean up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.simulator import SandboxSettings

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an application on a free port of 127.0.0.1 and return its base URL."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
def fast_sandbox() -> SandboxSettings:
    """Sandbox settings fast enough for a whole job life in about a second, and deterministic."""
    return SandboxSettings(speed=1000.0, seed=7)
