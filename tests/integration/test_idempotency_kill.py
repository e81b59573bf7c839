"""A keyed submit whose gateway is SIGKILLed mid-call, made deterministic at process level.

The sandbox runs in this process behind a middleware that holds one submit: either after the
provider made the job (its answer waits) or before the provider read the request (it is then
dropped). The gateway is a ``jobgate serve`` subprocess on a SQLite file. While the hold is on, the
gateway is killed with SIGKILL, the hold is released into a dead socket, and the gateway starts
again on the same file. A retry with the same Idempotency-Key must then find the outcome: the lost
catchall job adopted (exactly one upstream job, tracked to its end), a pulse call answered 409
``idempotency_outcome_unknown`` (pulse cannot list its jobs), a catchall call that never reached
the provider submitted once. Never 409 ``idempotency_key_in_flight``: SQLite's file has one
process, so the dead holder's lease ends when the new process opens it.

The restarted gateway also settles such keys by itself (its sweep of abandoned keys), but only a
quarter of a lease after start-up, so the tests' retry, sent at once, reaches the key first. Two
tests at the end shorten the lease to meet the sweep: with no retry at all, the lost catchall job
is tracked by the sweep; a retry that lands while the sweep is asking the provider is an expected
failure (it is sent away for a whole lease).

The in-process version, which writes the rows a crash leaves, is ``test_idempotency_recovery.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.catchall import sandbox as catchall_sandbox
from adapters.pulse import sandbox as pulse_sandbox
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY
from tests.integration.replica_harness import Replica, launch, stop_replicas, to_toml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_KEY = "kill-test-key"
SPEED = 400.0
"""A catchall job lives about 1.8 s, so the adopted one can be followed to its end."""
WITHIN = 30.0
"""The bound on every wait: a start, a hold reached, a process reaped, a log line, a request."""
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})
SUBMIT_PATHS = {"catchall": "/catchall/catchAll/submit", "pulse": "/pulse/extract"}
"""Where each adapter's submit lands on the combined sandbox (prefix + the adapter's path)."""
REQUESTS: dict[str, dict[str, Any]] = {
    "catchall": {"query": "kill test: series A rounds in robotics"},
    "pulse": {"fileUrl": "https://example.com/kill-test.pdf"},
}


@dataclass
class Hold:
    """A sandbox middleware that holds the first submit to ``path`` until ``release``.

    ``before``: held before the handler runs, then dropped (the provider never read it: a kill
    that landed before the request arrived). Otherwise the handler runs first, so the provider has
    made the job, and the answer is held (a kill that landed while the answer was on its way).
    ``reached`` is set at that point, so the test kills exactly there, never on a timer.
    """

    path: str
    before: bool
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    posts: int = 0
    """Submits that reached the sandbox."""
    handled: int = 0
    """Submits the provider itself ran."""

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != self.path:
            return await handler(request)
        self.posts += 1
        if self.posts > 1:
            self.handled += 1
            return await handler(request)
        if self.before:
            self.reached.set()
            await self.release.wait()
            return web.json_response({"detail": "dropped by the test"}, status=503)
        response = await handler(request)
        self.handled += 1
        self.reached.set()
        await self.release.wait()
        return response


@dataclass
class ListHold:
    """Holds the catchall job list (the sweep's reconcile call) once ``armed``."""

    armed: bool = False
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.armed and request.path == "/catchall/catchAll/jobs/user":
            self.reached.set()
            await self.release.wait()
        return await handler(request)


@dataclass
class World:
    sandbox: web.Application
    sandbox_url: str
    config: Path
    env: dict[str, str]
    session: aiohttp.ClientSession
    started: list[Replica]

    async def start(self, name: str) -> Replica:
        return await launch(
            self.session, self.started, name, self.config, self.env, API_KEY, within=WITHIN
        )

    def upstream_ids(self, provider: str) -> set[str]:
        subapp = self.sandbox[SUBAPPS_KEY][provider]
        if provider == "catchall":
            return set(subapp[catchall_sandbox.JOBS_KEY].jobs)
        return set(subapp[pulse_sandbox.JOBS_KEY].jobs)


def sqlite_config(sandbox_url: str, db: Path, *, key_lease: float | None = None) -> str:
    """The gateway on ``db`` with every provider at the in-process sandbox; keys come from the
    environment. The key lease keeps its default (120 s) unless ``key_lease`` says otherwise: a
    retry that had to wait it out would show as a 409 in flight, which these tests rule out."""
    store: dict[str, Any] = {"kind": "sqlite", "path": str(db)}
    if key_lease is not None:
        store["idempotency_lease_seconds"] = key_lease
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1"},
        "store": store,
        "runner": {"tick_ms": 20},
        "sandbox": {"embedded": False},
        "log": {"format": "json", "level": "INFO"},
        "auth": {"required": False},  # open on loopback: this is about crashes, not keys
    }
    for name, spec in sorted(PROVIDERS.items()):
        tables[f"providers.{name}"] = {
            "base_url": sandbox_url + spec.prefix,
            "total_timeout": 5.0,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
        }
        tables[f"providers.{name}.policy"] = dict(FAST_POLICY)
    return to_toml(tables)


def gateway_env() -> dict[str, str]:
    """This environment without any ``JOBGATE_`` variable of its own, plus the providers' key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    for name in PROVIDERS:
        env[f"JOBGATE_PROVIDERS__{name.upper()}__API_KEY"] = API_KEY
    return env


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[WorldFactory]:
    """A sandbox with ``holds`` in front; every gateway started is stopped and reaped, and every
    hold released (a held handler would keep the sandbox's server from closing)."""
    started: list[Replica] = []
    every: list[Hold | ListHold] = []

    async def build(*holds: Hold | ListHold, key_lease: float | None = None) -> World:
        every.extend(holds)
        sandbox = create_sandbox_app(SandboxSettings(speed=SPEED, seed=13))
        sandbox.middlewares.extend(hold.middleware for hold in holds)
        sandbox_url = await serve(sandbox)
        config = tmp_path / "gateway.toml"
        db = tmp_path / "jobs.db"
        config.write_text(sqlite_config(sandbox_url, db, key_lease=key_lease))
        return World(sandbox, sandbox_url, config, gateway_env(), http_session, started)

    try:
        yield build
    finally:
        for hold in every:
            hold.release.set()
        await stop_replicas(started)


# -- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    retry_after: str | None

    @property
    def code(self) -> object:
        return self.body.get("code")

    def __str__(self) -> str:
        return f"{self.status} {self.code} (Retry-After: {self.retry_after}) {self.body}"


async def post_job(world: World, gateway: Replica, body: dict[str, Any], key: str) -> Reply:
    async with world.session.post(
        f"{gateway.url}/v1/jobs",
        json=body,
        headers={"Idempotency-Key": key},
        timeout=aiohttp.ClientTimeout(total=WITHIN),
    ) as response:
        answer: dict[str, Any] = await response.json(content_type=None)
        return Reply(response.status, answer, response.headers.get("Retry-After"))


async def kill_mid_submit(world: World, hold: Hold, body: dict[str, Any], key: str) -> None:
    """Submit with ``key``, SIGKILL the gateway once the hold is reached, reap it, release."""
    gateway = await world.start("first")
    submit = asyncio.create_task(post_job(world, gateway, body, key))
    try:
        async with asyncio.timeout(WITHIN):
            await hold.reached.wait()
    except TimeoutError:
        submit.cancel()
        raise AssertionError(f"the submit never reached the sandbox:\n{gateway.tail()}") from None
    gateway.kill()
    await asyncio.wait_for(asyncio.to_thread(gateway.process.wait), WITHIN)
    # The client saw the connection drop: the gateway died without answering.
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(submit, WITHIN)
    hold.release.set()


async def restart(world: World) -> Replica:
    """The gateway again on the same file. Its sweep of abandoned keys first runs a quarter of
    a lease after start-up (30 s by default), so the retry that follows reaches the key first."""
    return await world.start("second")


async def until_finished(world: World, gateway: Replica, job_id: str) -> dict[str, Any]:
    """Long-poll the job until it ends; bounded by ``WITHIN`` waits of at most 1 s."""
    job: dict[str, Any] = {}
    for _ in range(int(WITHIN)):
        async with world.session.get(
            f"{gateway.url}/v1/jobs/{job_id}?wait=1", timeout=aiohttp.ClientTimeout(total=WITHIN)
        ) as response:
            assert response.status == 200, await response.text()
            job = await response.json()
        if job["state"] in FINISHED:
            return job
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def tracked(world: World, gateway: Replica, provider: str) -> list[dict[str, Any]]:
    async with world.session.get(
        f"{gateway.url}/v1/jobs?provider={provider}&limit=500",
        timeout=aiohttp.ClientTimeout(total=WITHIN),
    ) as response:
        assert response.status == 200, await response.text()
        jobs: list[dict[str, Any]] = (await response.json())["jobs"]
        return jobs


# -- the answer was lost: the provider made the job --------------------------------------------


async def test_a_lost_catchall_answer_is_adopted_on_retry(make_world: WorldFactory) -> None:
    hold = Hold(SUBMIT_PATHS["catchall"], before=False)
    world = await make_world(hold)
    body = {"provider": "catchall", "request": REQUESTS["catchall"]}
    await kill_mid_submit(world, hold, body, "kill-catchall-after")
    made = world.upstream_ids("catchall")
    assert len(made) == 1, made

    gateway = await restart(world)
    reply = await post_job(world, gateway, body, "kill-catchall-after")
    assert reply.status == 201, f"{reply}\n{gateway.tail()}"
    assert {reply.body["upstream_id"]} == made
    assert world.upstream_ids("catchall") == made
    assert hold.handled == 1, "the provider was asked to submit again"

    again = await post_job(world, gateway, body, "kill-catchall-after")
    assert (again.status, again.body.get("id")) == (201, reply.body["id"]), str(again)
    listed = await tracked(world, gateway, "catchall")
    assert [(job["id"], job["upstream_id"]) for job in listed] == [
        (reply.body["id"], reply.body["upstream_id"])
    ]
    finished = await until_finished(world, gateway, reply.body["id"])
    assert finished["state"] == "succeeded", finished
    assert finished["upstream_id"] in made


async def test_a_lost_pulse_answer_is_outcome_unknown(make_world: WorldFactory) -> None:
    hold = Hold(SUBMIT_PATHS["pulse"], before=False)
    world = await make_world(hold)
    body = {"provider": "pulse", "request": REQUESTS["pulse"]}
    await kill_mid_submit(world, hold, body, "kill-pulse-after")
    made = world.upstream_ids("pulse")
    assert len(made) == 1, made

    gateway = await restart(world)
    reply = await post_job(world, gateway, body, "kill-pulse-after")
    assert (reply.status, reply.code) == (409, "idempotency_outcome_unknown"), (
        f"{reply}\n{gateway.tail()}"
    )
    again = await post_job(world, gateway, body, "kill-pulse-after")
    assert (again.status, again.code) == (409, "idempotency_outcome_unknown"), str(again)
    assert again.body.get("detail") == reply.body.get("detail")
    assert world.upstream_ids("pulse") == made, "a retry submitted a second pulse job"
    assert hold.handled == 1
    assert await tracked(world, gateway, "pulse") == []

    # What the answer tells the client to do: adopt the job it finds upstream, with a new key.
    (upstream_id,) = made
    adopt = {"provider": "pulse", "upstream_id": upstream_id}
    adopted = await post_job(world, gateway, adopt, "kill-pulse-adopt")
    assert (adopted.status, adopted.body.get("upstream_id")) == (201, upstream_id), str(adopted)
    assert world.upstream_ids("pulse") == made


# -- the kill came before the provider read the request ----------------------------------------


async def test_a_catchall_submit_that_never_arrived_runs_once_on_retry(
    make_world: WorldFactory,
) -> None:
    hold = Hold(SUBMIT_PATHS["catchall"], before=True)
    world = await make_world(hold)
    body = {"provider": "catchall", "request": REQUESTS["catchall"]}
    await kill_mid_submit(world, hold, body, "kill-catchall-before")
    assert world.upstream_ids("catchall") == set()

    gateway = await restart(world)
    reply = await post_job(world, gateway, body, "kill-catchall-before")
    assert reply.status == 201, f"{reply}\n{gateway.tail()}"
    made = world.upstream_ids("catchall")
    assert made == {reply.body["upstream_id"]}
    assert (hold.posts, hold.handled) == (2, 1)

    again = await post_job(world, gateway, body, "kill-catchall-before")
    assert (again.status, again.body.get("id")) == (201, reply.body["id"]), str(again)
    assert world.upstream_ids("catchall") == made
    finished = await until_finished(world, gateway, reply.body["id"])
    assert finished["state"] == "succeeded", finished


async def test_a_pulse_submit_that_never_arrived_is_outcome_unknown(
    make_world: WorldFactory,
) -> None:
    """The gateway records "calling" before it sends, and pulse cannot be asked afterwards, so
    a kill that landed before the request arrived looks the same as one after: the client is
    told the outcome is unknown, and no pulse job is made behind its back."""
    hold = Hold(SUBMIT_PATHS["pulse"], before=True)
    world = await make_world(hold)
    body = {"provider": "pulse", "request": REQUESTS["pulse"]}
    await kill_mid_submit(world, hold, body, "kill-pulse-before")

    gateway = await restart(world)
    reply = await post_job(world, gateway, body, "kill-pulse-before")
    assert (reply.status, reply.code) == (409, "idempotency_outcome_unknown"), (
        f"{reply}\n{gateway.tail()}"
    )
    again = await post_job(world, gateway, body, "kill-pulse-before")
    assert (again.status, again.code) == (409, "idempotency_outcome_unknown"), str(again)
    assert world.upstream_ids("pulse") == set()
    assert (hold.posts, hold.handled) == (1, 0)
    assert await tracked(world, gateway, "pulse") == []


# -- nobody retries: the gateway's own sweep of abandoned keys --------------------------------

SWEEP_LEASE = 8.0
"""A key lease short enough that the sweep (every quarter of a lease) runs within the test; it
still exceeds the providers' total_timeout (5 s), as the settings require."""


async def test_a_lost_catchall_answer_is_tracked_by_the_sweep_without_a_retry(
    make_world: WorldFactory,
) -> None:
    hold = Hold(SUBMIT_PATHS["catchall"], before=False)
    world = await make_world(hold, key_lease=SWEEP_LEASE)
    body = {"provider": "catchall", "request": REQUESTS["catchall"]}
    await kill_mid_submit(world, hold, body, "kill-catchall-sweep")
    made = world.upstream_ids("catchall")
    assert len(made) == 1, made

    gateway = await restart(world)
    listed: list[dict[str, Any]] = []
    deadline = time.monotonic() + WITHIN
    while not listed and time.monotonic() < deadline:
        listed = await tracked(world, gateway, "catchall")
        if not listed:
            await asyncio.sleep(0.1)
    assert [job["upstream_id"] for job in listed] == list(made), gateway.tail()
    assert hold.handled == 1

    # The client that comes back late reads the job the sweep made for its key.
    reply = await post_job(world, gateway, body, "kill-catchall-sweep")
    assert (reply.status, reply.body.get("id")) == (201, listed[0]["id"]), str(reply)
    assert world.upstream_ids("catchall") == made


async def test_a_retry_during_the_sweep_is_not_sent_away_for_a_lease(
    make_world: WorldFactory,
) -> None:
    hold = Hold(SUBMIT_PATHS["catchall"], before=False)
    listing = ListHold()
    world = await make_world(hold, listing, key_lease=SWEEP_LEASE)
    body = {"provider": "catchall", "request": REQUESTS["catchall"]}
    await kill_mid_submit(world, hold, body, "kill-catchall-meets-sweep")
    listing.armed = True
    gateway = await restart(world)
    try:
        async with asyncio.timeout(WITHIN):
            await listing.reached.wait()
        reply = await post_job(world, gateway, body, "kill-catchall-meets-sweep")
    finally:
        listing.release.set()
    # The sweep's one call is bounded by the provider's total_timeout (5 s): a retry should not
    # be sent away for longer than that (or at all, if it waited for the sweep's answer).
    if (reply.status, reply.code) == (409, "idempotency_key_in_flight"):
        assert reply.retry_after is not None
        assert float(reply.retry_after) <= 5.0, str(reply)
    else:
        assert reply.status == 201, str(reply)
