"""``jobgate sandbox``: the four sandboxes on one port, each under its own prefix."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


async def test_sandbox_command_serves_every_provider(http_session: aiohttp.ClientSession) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "sandbox",
        "--port",
        str(port),
        "--speed",
        "500",
        "--faults",
        "0",
        "--seed",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                async with http_session.get(base + "/") as response:
                    index = await response.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the sandbox command never answered")
        assert set(index["sandboxes"]) == {"catchall", "extract", "pulse", "platform"}
        key = {"x-api-key": "any-key"}
        async with http_session.post(
            base + "/catchall/catchAll/submit", json={"query": "q"}, headers=key
        ) as response:
            assert response.status == 200
            assert "job_id" in await response.json()
        async with http_session.post(
            base + "/extract/v1/extract/async", json={"url": "https://example.com"}, headers=key
        ) as response:
            assert response.status == 200
            assert (await response.json())["jobId"].startswith("job_")
        async with http_session.post(
            base + "/pulse/extract",
            json={"fileUrl": "https://example.com/a.pdf", "async": True},
            headers=key,
        ) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "pending"
        async with http_session.get(
            base + "/platform/v1/api/jobs/job_missing", headers={"Authorization": "Bearer k"}
        ) as response:
            assert response.status == 404
            assert (await response.json())["error"]["name"] == "NotFoundError"
        async with http_session.get(base + "/catchall/catchAll/status/x") as response:
            assert response.status == 403
            assert await response.json() == {"detail": "Invalid API key"}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
