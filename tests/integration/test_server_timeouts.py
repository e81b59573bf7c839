"""Slow-loris: a connection that never sends a whole request head is closed by the server, before
its first request (``server.header_timeout_seconds``) and between requests
(``server.keepalive_timeout_seconds``); a request being answered, however long (a long-poll, an
SSE stream), is never cut by either.

The timeouts are configured short on purpose; each test waits for the server to close the socket
(EOF), bounded generously so that a server that never closes fails instead of hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

SHORT = 0.2
BOUND = 10.0
"""Seconds to wait for an EOF: far past SHORT, so only a server that never closes reaches it."""


async def connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert stack.server.port is not None
    return await asyncio.open_connection("127.0.0.1", stack.server.port)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    async with asyncio.timeout(BOUND):
        return await reader.read()


async def test_a_connection_that_sends_nothing_or_half_a_head_is_closed(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(server={"header_timeout_seconds": SHORT})
    idle_reader, idle_writer = await connect(stack)
    half_reader, half_writer = await connect(stack)
    half_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await half_writer.drain()
    try:
        assert await closed_by_server(idle_reader) == b""
        assert await closed_by_server(half_reader) == b""
    finally:
        idle_writer.close()
        half_writer.close()
    # The server is unharmed: a prompt client is served as usual.
    async with stack.client.get(f"{stack.url}/healthz") as response:
        assert response.status == 200


async def test_an_idle_or_stalled_keep_alive_connection_is_closed(make_stack: StackFactory) -> None:
    stack = await make_stack(server={"keepalive_timeout_seconds": SHORT})
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for follow_up in (b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        reader, writer = await connect(stack)
        try:
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(BOUND):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            writer.write(follow_up)
            await writer.drain()
            await closed_by_server(reader)  # the rest of the first answer, then EOF
        finally:
            writer.close()


async def test_a_long_poll_and_an_sse_stream_outlive_the_head_timeout(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        speed=0.01,  # the jobs do not change while the test runs
        server={
            "header_timeout_seconds": SHORT,
            "keepalive_timeout_seconds": SHORT,
            "sse_heartbeat_seconds": SHORT,
        },
    )
    job = await stack.submit("catchall", {"query": "q", "limit": 10})
    settled = await stack.job(job["id"], wait=5)  # its first poll's change, so it rests after
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as stream:
        assert stream.status == 200
        assert b"event: created" in await stream.content.readuntil(b"\n\n")
        poll = asyncio.create_task(stack.job(job["id"], wait=6 * SHORT))
        # One more connection, sending nothing: its EOF proves that the deadline has run well
        # past the stream and the long-poll, which were opened before it.
        idle_reader, idle_writer = await connect(stack)
        try:
            assert await closed_by_server(idle_reader) == b""
        finally:
            idle_writer.close()
        # Still open: the stream goes on to a heartbeat, and the long-poll answers in full.
        async with asyncio.timeout(BOUND):
            while await stream.content.readuntil(b"\n\n") != b": keep-alive\n\n":
                pass
        polled = await poll
    assert polled["id"] == settled["id"]


async def test_jobgate_serve_closes_an_idle_connection_and_stops_cleanly(tmp_path: Path) -> None:
    """The same under ``jobgate serve``, the timeout given the documented way (environment)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.db"}"\n[sandbox]\nembedded = false\n'
        '[providers.pulse]\nbase_url = "http://127.0.0.1:9/pulse"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "JOBGATE_PROVIDERS__PULSE__API_KEY": "k",
            "JOBGATE_SERVER__HEADER_TIMEOUT_SECONDS": str(SHORT),
        },
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            while b"jobgate: serving on" not in await process.stdout.readline():
                assert process.returncode is None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await closed_by_server(reader) == b""
        finally:
            writer.close()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output


async def test_a_body_that_dribbles_is_refused_and_its_connection_closed(
    make_stack: StackFactory,
) -> None:
    """A whole head and then a body that never completes: 408 naming the setting, then EOF."""
    stack = await make_stack(server={"body_timeout_seconds": SHORT})
    reader, writer = await connect(stack)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"provider": '
    )
    await writer.drain()
    try:
        answer = await closed_by_server(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"body_timeout" in body
    assert b"server.body_timeout_seconds" in body
    assert stack.upstream_jobs("catchall") == 0
