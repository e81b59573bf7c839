"""Keyed submits recover from every point a crash can leave them at (real gateway, real sandbox).

A crashed holder leaves its key in the phase it reached; these tests write exactly that row (as
the dead process would have) and then retry through HTTP. The process-level version (SIGKILL while
the provider holds its answer) is ``test_idempotency_kill.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.catchall import sandbox as catchall_sandbox
from adapters.platform import sandbox as platform_sandbox
from adapters.pulse import sandbox as pulse_sandbox
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.service import fingerprint
from gateway.store.base import ClaimedIdempotency, IdempotencyPhase, JobFilter, JobStore
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve, fresh_schema
from tests.integration.conftest import Stack, StackFactory
from tests.support import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY = "acquisitions in fintech"


@dataclass
class Gate:
    """A sandbox middleware that breaks chosen calls: ``before`` answers 503 without running the
    handler (the provider did nothing); ``after`` runs it and then answers 503 (the provider did
    the work and the answer was lost)."""

    before: dict[tuple[str, str], int] = field(default_factory=dict)
    after: dict[tuple[str, str], int] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = (request.method, request.path)
        self.seen.append(call)
        if self.before.get(call, 0) > 0:
            self.before[call] -= 1
            return web.json_response({"detail": "unavailable"}, status=503)
        response = await handler(request)
        if self.after.get(call, 0) > 0:
            self.after[call] -= 1
            return web.json_response({"detail": "lost"}, status=503)
        return response

    def count(self, method: str, path: str) -> int:
        return self.seen.count((method, path))


@pytest.fixture(params=["sqlite", "postgres"])
async def store_options(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The recovery logic is the service's; each store keeps its recovery points its own way."""
    if request.param == "sqlite":
        yield {}
        return
    dsn = request.getfixturevalue("postgres_dsn")
    async with fresh_schema(dsn) as schema:
        yield {"store": {"kind": "postgres", "dsn": dsn, "schema": schema}}


async def gated_stack(
    make_stack: StackFactory, serve: Serve, store_options: dict[str, Any]
) -> tuple[Stack, Gate]:
    gate = Gate()
    app = create_sandbox_app(SandboxSettings(speed=400.0, seed=3))
    app.middlewares.append(gate.middleware)
    url = await serve(app)
    return await make_stack(sandbox=(app, url), **store_options), gate


def store_of(stack: Stack) -> JobStore:
    return stack.app[COMPONENTS_KEY].require_store()


def catchall_ids(stack: Stack) -> set[str]:
    return set(stack.sandbox[SUBAPPS_KEY]["catchall"][catchall_sandbox.JOBS_KEY].jobs)


def pulse_ids(stack: Stack) -> set[str]:
    return set(stack.sandbox[SUBAPPS_KEY]["pulse"][pulse_sandbox.JOBS_KEY].jobs)


def submit_body(provider: str, request: dict[str, Any]) -> dict[str, Any]:
    return {"provider": provider, "request": request}


async def post(stack: Stack, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any], Any]:
    async with stack.client.post(
        f"{stack.url}/v1/jobs", json=body, headers={"Idempotency-Key": key}
    ) as response:
        return response.status, await response.json(), response.headers


async def left_by_a_crash(
    stack: Stack,
    key: str,
    body: dict[str, Any],
    phase: IdempotencyPhase,
    *,
    upstream_id: str | None = None,
) -> ClaimedIdempotency:
    """The key row a process killed in ``phase`` leaves behind, its lease already over."""
    store = store_of(stack)
    now = datetime.now(UTC)
    full = {
        "provider": body["provider"],
        "request": body.get("request"),
        "upstream_id": body.get("upstream_id"),
        "labels": {},
        "callback_url": None,
    }
    claim = await store.claim_idempotency(
        f"default:{key}",
        fingerprint(full),
        now - timedelta(minutes=5),
        lease_until=now - timedelta(minutes=4),
        job_id="job_crashed_" + key,
        token="dead",
        command=full,
    )
    assert isinstance(claim, ClaimedIdempotency)
    if phase is not IdempotencyPhase.CLAIMED:
        called = now - timedelta(minutes=5)
        assert await store.advance_idempotency(claim, IdempotencyPhase.CALLING, now=called)
    if phase is IdempotencyPhase.ANSWERED:
        assert await store.advance_idempotency(claim, phase, now=now, upstream_id=upstream_id)
    return claim


async def direct_catchall_submit(stack: Stack, query: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.sandbox_url}/catchall/catchAll/submit",
            json={"query": query},
            headers={"x-api-key": "test-key"},
        ) as response,
    ):
        assert response.status in (200, 201, 202), await response.text()
        job_id: str = (await response.json())["job_id"]
        return job_id


# -- the phases ----------------------------------------------------------------------------------


async def test_a_key_that_never_called_upstream_runs_on_retry(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    await left_by_a_crash(stack, "k-claimed", body, IdempotencyPhase.CLAIMED)
    status, job, _ = await post(stack, body, "k-claimed")
    assert status == 201, job
    assert gate.count("POST", "/catchall/catchAll/submit") == 1
    assert catchall_ids(stack) == {job["upstream_id"]}


async def test_a_lost_catchall_answer_is_reconciled_not_resubmitted(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    await left_by_a_crash(stack, "k-calling", body, IdempotencyPhase.CALLING)
    upstream = await direct_catchall_submit(stack, QUERY)  # what the dead process's call made
    await direct_catchall_submit(stack, "another query")  # same window, other request: ignored
    status, job, _ = await post(stack, body, "k-calling")
    assert status == 201, job
    assert job["upstream_id"] == upstream
    assert job["id"] == "job_crashed_k-calling"
    assert gate.count("POST", "/catchall/catchAll/submit") == 2  # only the two direct ones
    finished = await stack.until_finished(job["id"])
    assert finished["state"] == "succeeded"
    # And the key now replays that answer.
    status, replay, headers = await post(stack, body, "k-calling")
    assert (status, replay["id"], headers.get("Idempotent-Replayed")) == (201, job["id"], "true")


async def test_a_calling_key_whose_provider_shows_no_job_submits_once(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    await left_by_a_crash(stack, "k-none", body, IdempotencyPhase.CALLING)
    status, job, _ = await post(stack, body, "k-none")
    assert status == 201, job
    assert gate.count("POST", "/catchall/catchAll/submit") == 1
    assert catchall_ids(stack) == {job["upstream_id"]}


async def test_an_already_tracked_upstream_job_is_not_taken_for_the_lost_one(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, _ = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    tracked = await stack.submit("catchall", {"query": QUERY})  # another request, same query
    await left_by_a_crash(stack, "k-tracked", body, IdempotencyPhase.CALLING)
    status, job, _ = await post(stack, body, "k-tracked")
    assert status == 201, job
    assert job["upstream_id"] != tracked["upstream_id"]
    assert len(catchall_ids(stack)) == 2


async def test_a_provider_that_cannot_tell_answers_outcome_unknown_not_in_flight(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    body = submit_body("pulse", {"fileUrl": "https://example.com/a.pdf"})
    await left_by_a_crash(stack, "k-pulse", body, IdempotencyPhase.CALLING)
    replayed = []
    for _ in range(2):  # decided once, then replayed
        status, problem, headers = await post(stack, body, "k-pulse")
        assert status == 409
        assert problem["code"] == "idempotency_outcome_unknown"
        assert "adopt it with upstream_id" in problem["detail"]
        replayed.append(headers.get("Idempotent-Replayed"))
    assert replayed == [None, "true"]
    assert pulse_ids(stack) == set()
    assert not [c for c in gate.seen if c[0] == "POST" and c[1].startswith("/pulse/")]


async def test_an_answered_key_tracks_the_recorded_upstream_job(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    upstream = await direct_catchall_submit(stack, QUERY)
    body = submit_body("catchall", {"query": QUERY})
    await left_by_a_crash(stack, "k-ans", body, IdempotencyPhase.ANSWERED, upstream_id=upstream)
    status, job, _ = await post(stack, body, "k-ans")
    assert status == 201, job
    assert (job["id"], job["upstream_id"]) == ("job_crashed_k-ans", upstream)
    # Nothing was read of it yet: it is due at once, not after the provider's first delay.
    assert job["next_poll_at"] == job["created_at"]
    assert gate.count("POST", "/catchall/catchAll/submit") == 1  # the direct one only
    assert (await stack.until_finished(job["id"]))["state"] == "succeeded"


async def test_a_crash_after_the_local_write_answers_the_written_job(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, _ = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    first = await stack.submit("catchall", {"query": QUERY})
    # The dead process wrote its job (the id it chose at claim) but not the key's answer.
    await left_by_a_crash(
        stack, "k-written", body, IdempotencyPhase.ANSWERED, upstream_id=first["upstream_id"]
    )
    store = store_of(stack)
    written = await store.get(first["id"])
    assert written is not None
    await store.delete(first["id"])
    await store.create(replace(written, id="job_crashed_k-written"), [])
    status, job, _ = await post(stack, body, "k-written")
    assert status == 201, job
    assert job["id"] == "job_crashed_k-written"
    page = await store.list_jobs(JobFilter(), limit=10, cursor=None)
    assert [j.id for j in page.jobs] == ["job_crashed_k-written"]


async def test_a_live_key_is_in_flight_with_a_short_retry_after(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, _ = await gated_stack(make_stack, serve, store_options)
    body = submit_body("catchall", {"query": QUERY})
    store = store_of(stack)
    now = datetime.now(UTC)
    full = {"provider": "catchall", "request": {"query": QUERY}, "upstream_id": None}
    await store.claim_idempotency(
        "default:k-live",
        fingerprint({**full, "labels": {}, "callback_url": None}),
        now,
        lease_until=now + timedelta(seconds=90),
        job_id="job_live",
        token="alive",
    )
    status, problem, headers = await post(stack, body, "k-live")
    assert (status, problem["code"]) == (409, "idempotency_key_in_flight")
    assert 1 <= int(headers["Retry-After"]) <= 2  # soon, not after the whole 90 s lease


# -- without a client: the sweep ---------------------------------------------------------------


async def test_abandoned_keys_are_settled_without_their_clients(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    """A client that never retries must not leave an untracked upstream job behind."""
    stack, gate = await gated_stack(make_stack, serve, store_options)
    service = stack.app[COMPONENTS_KEY].service
    assert service is not None
    answered = await direct_catchall_submit(stack, "answered query")
    lost = await direct_catchall_submit(stack, QUERY)
    crashes = {
        "s-answered": (submit_body("catchall", {"query": "answered query"}), "answered"),
        "s-calling": (submit_body("catchall", {"query": QUERY}), "calling"),
        "s-nothing": (submit_body("catchall", {"query": "never made"}), "calling"),
        "s-pulse": (submit_body("pulse", {"fileUrl": "https://example.com/a.pdf"}), "calling"),
    }
    for key, (body, phase) in crashes.items():
        upstream = answered if phase == "answered" else None
        await left_by_a_crash(stack, key, body, IdempotencyPhase(phase), upstream_id=upstream)
    # answered: tracked; calling: found and tracked; nothing: freed; pulse: decided unknown
    assert await service.recover_abandoned() == 4
    tracked = {
        j.upstream_id: j.id
        for j in (await store_of(stack).list_jobs(JobFilter(), limit=10, cursor=None)).jobs
    }
    assert tracked == {answered: "job_crashed_s-answered", lost: "job_crashed_s-calling"}
    assert gate.count("POST", "/catchall/catchAll/submit") == 2  # the direct ones only
    # The clients that come back later read what was settled for them.
    status, job, _ = await post(stack, crashes["s-calling"][0], "s-calling")
    assert (status, job["upstream_id"]) == (201, lost)
    status, problem, _ = await post(stack, crashes["s-pulse"][0], "s-pulse")
    assert (status, problem["code"]) == (409, "idempotency_outcome_unknown")
    status, job, _ = await post(stack, crashes["s-nothing"][0], "s-nothing")
    assert status == 201  # nothing had been made, the key was freed: this submit runs
    assert gate.count("POST", "/catchall/catchAll/submit") == 3
    assert await service.recover_abandoned() == 0


# -- only outcomes are replayed --------------------------------------------------------------------


async def test_an_adopt_that_meets_a_5xx_is_not_replayed(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    upstream = await direct_catchall_submit(stack, QUERY)
    path = f"/catchall/catchAll/status/{upstream}"
    gate.before[("GET", path)] = 1
    body = {"provider": "catchall", "upstream_id": upstream}
    status, problem, _ = await post(stack, body, "k-adopt")
    assert (status, problem["code"]) == (503, "upstream_unavailable")
    status, job, headers = await post(stack, body, "k-adopt")
    assert status == 201, job
    assert job["upstream_id"] == upstream
    assert headers.get("Idempotent-Replayed") is None


async def test_a_submit_that_never_reached_the_provider_runs_again(
    make_stack: StackFactory, tmp_path: Any
) -> None:
    """Nothing listens at first: the connection is refused, so the request provably never left
    and the key is freed; once the provider is up, the retry submits (once)."""
    port = free_port()
    stack = await make_stack(sandbox=(web.Application(), f"http://127.0.0.1:{port}"))
    body = submit_body("catchall", {"query": QUERY})
    status, problem, _ = await post(stack, body, "k-refused")
    assert (status, problem["code"]) == (503, "upstream_unavailable")
    sandbox = create_sandbox_app(SandboxSettings(speed=400.0))
    runner = web.AppRunner(sandbox)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        status, job, headers = await post(stack, body, "k-refused")
        assert status == 201, job
        assert headers.get("Idempotent-Replayed") is None
        jobs = sandbox[SUBAPPS_KEY]["catchall"][catchall_sandbox.JOBS_KEY].jobs
        assert set(jobs) == {job["upstream_id"]}
    finally:
        await runner.cleanup()


async def test_a_lost_submit_answer_is_recovered_on_retry(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    """The provider made the job and its answer was lost (a 5xx after the work): the client's
    503 is not replayed; the retry finds the job instead of submitting a second one."""
    stack, gate = await gated_stack(make_stack, serve, store_options)
    gate.after[("POST", "/catchall/catchAll/submit")] = 1
    body = submit_body("catchall", {"query": QUERY})
    status, problem, _ = await post(stack, body, "k-lost")
    assert (status, problem["code"]) == (503, "upstream_unavailable")
    [made] = catchall_ids(stack)
    status, job, _ = await post(stack, body, "k-lost")
    assert status == 201, job
    assert job["upstream_id"] == made
    assert gate.count("POST", "/catchall/catchAll/submit") == 1


async def test_a_5xx_before_the_provider_acted_resubmits_on_retry(
    store_options: dict[str, Any], make_stack: StackFactory, serve: Serve
) -> None:
    stack, gate = await gated_stack(make_stack, serve, store_options)
    gate.before[("POST", "/catchall/catchAll/submit")] = 1
    body = submit_body("catchall", {"query": QUERY})
    status, _, _ = await post(stack, body, "k-5xx")
    assert status == 503
    status, job, _ = await post(stack, body, "k-5xx")
    assert status == 201, job
    assert catchall_ids(stack) == {job["upstream_id"]}
    assert gate.count("POST", "/catchall/catchAll/submit") == 2


# -- reruns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_platform_reruns_under_faults_orphan_nothing(
    make_stack: StackFactory, serve: Serve, seed: int
) -> None:
    """Every upstream job a rerun makes is tracked, however the status calls fail (30 %)."""
    app = create_sandbox_app(SandboxSettings(speed=400.0, faults=0.3, seed=seed))
    url = await serve(app)
    stack = await make_stack(sandbox=(app, url))
    book = app[SUBAPPS_KEY]["platform"][platform_sandbox.JOBS_KEY]
    originals = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(
                f"{url}/platform/v1/api/sandbox/jobs",
                json={"type": "export", "scenario": "succeed"},
                headers={"Authorization": "Bearer test-key"},
            ) as response:
                originals.append((await response.json())["data"]["id"])
    adopted = []
    for upstream in originals:
        for _ in range(20):  # adopt reads status, which may fault: retry like a client
            status, job, _ = await post(
                stack, {"provider": "platform", "upstream_id": upstream}, f"adopt-{upstream}"
            )
            if status == 201:
                adopted.append(job)
                break
    assert len(adopted) == len(originals)
    for job in adopted:
        await stack.until_finished(job["id"])
    answers: list[int] = []
    for job in adopted:
        for _ in range(3):
            async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/rerun") as response:
                answers.append(response.status)
    made = {j.id for j in book.jobs.values() if j.original_id is not None}
    tracked = set()
    async with stack.client.get(f"{stack.url}/v1/jobs?provider=platform&limit=100") as response:
        for item in (await response.json())["jobs"]:
            tracked.add(item["upstream_id"])
    assert made, answers
    assert made <= tracked, f"orphaned reruns: {made - tracked}"


# -- continue: the intent is written before the call -------------------------------------------


async def test_a_continue_whose_answer_was_lost_is_still_seen(
    make_stack: StackFactory, serve: Serve
) -> None:
    """The provider accepted the continue and its answer was lost (a 5xx after the work, or a
    crash before the local write): the job, written ahead as continuing, is polled once the
    call's time is up and follows the provider back to running, then to its larger result. The
    lease (the call's time) is shortened explicitly; the test waits on long polls."""
    gate = Gate()
    app = create_sandbox_app(SandboxSettings(speed=400.0, seed=3))
    app.middlewares.append(gate.middleware)
    url = await serve(app)
    timeouts = {"connect_timeout": 0.5, "read_timeout": 1.0, "total_timeout": 1.0}
    stack = await make_stack(
        sandbox=(app, url),
        provider_options=timeouts,
        store={"idempotency_lease_seconds": 1.5},
        runner={"lease_seconds": 5},
    )
    job = await stack.submit("catchall", {"query": QUERY, "limit": 10})
    finished = await stack.until_finished(job["id"])
    assert finished["state"] == "succeeded"
    gate.after[("POST", "/catchall/catchAll/continue")] = 1
    async with stack.client.post(
        f"{stack.url}/v1/jobs/{job['id']}/continue", json={"new_limit": 30}
    ) as response:
        assert response.status == 503
    # Polling had stopped (the job reads succeeded), so a long poll would answer at once: look
    # every 0.1 s for at most 10 s (the check comes after the 1.5 s lease set above).
    status_path = f"/catchall/catchAll/status/{job['upstream_id']}"
    polled_before = gate.count("GET", status_path)
    for _ in range(100):
        if gate.count("GET", status_path) > polled_before:
            break
        await asyncio.sleep(0.1)
    current = await stack.until_finished(job["id"])
    assert gate.count("GET", status_path) > polled_before, "the continued job was never polled"
    assert current["polls"] > finished["polls"]
    assert current["state"] == "succeeded"
