"""Fixtures shared by every test layer: real sockets on 127.0.0.1 and clients that clean up."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.simulator import SandboxSettings

POSTGRES_DSN = os.environ.get(
    "JOBGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test server's DSN; every PostgreSQL test is skipped if nothing answers there (checked
    once per session: a skip raised by a session fixture is remembered)."""
    parts = urlsplit(POSTGRES_DSN)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        pytest.skip(f"no PostgreSQL server answers on {host}:{port}")
    return POSTGRES_DSN


@asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """A schema name no other test uses; the schema (created by the store) is dropped after."""
    name = f"t_{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    async with fresh_schema(postgres_dsn) as name:
        yield name


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
