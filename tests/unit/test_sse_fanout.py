"""SSE channels: one store read and one encoding per wake-up for every stream of a job, streams
joining at the head without a read, catch-up racing live events, slow clients dropped, ends.

A minimal app (the two SSE handlers over a MemoryStore and an EventHub) and raw-socket clients,
so every byte on the wire, chunk framing included, is what a client gets.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp import web

from gateway.auth import ALL_SCOPES, DEFAULT_TENANT, Principal
from gateway.errors import JobNotFound
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import Event, NewEvent
from gateway.store.memory import MemoryStore
from gateway.web import fanout
from gateway.web.fanout import Channel, Topic
from gateway.web.sse import SSE_KEY, all_events, job_events, setup_sse
from gateway.web.state import COMPONENTS_KEY, PRINCIPAL, Components
from tests.conftest import Serve

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class CountingStore(MemoryStore):
    """A MemoryStore whose event reads are counted and may yield to the loop first (as a real
    store's read does), so that joins, reads and publishes interleave."""

    def __init__(self, *, yields: int = 0) -> None:
        super().__init__()
        self.reads = 0
        self.yields = yields

    async def events_after(self, after_id: int, **kwargs: Any) -> list[Event]:
        self.reads += 1
        for _ in range(self.yields):
            await asyncio.sleep(0)
        return await super().events_after(after_id, **kwargs)


@dataclass
class Service:
    """What the SSE handlers use of ``JobService``."""

    store: CountingStore
    hub: EventHub = field(default_factory=EventHub)
    adapters: dict[str, None] = field(default_factory=lambda: {"pulse": None, "extract": None})
    gate: asyncio.Event | None = None
    """Holds every job read (a stream's set-up) until set."""

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        if self.gate is not None:
            await self.gate.wait()
        job = await self.store.get(job_id, tenant)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def add(
        self, job_id: str = "job_1", *, tenant: str = DEFAULT_TENANT, provider: str = "pulse"
    ) -> Job:
        job = Job(
            id=job_id,
            provider=provider,
            upstream_id=f"up-{job_id}",
            state=JobState.QUEUED,
            created_at=T0,
            updated_at=T0,
            deadline_at=T0 + timedelta(days=1),
            tenant=tenant,
        )
        self.hub.publish(await self.store.create(job, [NewEvent("created", job.public())]))
        return job

    async def emit(
        self, job: Job, kind: str = "progress", state: JobState | None = None, **data: Any
    ) -> Job:
        """Save a new version of ``job`` with one event, and publish it."""
        changed = replace(job, state=state or job.state, version=job.version + 1)
        (saved,) = await self.store.save_many([(changed, [NewEvent(kind, data)])])
        assert saved is not None
        self.hub.publish(saved[1])
        return saved[0]


def sse_app(svc: Service, *, heartbeat: float = 30.0) -> web.Application:
    @web.middleware
    async def tenant_header(request: web.Request, handler: Any) -> web.StreamResponse:
        tenant = request.headers.get("X-Tenant", DEFAULT_TENANT)
        request[PRINCIPAL] = Principal(tenant, ALL_SCOPES)
        return cast(web.StreamResponse, await handler(request))

    app = web.Application(middlewares=[tenant_header])
    settings = SimpleNamespace(server=SimpleNamespace(sse_heartbeat_seconds=heartbeat))
    components = Components(settings=cast(Any, settings))
    components.service = cast(Any, svc)
    app[COMPONENTS_KEY] = components
    setup_sse(app)
    app.router.add_get("/v1/jobs/{job_id}/events", job_events)
    app.router.add_get("/v1/events", all_events)
    return app


@dataclass
class Frame:
    kind: str
    id: int | None
    data: dict[str, Any]


def parse(raw: bytes) -> Frame | None:
    """One SSE event (``None`` for a comment or an id alone)."""
    fields: dict[str, str] = {}
    for line in raw.decode().split("\n"):
        if line and not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    if "event" not in fields and "data" not in fields:
        return None  # a comment, or the id a tenant stream opens with (where "now" was)
    raw_id = fields.get("id")
    return Frame(fields["event"], int(raw_id) if raw_id else None, orjson.loads(fields["data"]))


class Client:
    """A raw HTTP/1.x SSE client: it sees exactly what jobgate writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunked: bool):
        self.reader = reader
        self.writer = writer
        self.chunked = chunked
        self.wire = bytearray()
        """Every body byte received, as sent (frames, comments), chunk framing removed."""

    @classmethod
    async def open(
        cls,
        base: str,
        path: str,
        *,
        last_event_id: int | None = None,
        tenant: str = DEFAULT_TENANT,
        version: str = "1.1",
        rcvbuf: int | None = None,
    ) -> Client:
        url = urlsplit(base)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting: it sets the window the server may fill
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.hostname, url.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
        writer.write(
            f"GET {path} HTTP/{version}\r\nHost: {url.netloc}\r\nX-Tenant: {tenant}\r\n"
            f"{resume}\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        assert head.split(" ", 2)[1] == "200", head
        return cls(reader, writer, "transfer-encoding: chunked" in head)

    async def _more(self) -> bool:
        if not self.chunked:
            data = await self.reader.read(65536)
            self.wire += data
            return bool(data)
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await self.reader.readexactly(2)
            return False
        self.wire += (await self.reader.readexactly(size + 2))[:-2]
        return True

    async def frames(self) -> AsyncIterator[Frame]:
        """Every message until the body ends (comments skipped)."""
        done = 0
        while True:
            end = self.wire.find(b"\n\n", done)
            if end < 0:
                if not await self._more():
                    return
                continue
            frame = parse(bytes(self.wire[done : end + 2]))
            done = end + 2
            if frame is not None:
                yield frame

    async def take(self, count: int) -> list[Frame]:
        taken: list[Frame] = []
        async for frame in self.frames():
            taken.append(frame)
            if len(taken) == count:
                break
        return taken

    async def until_end(self) -> list[Frame]:
        return [frame async for frame in self.frames()]

    def close(self) -> None:
        self.writer.transport.abort()


def channel_of(app: web.Application, topic: Topic) -> Channel:
    return app[SSE_KEY].channels[topic]


async def members(app: web.Application, topic: Topic, count: int) -> Channel:
    """The topic's channel once ``count`` streams are at its head."""
    async with asyncio.timeout(10):
        while True:
            channel = app[SSE_KEY].channels.get(topic)
            if channel is not None and len(channel.members) + len(channel.ahead) >= count:
                return channel
            await asyncio.sleep(0.005)


async def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        client.close()
    await asyncio.sleep(0)


# -- one read, one encoding, the same bytes -------------------------------------------------------


async def test_one_store_read_per_publish_and_no_read_to_join_at_the_head(serve: Serve) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    path = f"/v1/jobs/{job.id}/events"
    first = await Client.open(base, path, last_event_id=1)
    await members(app, Topic(DEFAULT_TENANT, job.id), 1)
    assert svc.store.reads == 1  # the first stream found the head by reading
    clients = [first] + [await Client.open(base, path, last_event_id=1) for _ in range(49)]
    channel = await members(app, Topic(DEFAULT_TENANT, job.id), 50)
    assert svc.store.reads == 1, "streams at the head joined without a store read"
    assert svc.hub.listeners == 1, "one hub listener for the job, whatever the streams"

    await svc.emit(job, note="hello")
    got = [await client.take(1) for client in clients]
    assert svc.store.reads == 2
    assert all(frames == got[0] for frames in got)
    assert [(f.kind, f.id, f.data["note"]) for f in got[0]] == [("progress", 2, "hello")]
    assert len({bytes(client.wire) for client in clients}) == 1
    assert app[SSE_KEY].store_reads == app[SSE_KEY].reads.store_reads + 1
    assert channel.head == 2
    await close_all(clients)


async def test_streams_joining_while_events_flow_get_every_event_once(serve: Serve) -> None:
    rng = random.Random(11)
    svc = Service(CountingStore(yields=2))
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    path = f"/v1/jobs/{job.id}/events"
    started: list[tuple[int | None, asyncio.Task[list[Frame]]]] = []

    async def subscribe(after: int | None) -> list[Frame]:
        client = await Client.open(base, path, last_event_id=after)
        try:
            return await client.until_end()
        finally:
            client.close()

    async with asyncio.timeout(30):
        for step in range(80):
            if step % 3 == 0:
                ids = [event.id for event in await svc.store.events_after(0, limit=10_000)]
                after = rng.choice([None, 0, *ids, ids[-1], ids[-1]])
                started.append((after, asyncio.create_task(subscribe(after))))
            job = await svc.emit(job, step=step)
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
        await svc.emit(job, "state", JobState.SUCCEEDED)
        streams = [(after, await task) for after, task in started]
    log = [event.id for event in await svc.store.events_after(0, limit=10_000)]
    for after, frames in streams:
        assert [frame.id for frame in frames[:-1]] == [i for i in log if i > (after or 0)], after
        assert frames[-1].kind == "end"
        assert frames[-1].data == {"job_id": job.id, "state": "succeeded", "reason": "finished"}
    assert not app[SSE_KEY].channels, "the channel goes with its last stream"
    assert svc.hub.listeners == 0


async def test_a_stream_resuming_past_the_head_gets_only_what_follows_its_id(
    serve: Serve,
) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    topic = Topic(DEFAULT_TENANT)
    at_head = await Client.open(base, "/v1/events")
    channel = await members(app, topic, 1)
    assert channel.head == 1
    # A client that has seen ids 2 and 3 (through another replica, say) before this one has.
    ahead = await Client.open(base, "/v1/events", last_event_id=3)
    await members(app, topic, 2)
    assert list(channel.ahead.values()) == [3]
    for n in range(4):
        job = await svc.emit(job, n=n)
        await asyncio.sleep(0.01)  # one wake-up each: the ahead stream is passed, then joins
    async with asyncio.timeout(10):
        assert [frame.id for frame in await at_head.take(4)] == [2, 3, 4, 5]
        assert [frame.id for frame in await ahead.take(2)] == [4, 5]
    assert not channel.ahead
    await close_all([at_head, ahead])


async def test_joining_a_finished_job_while_a_continue_is_unread_waits_for_it(
    serve: Serve,
) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    path = f"/v1/jobs/{job.id}/events"
    first = await Client.open(base, path, last_event_id=1)
    channel = await members(app, Topic(DEFAULT_TENANT, job.id), 1)
    # A stream still setting up keeps the channel (and its head) after the others end.
    svc.gate = asyncio.Event()
    holding = asyncio.create_task(Client.open(base, path))
    async with asyncio.timeout(10):
        while channel.holders < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    job = await svc.emit(job, "state", JobState.SUCCEEDED)
    assert [frame.kind for frame in await first.until_end()] == ["state", "end"]
    assert channel.state is JobState.SUCCEEDED
    # A continue reopens the job; its event is published but not yet read by the channel.
    job = await svc.emit(job, "state", JobState.RUNNING)
    assert channel.wake.is_set()
    gate, svc.gate = svc.gate, None
    resumed = await Client.open(base, path, last_event_id=2)
    async with asyncio.timeout(10):
        assert [(frame.kind, frame.id) for frame in await resumed.take(1)] == [("state", 3)]
    gate.set()
    await close_all([first, resumed, await holding])


# -- ends -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_the_finishing_event_then_end_for_every_stream(serve: Serve, version: str) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    path = f"/v1/jobs/{job.id}/events"
    clients = [await Client.open(base, path, last_event_id=1, version=version) for _ in range(5)]
    await members(app, Topic(DEFAULT_TENANT, job.id), 5)
    job = await svc.emit(job, "state", JobState.CANCELED)
    for client in clients:
        async with asyncio.timeout(10):
            frames = await client.until_end()  # the body ends: the last chunk, or the close
        assert [(frame.kind, frame.id) for frame in frames] == [("state", 2), ("end", None)]
        assert frames[-1].data == {"job_id": job.id, "state": "canceled", "reason": "finished"}
    # Resuming at the end of a finished job: the end again, at once.
    again = await Client.open(base, path, last_event_id=2, version=version)
    assert [frame.kind for frame in await again.until_end()] == ["end"]
    await close_all([*clients, again])


async def test_a_deleted_job_ends_its_streams_at_the_next_heartbeat(serve: Serve) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc, heartbeat=0.05)
    base = await serve(app)
    job = await svc.add()
    clients = [await Client.open(base, f"/v1/jobs/{job.id}/events") for _ in range(3)]
    await members(app, Topic(DEFAULT_TENANT, job.id), 3)
    assert await svc.store.delete(job.id)
    for client in clients:
        async with asyncio.timeout(10):
            frames = await client.until_end()
        assert [frame.kind for frame in frames] == ["created", "end"]
        assert frames[-1].data["reason"] == "deleted"
    await close_all(clients)


async def test_a_stream_whose_client_left_is_dropped_and_its_channel_closed(serve: Serve) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc, heartbeat=0.05)
    base = await serve(app)
    job = await svc.add()
    clients = [await Client.open(base, f"/v1/jobs/{job.id}/events") for _ in range(3)]
    await members(app, Topic(DEFAULT_TENANT, job.id), 3)
    await close_all(clients)
    async with asyncio.timeout(10):
        while app[SSE_KEY].channels or svc.hub.listeners:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- slow clients ---------------------------------------------------------------------------------


async def test_a_client_that_does_not_read_is_dropped_and_the_others_go_on(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "MAX_BUFFERED", 64 * 1024)
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    job = await svc.add()
    path = f"/v1/jobs/{job.id}/events"
    topic = Topic(DEFAULT_TENANT, job.id)
    slow = await Client.open(base, path, last_event_id=1, rcvbuf=4096)
    channel = await members(app, topic, 1)
    (stalled,) = channel.members
    # Its server side holds little in the kernel, so what it does not read stays in the process.
    server_side = stalled.transport.get_extra_info("socket")
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fast = await Client.open(base, path, last_event_id=1)
    await members(app, topic, 2)
    payload = "x" * 16_384
    reader = asyncio.create_task(fast.take(60))
    for n in range(60):
        job = await svc.emit(job, n=n, payload=payload)
        await asyncio.sleep(0.001)
    async with asyncio.timeout(10):
        got = await reader
    assert [frame.data["n"] for frame in got] == list(range(60))
    assert stalled not in channel.members
    assert stalled.transport.is_closing()
    assert stalled.done.done()
    # What it was sent before the drop is a prefix of the stream: it resumes from its last id.
    await close_all([slow, fast])


# -- tenant streams -------------------------------------------------------------------------------


async def test_tenant_streams_share_a_channel_per_tenant_and_filter_never_across(
    serve: Serve,
) -> None:
    svc = Service(CountingStore())
    app = sse_app(svc)
    base = await serve(app)
    await svc.add("job_0")  # so that "now" is past something
    alice = [await Client.open(base, "/v1/events", tenant="alice") for _ in range(3)]
    bob = await Client.open(base, "/v1/events", tenant="bob")
    pulse_only = await Client.open(base, "/v1/events?provider=pulse", tenant="alice")
    await members(app, Topic("alice"), 3)
    await members(app, Topic("bob"), 1)
    await members(app, Topic("alice", None, ("pulse",)), 1)
    a1 = await svc.add("job_a1", tenant="alice")
    b1 = await svc.add("job_b1", tenant="bob")
    a2 = await svc.add("job_a2", tenant="alice", provider="extract")
    await svc.emit(a1, note="a1")
    await svc.emit(b1, note="b1")
    await svc.emit(a2, note="a2")
    async with asyncio.timeout(10):
        for client in alice:
            frames = await client.take(4)
            assert [f.data["job_id"] for f in frames] == ["job_a1", "job_a2", "job_a1", "job_a2"]
        assert [f.data["job_id"] for f in await bob.take(2)] == ["job_b1", "job_b1"]
        assert [f.data["job_id"] for f in await pulse_only.take(2)] == ["job_a1", "job_a1"]
    assert len(app[SSE_KEY].channels) == 3
    await close_all([*alice, bob, pulse_only])
