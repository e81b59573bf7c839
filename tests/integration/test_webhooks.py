"""Outbound webhooks end to end on 127.0.0.1: a real gateway, a real sandbox, and a receiver that
verifies every signature with its own implementation of the Standard Webhooks spec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway.store.base import Delivery, JobStore
from gateway.web.state import COMPONENTS_KEY
from gateway.webhooks import CURSOR, category_of, message_id
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory
from tests.unit.test_webhooks import SECRET, verify_standard_webhook

pytestmark = pytest.mark.integration

WAIT = 30.0
FAST_SCHEDULE = [0, 0.05, 0.1, 0.2]
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Call:
    path: str
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    verified: bool
    answered: int


@dataclass
class Receiver:
    """Answers each path from a script, then with its default; records every call it gets."""

    scripts: dict[str, list[int]] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.match_info["path"]
        script = self.scripts.get(path)
        status = script.pop(0) if script else self.defaults.get(path, 200)
        verified = verify_standard_webhook(SECRET, request.headers, body, now=time.time())
        self.calls.append(
            Call(
                path=path,
                webhook_id=request.headers.get("webhook-id", ""),
                timestamp=int(request.headers.get("webhook-timestamp", "0")),
                body=orjson.loads(body) if body else {},
                verified=verified and request.method == "POST",
                answered=status,
            )
        )
        self.changed.set()
        headers = {"Location": "/landing"} if status in REDIRECTS else None
        return web.Response(status=status, headers=headers)

    def to(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.path == path]

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while True:
                self.changed.clear()
                if predicate():
                    return
                await self.changed.wait()


def hooks(
    receiver_url: str,
    *endpoints: dict[str, Any],
    schedule: Sequence[float] = FAST_SCHEDULE,
) -> dict[str, Any]:
    return {
        "secret": SECRET,
        "allowed_hosts": ["127.0.0.1"],
        "allowed_networks": ["127.0.0.1/32"],
        # The receiver's random port: callback_urls name it, and only 80 and 443 are standard.
        "allowed_ports": [URL(receiver_url).port],
        "schedule": list(schedule),
        "timeout": 5,
        "endpoints": [{**e, "url": receiver_url + e["url"]} for e in endpoints],
    }


def store_of(stack: Stack) -> JobStore:
    return stack.app[COMPONENTS_KEY].require_service().store


async def until_rows(
    stack: Stack, predicate: Callable[[list[Delivery]], bool], job_id: str | None = None
) -> list[Delivery]:
    """Poll the delivery rows until ``predicate`` holds (bounded)."""
    async with asyncio.timeout(WAIT):
        while True:
            rows = await store_of(stack).list_deliveries(job_id=job_id)
            if predicate(rows):
                return rows
            await asyncio.sleep(0.02)


async def expected_ids(stack: Stack, job_id: str, *, progress: bool = False) -> set[str]:
    """The webhook-ids a job's event log calls for: terminal events, and progress if asked."""
    events = await store_of(stack).events_after(0, job_id=job_id, limit=10_000)
    wanted = {"terminal", "progress"} if progress else {"terminal"}
    return {message_id(e.job_id, e.id) for e in events if category_of(e) in wanted}


async def submit(stack: Stack, callback_url: str | None = None) -> str:
    extra = {"callback_url": callback_url} if callback_url else {}
    job = await stack.submit("extract", {"url": "https://example.com"}, **extra)
    job_id: str = job["id"]
    return job_id


# -- (a) a job's callback_url and the configured endpoints get the signed terminal job ------------


async def test_callback_url_and_subscriptions_get_the_signed_terminal_job(
    make_stack: StackFactory, serve: Serve
) -> None:
    receiver = Receiver()
    url = await serve(receiver.app())
    stack = await make_stack(
        webhooks=hooks(
            url,
            {"url": "/sub"},
            {"url": "/all", "events": ["terminal", "progress"]},
        )
    )
    job_id = await submit(stack, url + "/cb?token=abc")
    final = await stack.until_finished(job_id)
    terminal = await expected_ids(stack, job_id)
    everything = await expected_ids(stack, job_id, progress=True)
    assert len(terminal) == 1

    def seen(path: str) -> set[str]:
        return {call.webhook_id for call in receiver.to(path)}

    await receiver.until(
        lambda: seen("cb") == seen("sub") == terminal and seen("all") == everything
    )
    assert all(call.verified for call in receiver.calls), receiver.calls
    (callback,) = receiver.to("cb")
    (subscribed,) = receiver.to("sub")
    # The canonical job, exactly as GET /v1/jobs/{id} shows it once finished.
    assert callback.body == subscribed.body == final
    assert callback.body["state"] == "succeeded"
    assert receiver.to("all")[-1].body == final
    assert all(call.body["id"] == job_id for call in receiver.calls)

    rows = await until_rows(stack, lambda rows: all(r.status == "delivered" for r in rows), job_id)
    assert len(rows) == 2 + len(everything)
    assert {(r.attempts, r.last_status) for r in rows} == {(1, 200)}


# -- (b) a failing receiver gets the retry schedule ---------------------------------------------


async def test_a_failing_receiver_gets_every_attempt_of_the_schedule(
    make_stack: StackFactory, serve: Serve
) -> None:
    receiver = Receiver(scripts={"flaky": [500, 500, 500]}, defaults={"down": 503})
    url = await serve(receiver.app())
    stack = await make_stack(webhooks=hooks(url))
    recovering = await submit(stack, url + "/flaky")
    failing = await submit(stack, url + "/down")

    await receiver.until(lambda: any(call.answered == 200 for call in receiver.to("flaky")))
    flaky = receiver.to("flaky")
    assert [call.answered for call in flaky] == [500, 500, 500, 200]
    assert {call.webhook_id for call in flaky} == await expected_ids(stack, recovering)
    assert all(call.verified for call in flaky)
    stamps = [call.timestamp for call in flaky]
    assert stamps == sorted(stamps)

    rows = await until_rows(stack, lambda rows: rows[0].status == "failed", failing)
    (row,) = rows
    assert (row.attempts, row.last_status, row.last_error) == (4, 503, "answered 503")
    # The schedule has four entries: four attempts, then no more.
    assert [call.answered for call in receiver.to("down")] == [503] * 4
    (done,) = await store_of(stack).list_deliveries(job_id=recovering)
    assert (done.status, done.attempts, done.last_status) == ("delivered", 4, 200)


# -- (c) 410 Gone disables the endpoint --------------------------------------------------------


async def test_a_410_disables_the_endpoint_for_good(make_stack: StackFactory, serve: Serve) -> None:
    receiver = Receiver(defaults={"gone": 410})
    url = await serve(receiver.app())
    stack = await make_stack(webhooks=hooks(url, {"url": "/gone"}))
    store = store_of(stack)
    first = await submit(stack)
    await until_rows(stack, lambda rows: bool(rows) and rows[0].status == "disabled", first)
    assert await store.endpoint_disabled(url + "/gone")

    second = await submit(stack, url + "/gone")
    await stack.until_finished(second)
    last = max(e.id for e in await store.events_after(0, job_id=second, limit=10_000))
    async with asyncio.timeout(WAIT):
        while True:
            # Once the cursor has passed the job's events, every delivery they call for exists.
            if (await store.get_cursor(CURSOR) or 0) >= last:
                break
            await asyncio.sleep(0.02)
    assert await store.list_deliveries(job_id=second) == []
    assert [call.answered for call in receiver.calls] == [410]


# -- (d) redirects are not followed -------------------------------------------------------------


async def test_a_redirect_is_not_followed(make_stack: StackFactory, serve: Serve) -> None:
    receiver = Receiver(defaults={"moved": 302})
    url = await serve(receiver.app())
    stack = await make_stack(webhooks=hooks(url, schedule=[0, 0.05]))
    job_id = await submit(stack, url + "/moved")
    (row,) = await until_rows(stack, lambda rows: bool(rows) and rows[0].status == "failed", job_id)
    assert (row.attempts, row.last_status) == (2, 302)
    assert row.last_error == "redirect not followed (302)"
    assert [call.path for call in receiver.calls] == ["moved", "moved"]


# -- (e) a restart while deliveries are pending loses nothing -----------------------------------


async def test_a_restart_during_delivery_loses_nothing(
    make_stack: StackFactory, serve: Serve, tmp_path: Any
) -> None:
    receiver = Receiver(defaults={"down": 500, "sub": 500})
    url = await serve(receiver.app())
    db = tmp_path / "jobs.db"
    # Long enough that nothing is given up before the restart.
    settings = hooks(url, {"url": "/sub"}, schedule=[0] + [0.2] * 49)
    first = await make_stack(db=db, webhooks=settings)
    jobs = [await submit(first, url + "/down") for _ in range(3)]
    for job_id in jobs:
        await first.until_finished(job_id)
    expected: set[str] = set()
    for job_id in jobs:
        expected |= await expected_ids(first, job_id)
    assert len(expected) == 3

    def attempted(path: str) -> set[str]:
        return {call.webhook_id for call in receiver.to(path)}

    await receiver.until(lambda: attempted("down") == attempted("sub") == expected)
    await first.server.close()
    stopped_at = len(receiver.calls)
    assert all(call.answered == 500 for call in receiver.calls)

    receiver.defaults.update(down=200, sub=200)
    second = await make_stack(db=db, sandbox=(first.sandbox, first.sandbox_url), webhooks=settings)

    def delivered(path: str) -> set[str]:
        return {call.webhook_id for call in receiver.to(path) if call.answered == 200}

    await receiver.until(lambda: delivered("down") == delivered("sub") == expected)
    assert all(call.verified for call in receiver.calls)
    assert len(receiver.calls) > stopped_at
    rows = await until_rows(second, lambda rows: all(r.status == "delivered" for r in rows))
    assert len(rows) == 6
    # (Attempts are not compared with the receiver's count: an answer that arrives as the gateway
    # stops is not recorded, and that attempt is simply made again: at least once.)
