"""Gateways sharing one PostgreSQL database, in this process, over real HTTP.

What replicas need from each other: a change written by one reaches the waiters and streams of
another (LISTEN/NOTIFY and the feed), and a replica that stops cleanly hands its claimed jobs to
the others at once, not after the lease. The process-level picture (SIGKILL, three replicas, the
provider's rate) is ``test_replicas.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import gateway_settings

pytestmark = pytest.mark.usefixtures("postgres_dsn")

STATUS = re.compile(r"^/pulse/job/(?P<id>[^/]+)$")


@dataclass
class Hold:
    """Holds pulse status calls while ``holding`` is set, and records every one that arrives."""

    holding: bool = True
    calls: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        match = STATUS.match(request.path)
        if match and request.method == "GET":
            self.calls.append(match["id"])
            self.arrived.set()
            if self.holding:
                await self.released.wait()
        return await handler(request)


Gateway = Callable[..., Awaitable[tuple[str, TestServer]]]


@pytest.fixture
async def sandbox(serve: Serve) -> tuple[str, Hold]:
    hold = Hold(holding=False)
    app = create_sandbox_app(SandboxSettings(speed=400.0, seed=3))
    app.middlewares.append(hold.middleware)
    return await serve(app), hold


@pytest.fixture
async def gateway(
    sandbox: tuple[str, Hold], postgres_dsn: str, pg_schema: str, tmp_path: Any
) -> AsyncIterator[Gateway]:
    servers: list[TestServer] = []

    async def start(**runner: Any) -> tuple[str, TestServer]:
        settings = gateway_settings(
            sandbox[0],
            tmp_path / "unused.db",
            store={"kind": "postgres", "dsn": postgres_dsn, "schema": pg_schema},
            runner=runner,
        )
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), server

    yield start
    for server in reversed(servers):
        await server.close()


async def submit(client: aiohttp.ClientSession, url: str, request: dict[str, Any]) -> str:
    async with client.post(
        f"{url}/v1/jobs", json={"provider": "pulse", "request": request}
    ) as response:
        assert response.status == 201, await response.text()
        job_id: str = (await response.json())["id"]
        return job_id


async def until_finished(client: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    for _ in range(60):
        async with client.get(f"{url}/v1/jobs/{job_id}?wait=1") as response:
            job: dict[str, Any] = await response.json()
        if job["state"] in ("succeeded", "failed", "canceled", "expired"):
            return job
    raise AssertionError(f"{job_id} did not finish: {job}")


async def test_a_job_submitted_on_one_gateway_is_followed_on_another(
    gateway: Gateway, http_session: aiohttp.ClientSession
) -> None:
    polling, _ = await gateway()
    reading, _ = await gateway(enabled=False)  # only the first one polls
    job_id = await submit(http_session, polling, {"fileUrl": "https://example.com/a.pdf"})
    # The reader's SSE stream sees the other gateway's writes, through NOTIFY and its feed.
    kinds: list[str] = []
    async with http_session.get(f"{reading}/v1/jobs/{job_id}/events") as stream:
        assert stream.status == 200
        async with asyncio.timeout(30):
            async for line in stream.content:
                text = line.decode().strip()
                if text.startswith("event: "):
                    kinds.append(text.removeprefix("event: "))
                if text == "event: end":
                    break
    assert kinds[0] == "created"
    assert "state" in kinds
    assert kinds[-1] == "end"
    # A long poll on the reader answers with the finished job that the other one wrote.
    assert (await until_finished(http_session, reading, job_id))["state"] == "succeeded"


async def test_a_clean_stop_hands_its_leases_to_the_other_gateway(
    gateway: Gateway, sandbox: tuple[str, Hold], http_session: aiohttp.ClientSession
) -> None:
    _, hold = sandbox
    first, first_server = await gateway()  # the default lease: 120 s
    hold.holding = True
    job_id = await submit(http_session, first, {"fileUrl": "https://example.com/b.pdf"})
    async with asyncio.timeout(30):
        await hold.arrived.wait()  # the first gateway's poll is in flight, its lease taken
    assert len(hold.calls) == 1
    second, _ = await gateway()
    hold.holding = False
    hold.arrived.clear()
    await first_server.close()  # a clean stop: the poll is interrupted and its lease handed back
    # Had the lease not come back, nobody could poll the job for 120 s: the second gateway
    # polls it now, woken by the hand-back's notification.
    async with asyncio.timeout(20):
        await hold.arrived.wait()
    assert len(hold.calls) >= 2
    hold.released.set()
    assert (await until_finished(http_session, second, job_id))["state"] == "succeeded"


async def test_a_copy_captured_by_one_gateway_is_served_by_another(
    gateway: Gateway, serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    # The two gateways share the vault's directory, as replicas share a ReadWriteMany volume.
    capturing, _ = await gateway()
    reading, _ = await gateway(enabled=False)  # no runner: it never captures anything itself
    job_id = await submit(
        http_session,
        capturing,
        {"fileUrl": "https://example.com/shared.pdf?sandbox=large&sandbox_pointer=proxy"},
    )
    # A read on the other gateway while the single-use pointer is being captured waits for the
    # copy (it cannot follow a stream in another process) and gets it.
    async with http_session.get(f"{reading}/v1/jobs/{job_id}/result?wait=30") as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Jobgate-Result-Source"] == "jobgate"
        first = await response.read()
    async with http_session.get(f"{reading}/v1/jobs/{job_id}") as response:
        job = await response.json()
    assert job["result"]["stored"] is True
    assert hashlib.sha256(first).hexdigest() == job["result"]["sha256"]
    for url in (capturing, reading):
        async with http_session.get(f"{url}/v1/jobs/{job_id}/result") as response:
            assert response.status == 200
            assert response.headers["ETag"] == f'"{job["result"]["sha256"]}"'
            assert await response.read() == first


async def test_a_gateway_never_serves_a_cached_job_another_one_changed(
    gateway: Gateway, http_session: aiohttp.ClientSession
) -> None:
    writing, _ = await gateway(enabled=False)
    reading, server = await gateway(enabled=False)  # nobody polls: only the writes below change it
    snapshots = server.app[COMPONENTS_KEY].require_service().snapshots
    job_id = await submit(http_session, writing, {"fileUrl": "https://example.com/a.pdf"})

    async def read(url: str) -> tuple[int, dict[str, Any]]:
        async with http_session.get(f"{url}/v1/jobs/{job_id}") as response:
            return response.status, await response.json()

    # The reader holds it once a read is not overtaken by the notices of the submit's own writes.
    for _ in range(20):
        _, seen = await read(reading)
        if snapshots.get(job_id) is not None:
            break
    assert snapshots.get(job_id) is not None
    # A write on the other gateway (a cancel asks for a poll now): its NOTIFY drops the copy.
    async with http_session.post(f"{writing}/v1/jobs/{job_id}/cancel") as response:
        assert response.status == 202, await response.text()
        changed = (await response.json())["version"]
    assert changed > seen["version"]
    await dropped(server, job_id)
    status, body = await read(reading)
    assert (status, body["version"]) == (200, changed)
    async with http_session.delete(f"{writing}/v1/jobs/{job_id}") as response:
        assert response.status == 204
    await dropped(server, job_id)
    status, body = await read(reading)
    assert status == 404, body


async def dropped(server: TestServer, job_id: str) -> None:
    """Until the gateway has heard the other's NOTIFY and dropped its copy of the job."""
    heard = asyncio.Event()
    # After the app's own subscriber, which drops the copy: when this one is told, it is gone.
    server.app[COMPONENTS_KEY].require_store().subscribe_jobs(lambda job_ids: heard.set())
    snapshots = server.app[COMPONENTS_KEY].require_service().snapshots
    async with asyncio.timeout(10):
        while snapshots.get(job_id) is not None:
            await heard.wait()
            heard.clear()


async def test_what_one_replica_learns_of_durations_the_other_schedules_by(
    gateway: Gateway, http_session: aiohttp.ClientSession
) -> None:
    learning_url, learning = await gateway()
    _, other = await gateway(enabled=False)  # polls nothing: all it knows comes from the store
    jobs = [
        await submit(http_session, learning_url, {"fileUrl": f"https://example.com/{n}.pdf"})
        for n in range(3)
    ]
    for job_id in jobs:
        await until_finished(http_session, learning_url, job_id)
    teacher = learning.app[COMPONENTS_KEY].runner
    pupil = other.app[COMPONENTS_KEY].runner
    assert teacher is not None
    assert pupil is not None
    assert teacher.cadence.sketch("pulse/").observed == 3
    assert pupil.cadence.sketch("pulse/").observed == 0
    # The learner's flush (every few seconds, run here at once) merges into PostgreSQL; the other
    # replica's next read sees the same sketch.
    await teacher.cadence.flush()
    await pupil.cadence.load()
    assert pupil.cadence.sketch("pulse/") == teacher.cadence.sketch("pulse/")
