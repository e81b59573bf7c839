"""Server-Sent Events and CORS, end to end over 127.0.0.1 against the sandboxes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway.store.base import Event, JobStore
from gateway.web.app import create_app
from gateway.web.sse import SSE_KEY
from gateway.web.state import COMPONENTS_KEY
from tests.integration.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

FINISHED = {"succeeded", "failed", "canceled", "expired"}
ORIGIN = "https://app.example.com"


@dataclass
class Frame:
    """One SSE message, or one comment line (``kind == ":"``)."""

    kind: str
    id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""


async def frames(
    response: aiohttp.ClientResponse, *, announcements: bool = False
) -> AsyncIterator[Frame]:
    """A minimal SSE parser: enough of the spec for what jobgate sends. A message with an id and
    nothing else (where a tenant stream's "now" was) is a ``kind == "id"`` frame, left out unless
    ``announcements``."""
    fields: dict[str, str] = {}
    data: list[str] = []
    while True:
        try:
            raw = await response.content.readline()
        except aiohttp.ClientPayloadError:
            return  # the server went away mid-stream: the same as an end of stream here
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line:
            if set(fields) == {"id"} and not data:
                if announcements:
                    yield Frame(kind="id", id=int(fields["id"]))
            elif fields or data:
                yield Frame(
                    kind=fields.get("event", "message"),
                    id=int(fields["id"]) if "id" in fields else None,
                    data=orjson.loads("\n".join(data)) if data else {},
                )
            fields, data = {}, []
            continue
        if line.startswith(":"):
            yield Frame(kind=":", text=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


async def read_until_end(response: aiohttp.ClientResponse) -> list[Frame]:
    """Every event up to the stream's end (comments dropped)."""
    return [frame async for frame in frames(response) if frame.kind != ":"]


async def take(response: aiohttp.ClientResponse, count: int) -> list[Frame]:
    """The next ``count`` events (comments skipped)."""
    taken: list[Frame] = []
    if count == 0:
        return taken
    async for frame in frames(response):
        if frame.kind != ":":
            taken.append(frame)
            if len(taken) == count:
                break
    return taken


def store_of(stack: Stack) -> JobStore:
    return stack.app[COMPONENTS_KEY].require_service().store


async def event_log(stack: Stack, job_id: str | None = None) -> list[Event]:
    return await store_of(stack).events_after(0, job_id=job_id, limit=100_000)


def restarted(stack: Stack, server: TestServer) -> Stack:
    return Stack(
        stack.sandbox,
        stack.sandbox_url,
        str(server.make_url("")).rstrip("/"),
        stack.client,
        stack.settings,
        server.app,
        server,
    )


# -- one job, many clients -----------------------------------------------------------------------


async def test_a_thousand_clients_on_one_job_all_get_the_terminal_event(
    make_stack: StackFactory,
) -> None:
    clients = 1000
    stack = await make_stack(speed=1)  # a pulse job takes about a minute: it ends by cancel
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/a.pdf"})
    url = f"{stack.url}/v1/jobs/{job['id']}/events"
    connected = asyncio.Semaphore(0)
    opening = asyncio.Semaphore(100)  # bounded connects: the listen backlog is finite
    received: list[list[Frame]] = []

    async def client(session: aiohttp.ClientSession) -> None:
        async with opening:
            response = await session.get(url)
        async with response:
            assert response.status == 200
            seen: list[Frame] = []
            async for frame in frames(response):
                if frame.kind == ":":
                    continue
                seen.append(frame)
                if frame.kind == "created":
                    connected.release()
            received.append(seen)

    sse = stack.app[SSE_KEY]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            async with asyncio.timeout(90):
                for _ in range(clients):
                    await connected.acquire()
                reads_before = sse.store_reads
                started = time.perf_counter()
                async with stack.client.post(f"{stack.url}/v1/jobs/{job['id']}/cancel") as answer:
                    assert answer.status == 202
                await asyncio.gather(*tasks)
                fan_out = time.perf_counter() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    log = await event_log(stack, job["id"])
    terminal = log[-1]
    assert terminal.state.value == "canceled"
    assert len(received) == clients
    for seen in received:
        assert [frame.id for frame in seen[:-1]] == [event.id for event in log]
        assert seen[-2].data["state"] == "canceled"
        assert seen[-1].kind == "end"
    shared_reads = sse.store_reads - reads_before
    print(
        f"\n{clients} SSE clients: terminal event to all in {fan_out:.3f} s "
        f"(cancel request included), {shared_reads} store reads for the fan-out"
    )
    # One read per wake-up of the job's channel (a cancel publishes once or twice), whatever the
    # number of clients.
    assert shared_reads <= 3


# -- resumption ----------------------------------------------------------------------------------


async def test_reconnect_with_last_event_id_across_a_restart(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=150)  # catchall: about 5 s, records while enriching
    job = await stack.submit("catchall", {"query": "Series B rounds in logistics"})
    url = f"/v1/jobs/{job['id']}/events"
    first: list[Frame] = []
    got_some = asyncio.Event()

    async def read_first() -> None:
        async with stack.client.get(stack.url + url) as response:
            assert response.status == 200
            async for frame in frames(response):
                if frame.kind != ":":
                    first.append(frame)
                if len(first) >= 2:
                    got_some.set()

    reader = asyncio.create_task(read_first())
    async with asyncio.timeout(30):
        await got_some.wait()
    # Stop the gateway under an open stream: the stream ends, the job keeps running upstream.
    await stack.server.close()
    async with asyncio.timeout(30):
        await reader
    assert first
    assert all(frame.kind != "end" for frame in first)

    second = TestServer(create_app(stack.settings), host="127.0.0.1")
    await second.start_server()
    try:
        again = restarted(stack, second)
        headers = {"Last-Event-ID": str(first[-1].id)}
        async with again.client.get(again.url + url, headers=headers) as response:
            assert response.status == 200
            async with asyncio.timeout(60):
                rest = await read_until_end(response)
        assert rest[-1].kind == "end"
        assert rest[-1].data["state"] == "succeeded"
        resumed = [frame.id for frame in first + rest[:-1]]
        log = [event.id for event in await event_log(again, job["id"])]
        assert resumed == log, "a resumed stream missed or repeated an event"
        assert len(rest) > 1, "nothing happened after the restart"
        kinds = {frame.kind for frame in first + rest}
        assert {"created", "state"} <= kinds

        # The query parameter does the same for clients that cannot set the header.
        middle = log[len(log) // 2]
        async with again.client.get(
            again.url + url, params={"last_event_id": str(middle)}
        ) as response:
            tail = await read_until_end(response)
        assert [frame.id for frame in tail[:-1]] == [i for i in log if i > middle]
    finally:
        await second.close()


async def test_a_finished_job_stream_replays_its_history_then_ends(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    job = await stack.submit("extract", {"url": "https://example.com"})
    await stack.until_finished(job["id"])
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        replay = await read_until_end(response)
    log = await event_log(stack, job["id"])
    assert [frame.id for frame in replay[:-1]] == [event.id for event in log]
    assert replay[0].kind == "created"
    for frame, event in zip(replay, log, strict=False):
        assert frame.kind == event.kind
        assert frame.data["job_id"] == job["id"]
        assert frame.data["provider"] == "extract"
        assert frame.data["state"] == event.state.value
    assert replay[-1].kind == "end"
    assert replay[-1].id is None
    assert replay[-1].data == {"job_id": job["id"], "state": "succeeded", "reason": "finished"}

    # Resuming after the last event of a finished job: nothing to send, and the end again.
    headers = {"Last-Event-ID": str(log[-1].id)}
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job['id']}/events", headers=headers
    ) as response:
        assert [frame.kind for frame in await read_until_end(response)] == ["end"]


# -- heartbeats ----------------------------------------------------------------------------------


async def test_idle_streams_get_heartbeats(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1, server={"sse_heartbeat_seconds": 0.05})
    async with stack.client.get(f"{stack.url}/v1/events") as response:
        assert response.status == 200
        comments = 0
        async with asyncio.timeout(30):
            async for frame in frames(response):
                assert frame.kind == ":", "no job exists: only heartbeats can arrive"
                assert frame.text == "keep-alive"
                comments += 1
                if comments == 3:
                    break

    job = await stack.submit("pulse", {"fileUrl": "https://example.com/idle.pdf"})
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as response:
        kinds: list[str] = []
        async with asyncio.timeout(30):
            async for frame in frames(response):
                kinds.append(frame.kind)
                if kinds[-2:] == [":", ":"]:
                    break
    assert kinds[0] == "created"


async def test_a_deleted_job_ends_its_stream(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=1, server={"sse_heartbeat_seconds": 0.05})
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/gone.pdf"})
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as response:
        async with asyncio.timeout(30):
            (created,) = await take(response, 1)
            assert created.kind == "created"
            async with stack.client.delete(f"{stack.url}/v1/jobs/{job['id']}") as deleted:
                assert deleted.status == 204
            rest = await read_until_end(response)
    assert rest[-1].kind == "end"
    assert rest[-1].data["reason"] == "deleted"


# -- the tenant stream ---------------------------------------------------------------------------


async def test_all_events_filtered_by_provider_and_state(make_stack: StackFactory) -> None:
    stack = await make_stack(server={"sse_heartbeat_seconds": 0.05})
    earlier = await stack.submit("pulse", {"fileUrl": "https://example.com/before.pdf"})
    await stack.until_finished(earlier["id"])

    # Opened before the jobs below: no Last-Event-ID means "from now", so `earlier` is not in it.
    live = await stack.client.get(f"{stack.url}/v1/events", params={"provider": "pulse"})
    assert live.status == 200
    opened_at = await store_of(stack).last_event_id()
    jobs = [
        await stack.submit("extract", {"url": "https://example.com/ok"}),
        await stack.submit("extract", {"url": "https://example.com/?sandbox=fail"}),
        await stack.submit("pulse", {"fileUrl": "https://example.com/ok.pdf"}),
        await stack.submit("pulse", {"fileUrl": "https://example.com/no.pdf?sandbox=fail"}),
    ]
    for job in jobs:
        await stack.until_finished(job["id"])
    log = await event_log(stack)

    async with live:
        expected = [e.id for e in log if e.provider == "pulse" and e.id > opened_at]
        async with asyncio.timeout(30):
            got = await take(live, len(expected))
        assert [frame.id for frame in got] == expected
        assert {frame.data["provider"] for frame in got} == {"pulse"}

    cases: list[tuple[list[tuple[str, str]], Callable[[Event], bool]]] = [
        ([("state", "succeeded,failed")], lambda e: e.state.value in ("succeeded", "failed")),
        (
            [("provider", "extract"), ("provider", "pulse"), ("state", "failed")],
            lambda e: e.state.value == "failed",
        ),
        (
            [("provider", "extract"), ("state", "succeeded")],
            lambda e: e.provider == "extract" and e.state.value == "succeeded",
        ),
        ([("provider", "extract,pulse"), ("state", "queued")], lambda e: e.state.value == "queued"),
    ]
    for params, keep in cases:
        expected = [e.id for e in log if keep(e)]
        query = [*params, ("last_event_id", "0")]
        async with stack.client.get(f"{stack.url}/v1/events", params=query) as response:
            assert response.status == 200
            async with asyncio.timeout(30):
                got = await take(response, len(expected))
                assert [frame.id for frame in got] == expected, params
                # Nothing else matches: only heartbeats follow.
                async for frame in frames(response):
                    assert frame.kind == ":", (params, frame)
                    break


# -- errors --------------------------------------------------------------------------------------


async def expect_problem(
    stack: Stack, path: str, status: int, code: str, name: str, **kwargs: Any
) -> None:
    async with stack.client.get(stack.url + path, **kwargs) as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        problem = await response.json()
    assert problem["code"] == code, problem
    assert name in problem["detail"], problem


async def test_a_tenant_stream_opens_with_where_now_was_so_an_early_reconnect_loses_nothing(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(server={"sse_heartbeat_seconds": 0.05})
    earlier = await stack.submit("pulse", {"fileUrl": "https://example.com/before.pdf"})
    await stack.until_finished(earlier["id"])
    head = await store_of(stack).last_event_id()

    # "From now": the first message is an id with no data, which EventSource keeps as its last
    # event id without dispatching anything.
    async with stack.client.get(f"{stack.url}/v1/events") as first:
        async with asyncio.timeout(30):
            opening = await anext(frames(first, announcements=True))
        assert (opening.kind, opening.id) == ("id", head)
    # The connection dropped before any event; jobs moved meanwhile. Resuming from the announced
    # id gets every one of their events, where a new "from now" would have lost them.
    job = await stack.submit("extract", {"url": "https://example.com/meanwhile"})
    await stack.until_finished(job["id"])
    expected = [e.id for e in await event_log(stack) if e.id > head]
    assert expected
    headers = {"Last-Event-ID": str(opening.id)}
    async with stack.client.get(f"{stack.url}/v1/events", headers=headers) as resumed:
        async with asyncio.timeout(30):
            got = await take(resumed, len(expected))
    assert [frame.id for frame in got] == expected


async def test_bad_requests_are_problems_before_any_stream(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await expect_problem(stack, "/v1/jobs/job_nope/events", 404, "job_not_found", "job_nope")
    job = await stack.submit("extract", {"url": "https://example.com"})
    events = f"/v1/jobs/{job['id']}/events"
    for path in (events, "/v1/events"):
        for bad in ("x", "-1", "1.5", "99999999999999999999"):
            await expect_problem(
                stack, path, 400, "invalid_header", "Last-Event-ID", headers={"Last-Event-ID": bad}
            )
            await expect_problem(
                stack, path, 400, "invalid_query", "last_event_id", params={"last_event_id": bad}
            )
    for params, name in (
        ({"provider": "nope"}, "provider"),
        ({"provider": "pulse,nope"}, "provider"),
        ({"provider": ""}, "provider"),
        ({"state": "done"}, "state"),
        ({"state": "succeeded,,failed"}, "state"),
    ):
        await expect_problem(stack, "/v1/events", 400, "invalid_query", name, params=params)


# -- CORS ----------------------------------------------------------------------------------------


async def test_cors_preflight_and_responses(make_stack: StackFactory) -> None:
    stack = await make_stack(server={"cors_origins": [ORIGIN]})
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key",
    }
    async with stack.client.options(f"{stack.url}/v1/jobs", headers=preflight) as response:
        assert response.status == 204
        headers = response.headers
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert {"GET", "POST"} <= {
        m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")
    }
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"last-event-id", "idempotency-key", "content-type", "x-request-id"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    # Preflights pass the request-id middleware too, so they can be traced like any request.
    assert headers.get("X-Request-ID")
    assert "Origin" in headers["Vary"]

    # Simple responses, problems and streams all carry the origin and the readable headers.
    job = await stack.submit("extract", {"url": "https://example.com"})
    await stack.until_finished(job["id"])
    for path in ("/v1/jobs", "/v1/jobs/job_nope", f"/v1/jobs/{job['id']}/events"):
        async with stack.client.get(stack.url + path, headers={"Origin": ORIGIN}) as response:
            await response.read()
            headers = response.headers
        assert headers["Access-Control-Allow-Origin"] == ORIGIN, path
        assert "Origin" in headers["Vary"], path
        exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Location", "X-Request-ID", "Idempotent-Replayed", "Retry-After"} <= exposed

    # Another origin gets nothing CORS, and its preflight is refused.
    other = "https://evil.example.com"
    async with stack.client.get(f"{stack.url}/v1/jobs", headers={"Origin": other}) as response:
        assert response.status == 200
        assert not any(h.lower().startswith("access-control-") for h in response.headers)
    async with stack.client.options(
        f"{stack.url}/v1/jobs", headers={**preflight, "Origin": other}
    ) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
        assert not any(h.lower().startswith("access-control-") for h in response.headers)


# -- catchall records ----------------------------------------------------------------------------


async def test_catchall_records_arrive_as_events_while_the_job_runs(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(speed=150)
    job = await stack.submit("catchall", {"query": "Series B rounds in logistics"})
    async with stack.client.get(f"{stack.url}/v1/jobs/{job['id']}/events") as response:
        async with asyncio.timeout(60):
            stream = await read_until_end(response)
    assert stream[-1].data["state"] == "succeeded"
    records = [frame for frame in stream if frame.kind == "records"]
    assert records, [frame.kind for frame in stream]
    delivered: list[Any] = []
    for frame in records:
        assert frame.data["offset"] == len(delivered)
        assert 0 < frame.data["count"] == len(frame.data["records"]) <= 100
        delivered.extend(frame.data["records"])
    # Some arrive while the job runs; the last ones come with its completion, in the same write
    # as the success (so before the stream's end), and none twice.
    assert any(frame.data["state"] == "running" for frame in records)
    succeeded = next(f for f in stream if f.kind == "state" and f.data["state"] == "succeeded")
    assert all(frame.id is not None and succeeded.id is not None for frame in records)
    tail = [frame for frame in records if (frame.id or 0) > (succeeded.id or 0)]
    assert all(frame.data["state"] == "succeeded" for frame in tail)

    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job['id']}/result", params={"page_size": 1000}
    ) as response:
        result = await response.json()
    assert result["records"] == delivered
    assert result["total_records"] == len(delivered)
