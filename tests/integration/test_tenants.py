"""Tenants over HTTP (issue 9): another tenant's job is a 404 word for word like a job that does not
exist, on every job route; listings, cursors, streams and Idempotency-Keys stay within a tenant;
per-tenant limits answer 429 with Retry-After without touching other tenants or replays."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp import web

from adapters.pulse.sandbox import JOBS_KEY as PULSE_JOBS
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.auth import Scope
from gateway.states import JobState
from gateway.web.routes import ROUTES
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY, Stack, StackFactory
from tests.integration.test_auth import Reply, assert_problem, call, keyed_stack, new_key, submit
from tests.integration.test_sse import Frame, frames

pytestmark = pytest.mark.integration

FINISHED = {"succeeded", "failed", "canceled", "expired"}
READ_WRITE = (Scope.READ, Scope.WRITE)
NO_SUCH_JOB = "job_01JNOSUCHJOBNOSUCHJOBNOSUC"
HELD_PULSE = {"fileUrl": "https://example.com/held.pdf?sandbox=slow"}
"""At speed 1, a slow pulse job runs for 200 s: it is still running when any test here ends."""


async def held_pulse_stack(
    make_stack: StackFactory, serve: Serve, **sections: Any
) -> tuple[Stack, web.Application]:
    """A keyed stack whose pulse provider is a sandbox of its own at speed 1 (a held job stays
    running), the other providers at the usual fast sandbox (a job finishes in moments)."""
    sandbox = create_sandbox_app(SandboxSettings(speed=1.0, seed=3))
    url = await serve(sandbox)
    stack = await keyed_stack(
        make_stack,
        providers={
            "pulse": {
                "base_url": url + PROVIDERS["pulse"].prefix,
                "api_key": "test-key",
                "policy": FAST_POLICY,
            }
        },
        **sections,
    )
    return stack, sandbox


def held_upstream_jobs(sandbox: web.Application) -> int:
    return len(sandbox[SUBAPPS_KEY]["pulse"][PULSE_JOBS])


def normalised(reply: Reply, job_id: str) -> dict[str, Any]:
    """A problem body as it would read for any id: the id itself and ``instance`` taken out."""
    body = dict(reply.body)
    body.pop("instance", None)
    body.pop("request_id", None)
    return {name: _without(value, job_id) for name, value in body.items()}


def _without(value: Any, job_id: str) -> Any:
    return value.replace(job_id, "<id>") if isinstance(value, str) else value


async def until(stack: Stack, key: str, job_id: str, states: set[str]) -> dict[str, Any]:
    """Long-poll the job until its state is one of ``states`` (bounded: 120 waits of 1 s)."""
    job: dict[str, Any] = {}
    for _ in range(120):
        job = (await call(stack, "GET", f"/v1/jobs/{job_id}?wait=1", key)).body
        if job["state"] in states:
            return job
    raise AssertionError(f"{job_id} never reached {states}: {job}")


# -- 3. cross-tenant isolation ---------------------------------------------------------------------

JOB_ROUTES = [route for route in ROUTES if "{job_id}" in route.path]


def job_requests() -> list[tuple[str, str, dict[str, Any]]]:
    """A request for every job route of the route table, plus a ``?wait=`` one where the route
    takes it (a waiting handler must refuse before it waits)."""
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for route in JOB_ROUTES:
        kwargs: dict[str, Any] = {}
        if route.path.endswith("/continue"):
            kwargs = {"json": {"new_limit": 500}}
        requests.append((route.method, route.path, kwargs))
        if any(param.name == "wait" for param in route.params):
            requests.append((route.method, route.path, {"params": {"wait": "1"}}))
    return requests


def test_the_job_routes_are_the_ones_the_issue_names() -> None:
    """If a job route is added, it is in :func:`job_requests` by construction; this pins the
    list so that a route dropped from the table is noticed too."""
    assert {f"{route.method} {route.path}" for route in JOB_ROUTES} == {
        "GET /v1/jobs/{job_id}",
        "DELETE /v1/jobs/{job_id}",
        "GET /v1/jobs/{job_id}/result",
        "GET /v1/jobs/{job_id}/events",
        "POST /v1/jobs/{job_id}/cancel",
        "POST /v1/jobs/{job_id}/rerun",
        "POST /v1/jobs/{job_id}/continue",
    }


async def test_another_tenants_job_is_404_exactly_like_no_job(
    make_stack: StackFactory, serve: Serve
) -> None:
    stack, held = await held_pulse_stack(make_stack, serve)
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    # One job that is running (cancel would act), one finished with a result (result and rerun
    # would act): whatever a leak would let bob do, it would show.
    running = (
        await call(
            stack, "POST", "/v1/jobs", alice, json={"provider": "pulse", "request": HELD_PULSE}
        )
    ).body["id"]
    done = await submit(stack, alice)
    await until(stack, alice, done, FINISHED)
    before = {
        job_id: (await call(stack, "GET", f"/v1/jobs/{job_id}", alice)).body
        for job_id in (running, done)
    }
    upstream = (held_upstream_jobs(held), stack.upstream_jobs("extract"))
    assert upstream == (1, 1)

    checked = 0
    for job_id in (running, done):
        for method, template, kwargs in job_requests():
            theirs = await call(stack, method, template.format(job_id=job_id), bob, **kwargs)
            nobody = await call(stack, method, template.format(job_id=NO_SUCH_JOB), bob, **kwargs)
            where = f"{method} {template} {kwargs}"
            assert_problem(theirs, 404, "job_not_found", where)
            assert_problem(nobody, 404, "job_not_found", where)
            assert normalised(theirs, job_id) == normalised(nobody, NO_SUCH_JOB), where
            assert theirs.headers["Content-Type"] == nobody.headers["Content-Type"]
            assert theirs.body["instance"].replace(job_id, "<id>") == nobody.body[
                "instance"
            ].replace(NO_SUCH_JOB, "<id>")
            checked += 1
    assert checked == 2 * len(job_requests()) >= 2 * 9

    # Alice's jobs are untouched: none canceled, rerun, continued or deleted, nothing upstream.
    assert (held_upstream_jobs(held), stack.upstream_jobs("extract")) == upstream
    for job_id, was in before.items():
        now = await call(stack, "GET", f"/v1/jobs/{job_id}", alice)
        assert now.status == 200, now.text
        assert now.body["state"] != "canceled"
        assert now.body["rerun_of"] is None
        assert now.body["id"] == was["id"]
    listing = (await call(stack, "GET", "/v1/jobs?limit=500", alice)).body["jobs"]
    assert sorted(job["id"] for job in listing) == sorted(before)
    # Alice can still do what bob could not (the routes were live, not broken).
    result = await call(stack, "GET", f"/v1/jobs/{done}/result", alice)
    assert result.status == 200, result.text
    assert before[running]["state"] in ("queued", "running")
    canceled = await call(stack, "POST", f"/v1/jobs/{running}/cancel", alice)
    assert canceled.status == 202, canceled.text


async def test_listings_and_cursors_stay_within_a_tenant(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    mine = [await submit(stack, alice) for _ in range(3)]
    theirs = [await submit(stack, bob)]
    for key, expected in ((alice, mine), (bob, theirs)):
        listing = await call(stack, "GET", "/v1/jobs?limit=500", key)
        assert sorted(job["id"] for job in listing.body["jobs"]) == sorted(expected)
    # Filters do not widen it.
    for query in ("provider=extract", "state=queued", "label=a:b", "limit=1"):
        listing = await call(stack, "GET", f"/v1/jobs?{query}", bob)
        assert {job["id"] for job in listing.body["jobs"]} <= set(theirs), query

    page = await call(stack, "GET", "/v1/jobs?limit=1", alice)
    cursor = page.body["next_cursor"]
    assert cursor
    # Alice's cursor works for alice...
    following = await call(stack, "GET", "/v1/jobs", alice, params={"limit": "1", "cursor": cursor})
    assert following.status == 200
    assert following.body["jobs"][0]["id"] in mine
    # ... and is refused to bob, who learns nothing of alice's jobs from it.
    refused = await call(stack, "GET", "/v1/jobs", bob, params={"limit": "1", "cursor": cursor})
    problem = assert_problem(refused, 400, "invalid_query")
    assert "cursor" in problem["detail"]
    assert not any(job_id in refused.text for job_id in mine)
    # Bob's own listing has no next page to offer: alice's jobs are not behind his.
    listing_b = await call(stack, "GET", "/v1/jobs?limit=1", bob)
    assert listing_b.body["next_cursor"] is None


async def read_events(
    stack: Stack,
    key: str,
    opened: asyncio.Event,
    submitted: asyncio.Event,
    until_ids: set[str],
    seen: list[Frame],
) -> None:
    """Read ``/v1/events`` as ``key``'s tenant until every id in ``until_ids`` (complete once
    ``submitted`` is set) has finished. Heartbeats are frames too, so an idle stream still
    rechecks."""
    ended: set[str] = set()
    async with stack.client.get(
        f"{stack.url}/v1/events", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200
        opened.set()
        async for frame in frames(response):
            if frame.kind != ":":
                seen.append(frame)
                if frame.kind == "state" and frame.data["state"] in FINISHED:
                    ended.add(frame.data["job_id"])
            if submitted.is_set() and until_ids <= ended:
                return


async def test_a_tenants_event_stream_never_carries_another_tenants_events(
    make_stack: StackFactory,
) -> None:
    stack = await keyed_stack(make_stack, server={"sse_heartbeat_seconds": 0.2})
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    mine: set[str] = set()
    theirs: set[str] = set()
    alice_seen: list[Frame] = []
    bob_seen: list[Frame] = []
    alice_open, bob_open, submitted = asyncio.Event(), asyncio.Event(), asyncio.Event()
    # Both streams open before anything is submitted, each reading until its own jobs finished.
    readers = [
        asyncio.create_task(read_events(stack, alice, alice_open, submitted, mine, alice_seen)),
        asyncio.create_task(read_events(stack, bob, bob_open, submitted, theirs, bob_seen)),
    ]
    try:
        async with asyncio.timeout(60):
            await alice_open.wait()
            await bob_open.wait()
            # Interleaved, bob first: a leak of bob's events would precede alice's in the log.
            for _ in range(3):
                theirs.add(await submit(stack, bob))
                mine.add(await submit(stack, alice))
            theirs.add(await submit(stack, bob))
            submitted.set()
            await asyncio.gather(*readers)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def ids(seen: list[Frame]) -> set[str]:
        return {frame.data["job_id"] for frame in seen}

    assert ids(alice_seen) == mine
    assert ids(bob_seen) == theirs
    assert {frame.kind for frame in alice_seen} >= {"created", "state"}
    assert {frame.kind for frame in bob_seen} >= {"created", "state"}
    # Event ids are the shared log's: alice's stream skipped bob's, it did not renumber.
    assert {frame.id for frame in alice_seen}.isdisjoint({frame.id for frame in bob_seen})
    assert not any(job_id in repr(alice_seen) for job_id in theirs)
    assert not any(job_id in repr(bob_seen) for job_id in mine)

    # Resuming from the start (Last-Event-ID: 0) replays alice's history, and only hers.
    async with stack.client.get(
        f"{stack.url}/v1/events",
        headers={"Authorization": f"Bearer {alice}", "Last-Event-ID": "0"},
    ) as response:
        assert response.status == 200
        replayed: list[Frame] = []
        async with asyncio.timeout(30):
            async for frame in frames(response):
                if frame.kind != ":":
                    replayed.append(frame)
                if len(replayed) >= len(alice_seen):
                    break
    assert [frame.id for frame in replayed] == [frame.id for frame in alice_seen]


async def test_a_job_stream_of_another_tenant_is_404_with_a_key_or_a_stream_token(
    make_stack: StackFactory,
) -> None:
    stack = await keyed_stack(make_stack)
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", Scope.READ)
    job_id = await submit(stack, alice)
    token = (await call(stack, "POST", "/v1/stream-tokens", bob)).body["token"]
    reply = await call(stack, "GET", f"/v1/jobs/{job_id}/events", params={"access_token": token})
    assert_problem(reply, 404, "job_not_found")
    nobody = await call(
        stack, "GET", f"/v1/jobs/{NO_SUCH_JOB}/events", params={"access_token": token}
    )
    assert normalised(reply, job_id) == normalised(nobody, NO_SUCH_JOB)


async def test_one_idempotency_key_in_two_tenants_makes_two_jobs(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    body = {"provider": "extract", "request": {"url": "https://example.com/same", "maxPages": 1}}
    header = {"Idempotency-Key": "order-42"}
    first = await call(stack, "POST", "/v1/jobs", alice, json=body, headers=header)
    other = await call(stack, "POST", "/v1/jobs", bob, json=body, headers=header)
    assert first.status == other.status == 201, (first.text, other.text)
    assert "Idempotent-Replayed" not in first.headers
    assert "Idempotent-Replayed" not in other.headers
    assert first.body["id"] != other.body["id"]
    assert first.body["upstream_id"] != other.body["upstream_id"]
    assert stack.upstream_jobs("extract") == 2
    # Within a tenant, the same key replays: same job, no third upstream job.
    for key, original in ((alice, first), (bob, other)):
        again = await call(stack, "POST", "/v1/jobs", key, json=body, headers=header)
        assert again.status == 201, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.body["id"] == original.body["id"]
    assert stack.upstream_jobs("extract") == 2
    # Another body under alice's key is refused for alice only; bob's key is his own.
    changed = {**body, "labels": {"v": "2"}}
    reused = await call(stack, "POST", "/v1/jobs", alice, json=changed, headers=header)
    assert_problem(reused, 422, "idempotency_key_reused")
    # Each tenant sees its own job only.
    for key, mine, theirs in ((alice, first, other), (bob, other, first)):
        listing = (await call(stack, "GET", "/v1/jobs", key)).body["jobs"]
        assert [job["id"] for job in listing] == [mine.body["id"]]
        gone = await call(stack, "GET", f"/v1/jobs/{theirs.body['id']}", key)
        assert_problem(gone, 404, "job_not_found")


# -- 5. limits -------------------------------------------------------------------------------------


async def limited_count(stack: Stack, tenant: str, limit: str) -> float:
    """``jobgate_tenant_limited_total`` for one tenant label and limit, from ``/metrics``."""
    text = (await call(stack, "GET", "/metrics")).text
    for line in text.splitlines():
        if line.startswith("jobgate_tenant_limited_total{") and (
            f'tenant="{tenant}"' in line and f'limit="{limit}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series for {tenant}/{limit}")


def retry_after(reply: Reply) -> int:
    value = reply.headers.get("Retry-After", "")
    assert re.fullmatch(r"\d+", value), reply.headers
    return int(value)


async def test_submits_per_minute_is_429_for_that_tenant_only(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack, limits={"submits_per_minute": 2})
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    body = {"provider": "extract", "request": {"url": "https://example.com", "maxPages": 1}}
    first = await call(
        stack, "POST", "/v1/jobs", alice, json=body, headers={"Idempotency-Key": "k1"}
    )
    assert first.status == 201, first.text
    assert (await call(stack, "POST", "/v1/jobs", alice, json=body)).status == 201
    over = await call(stack, "POST", "/v1/jobs", alice, json=body)
    problem = assert_problem(over, 429, "tenant_rate_limited")
    assert "2 jobs per minute" in problem["detail"]
    assert 1 <= retry_after(over) <= 60
    assert stack.upstream_jobs("extract") == 2  # the refused one never went upstream
    # A new Idempotency-Key is refused too, and the key is left free (nothing was called).
    keyed = await call(
        stack, "POST", "/v1/jobs", alice, json=body, headers={"Idempotency-Key": "k2"}
    )
    assert_problem(keyed, 429, "tenant_rate_limited")
    # A replay of an earlier success is still answered: it creates nothing.
    replay = await call(
        stack, "POST", "/v1/jobs", alice, json=body, headers={"Idempotency-Key": "k1"}
    )
    assert replay.status == 201, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.body["id"] == first.body["id"]
    # A rerun makes a job, so it counts as well.
    rerun = await call(stack, "POST", f"/v1/jobs/{first.body['id']}/rerun", alice)
    assert_problem(rerun, 429, "tenant_rate_limited")
    # Bob is not alice.
    for _ in range(2):
        assert (await call(stack, "POST", "/v1/jobs", bob, json=body)).status == 201
    assert stack.upstream_jobs("extract") == 4
    # The refusals are counted under a bounded label ("other": these tenants are not configured).
    assert await limited_count(stack, "other", "tenant_rate_limited") == 3


async def test_per_tenant_overrides(make_stack: StackFactory) -> None:
    stack = await keyed_stack(
        make_stack,
        limits={"submits_per_minute": 1, "tenants": {"big": {"submits_per_minute": 3}}},
    )
    _, small = await new_key(stack, "small", *READ_WRITE)
    _, big = await new_key(stack, "big", *READ_WRITE)
    assert (await call(stack, "POST", "/v1/jobs", small, json=_extract())).status == 201
    assert_problem(
        await call(stack, "POST", "/v1/jobs", small, json=_extract()), 429, "tenant_rate_limited"
    )
    for _ in range(3):
        assert (await call(stack, "POST", "/v1/jobs", big, json=_extract())).status == 201
    assert_problem(
        await call(stack, "POST", "/v1/jobs", big, json=_extract()), 429, "tenant_rate_limited"
    )
    # A configured tenant gets its own metric label; the others share one.
    assert await limited_count(stack, "big", "tenant_rate_limited") == 1
    assert await limited_count(stack, "other", "tenant_rate_limited") == 1


def _extract() -> dict[str, Any]:
    return {"provider": "extract", "request": {"url": "https://example.com", "maxPages": 1}}


async def test_max_active_jobs_is_429_until_one_finishes(
    make_stack: StackFactory, serve: Serve
) -> None:
    stack, _ = await held_pulse_stack(make_stack, serve, limits={"max_active_jobs": 1})
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    _, bob = await new_key(stack, "bob", *READ_WRITE)
    held = {"provider": "pulse", "request": HELD_PULSE}
    first = await call(
        stack, "POST", "/v1/jobs", alice, json=held, headers={"Idempotency-Key": "a"}
    )
    assert first.status == 201, first.text
    job_id = first.body["id"]
    over = await call(stack, "POST", "/v1/jobs", alice, json=_extract())
    problem = assert_problem(over, 429, "tenant_active_limit")
    assert "its limit is 1" in problem["detail"]
    assert retry_after(over) == 5
    # Adopting makes a job as well.
    adopt = await call(
        stack, "POST", "/v1/jobs", alice, json={"provider": "pulse", "upstream_id": "whatever"}
    )
    assert_problem(adopt, 429, "tenant_active_limit")
    # The replay of the first submit is answered while over the limit.
    replay = await call(
        stack, "POST", "/v1/jobs", alice, json=held, headers={"Idempotency-Key": "a"}
    )
    assert replay.status == 201, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.body["id"] == job_id
    # Bob has a limit of his own.
    assert (await call(stack, "POST", "/v1/jobs", bob, json=held)).status == 201
    assert_problem(
        await call(stack, "POST", "/v1/jobs", bob, json=_extract()), 429, "tenant_active_limit"
    )
    # Once alice's job is finished (canceled), she may submit again.
    canceled = await call(stack, "POST", f"/v1/jobs/{job_id}/cancel", alice)
    assert canceled.status == 202, canceled.text
    assert (await until(stack, alice, job_id, FINISHED))["state"] == "canceled"
    again = await call(stack, "POST", "/v1/jobs", alice, json=_extract())
    assert again.status == 201, again.text


async def test_a_job_is_the_tenant_of_the_key_that_made_it(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, alice = await new_key(stack, "alice", *READ_WRITE)
    job_id = await submit(stack, alice)
    store = stack.app[COMPONENTS_KEY].require_store()
    job = await store.get(job_id, "alice")
    assert job is not None
    assert job.tenant == "alice"
    assert await store.get(job_id, "default") is None
    # A rerun stays in the tenant.
    rerun = await call(stack, "POST", f"/v1/jobs/{job_id}/rerun", alice)
    assert rerun.status == 201
    again = await store.get(rerun.body["id"], "alice")
    assert again is not None
    assert again.state in (
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    )
