"""Fan-out of SSE streams: the streams of one job (or of one tenant with the same filters) share a
:class:`Channel`, which holds the one hub listener. Woken by a publish, it reads the log once from
its *head* (the last event every member has been sent), encodes the events once, and writes the
same bytes to every member's transport: no task, coroutine, JSON encoding or store read per member.
A client joins at the head without a store read when its ``Last-Event-ID`` is the head; one further
behind (a first connection's history, an old ``Last-Event-ID``) catches up from the log on its own,
with the reads of clients at the same position shared (:class:`EventReads`), and then joins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import structlog
from aiohttp import hdrs, web

from gateway.events import wait_set
from gateway.states import FINISHED, JobState
from gateway.store.base import Event
from gateway.web.event_reads import BATCH, EventReads, encode, end_frame

if TYPE_CHECKING:
    from gateway.service import JobService

log = structlog.get_logger("jobgate.sse")

MAX_BUFFERED = 256 * 1024
"""Bytes a member's transport may hold unsent before the next write drops the client."""

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told not to, which would hold events back.
    "X-Accel-Buffering": "no",
}
KEEP_ALIVE = b": keep-alive\n\n"


class Topic(NamedTuple):
    """What a channel carries: one job's events, or a tenant's with filters. The tenant is in
    every topic, so two tenants never share a channel."""

    tenant: str
    job_id: str | None = None
    providers: tuple[str, ...] = ()
    states: tuple[JobState, ...] = ()


class Member:
    """A stream at its channel's head: its connection and what its handler waits on."""

    __slots__ = ("chunked", "done", "transport")

    def __init__(
        self, transport: asyncio.Transport, chunked: bool, done: asyncio.Future[None]
    ) -> None:
        self.transport = transport
        self.chunked = chunked
        self.done = done


class Wire:
    """Bytes for every member, encoded once: as they are (HTTP/1.0, the connection is the body's
    end) and as one HTTP/1.1 chunk."""

    __slots__ = ("chunk", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.chunk = b"%x\r\n%b\r\n" % (len(raw), raw)


class Channel:
    """The streams of one :class:`Topic`: one hub listener, one store read per wake-up, one
    encoding, the same bytes written to every member.

    ``head`` is the id of the last event every member has been sent (``None`` until the first
    stream has caught up). The listener is registered when the channel is made, before any read
    of its streams, so every event committed after a read that set or moved the head wakes it.
    Members whose client gave an id past the head (``ahead``) are sent only what follows it.
    The channel lives while a handler holds it (:meth:`SseState.channel`, :meth:`release`).
    """

    def __init__(self, sse: SseState, svc: JobService, topic: Topic, heartbeat: float) -> None:
        self.sse = sse
        self.svc = svc
        self.topic = topic
        self.heartbeat = heartbeat
        self.head: int | None = None
        self.state: JobState | None = None
        """The job's state as of the head (job channels only)."""
        self.members: set[Member] = set()
        self.ahead: dict[Member, int] = {}
        self.holders = 0
        self.closed = False
        self.reading = False
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()
        self._listening = contextlib.ExitStack()
        self.wake = self._listening.enter_context(svc.hub.listen(topic.job_id))

    # -- a stream's life --------------------------------------------------------------------------

    async def open(
        self, request: web.Request, after: int, state: JobState | None, *, announce: bool = False
    ) -> tuple[web.StreamResponse, Member | None]:
        """Start the stream from ``after`` (``state``: the job's, as the handler last read it)
        and catch it up to the head. The member, once it has joined: its handler then awaits
        ``member.done`` and nothing else, so a stream at the head holds no coroutine of its own.
        ``None`` if the stream has already ended.

        ``announce``: first send ``after`` as a message with an id and no data. A client that
        started "from now" then knows where now was: EventSource (and jobgate.client) resume
        from it if the connection drops before the first event, instead of from a later now."""
        response = web.StreamResponse(status=200, headers=HEADERS)
        await response.prepare(request)
        try:
            if announce:
                await response.write(b"id: %d\n\n" % after)
            return response, await self._catch_up(request, response, after, state)
        except ConnectionResetError:
            return response, None  # the client hung up

    async def finish(self, response: web.StreamResponse, member: Member | None) -> None:
        """End the response, once its member is done (ended, dropped or shut down)."""
        if member is not None:
            self._leave(member)
        with contextlib.suppress(ConnectionResetError):  # the client hung up, or was dropped
            await response.write_eof()

    async def _catch_up(
        self, request: web.Request, response: web.StreamResponse, after: int, state: JobState | None
    ) -> Member | None:
        """Send what lies between ``after`` and the head, then join; ``None`` if the stream
        ended instead (its end frame written)."""
        topic, job_stream = self.topic, self.topic.job_id is not None
        while not self.sse.closing:
            head = self.head
            if head is not None and (after == head or (after > head and not job_stream)):
                if job_stream and self.state in FINISHED and not self._may_move():
                    await response.write(end_frame(topic.job_id, self.state, "finished"))
                    return None
                return self._join(request, response, after)
            batch = await self.sse.reads.read(
                self.svc.store,
                self.svc.hub,
                after,
                tenant=topic.tenant,
                job_id=topic.job_id,
                providers=topic.providers,
                states=topic.states,
            )
            if batch.events:
                await response.write(batch.payload)
                last = batch.events[-1]
                after, state = last.id, last.state
                if job_stream and last.kind == "deleted":
                    await response.write(end_frame(topic.job_id, state, "deleted"))
                    return None
                if len(batch.events) >= self.sse.reads.limit:
                    continue  # more is waiting
            if job_stream and state in FINISHED:
                await response.write(end_frame(topic.job_id, state, "finished"))
                return None
            if self.head is None:
                self.head, self.state = after, state
            if after >= self.head:
                return self._join(request, response, after)
            # The channel moved past this read meanwhile: read up to it again.
        return None

    def _may_move(self) -> bool:
        """Whether events after the head may be waiting: a publish not yet read, or a read in
        flight (whose result a joining member gets)."""
        return self.reading or self.wake.is_set()

    def _join(
        self, request: web.Request, response: web.StreamResponse, after: int
    ) -> Member | None:
        transport = request.transport
        if self.closed or transport is None or transport.is_closing():
            return None
        chunked = response.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"
        member = Member(transport, chunked, self._loop.create_future())
        assert self.head is not None
        if after > self.head:
            self.ahead[member] = after
        else:
            self.members.add(member)
        if self.task is None:
            self.task = self._loop.create_task(self._run(), name="jobgate-sse-channel")
        return member

    def _leave(self, member: Member) -> None:
        self.members.discard(member)
        self.ahead.pop(member, None)

    def release(self, member: Member | None = None) -> None:
        """A handler is done with this channel (and its member); the last one closes it."""
        if member is not None:
            self._leave(member)
        self.holders -= 1
        if self.holders == 0:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.sse.channels.get(self.topic) is self:
            del self.sse.channels[self.topic]
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._listening.close()
        self._settle([*self.members, *self.ahead])

    # -- the broadcast ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.members or self.ahead:
                left = self.heartbeat - (self._loop.time() - self._last_write)
                if await wait_set(self.wake, left) and not self.sse.closing:
                    await self._step()
                elif self._loop.time() - self._last_write >= self.heartbeat:
                    await self._keep_alive()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A store outage: drop the members, who reconnect with their Last-Event-ID.
            log.exception("sse.channel_failed", job_id=self.topic.job_id)
            self._drop_all()
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    async def _step(self) -> None:
        topic = self.topic
        while True:
            assert self.head is not None
            self.reading = True
            try:
                events = await self.svc.store.events_after(
                    self.head,
                    job_id=topic.job_id,
                    tenant=topic.tenant,
                    providers=topic.providers,
                    states=topic.states,
                    limit=BATCH,
                )
            finally:
                self.reading = False
            self.sse.broadcast_reads += 1
            full = len(events) >= BATCH
            reason: str | None = None
            if events:
                self.head, self.state = events[-1].id, events[-1].state
                if topic.job_id is not None and events[-1].kind == "deleted":
                    reason = "deleted"
            finished = topic.job_id is not None and not full and self.state in FINISHED
            if reason is None and finished:
                reason = "finished"
            self._deliver(events, reason)
            if not full or not (self.members or self.ahead):
                return

    def _deliver(self, events: list[Event], reason: str | None) -> None:
        """Write ``events`` (and the end frame, for ``reason``) to every member."""
        ending = b"" if reason is None else end_frame(self.topic.job_id, self.state, reason)
        if not events and not ending:
            return
        frames = [encode(event) for event in events]
        for member in self._write_all(self.members, Wire(b"".join(frames) + ending)):
            self.members.discard(member)
        head = self.head
        for member, after in list(self.ahead.items()):
            if head is None or after > head:
                continue  # still ahead: none of this is news to it
            del self.ahead[member]
            rest = [frame for event, frame in zip(events, frames, strict=True) if event.id > after]
            if (rest or ending) and self._write_all((member,), Wire(b"".join(rest) + ending)):
                continue
            self.members.add(member)
        self._last_write = self._loop.time()
        if ending:
            # The members have been sent the end; members ahead wait for events past the head.
            self._settle(self.members)
            self.members = set()

    async def _keep_alive(self) -> None:
        job_id = self.topic.job_id
        # A deleted job publishes nothing: notice it at heartbeat pace rather than never.
        if job_id is not None and await self.svc.store.get(job_id, self.topic.tenant) is None:
            every = [*self.members, *self.ahead]
            self._write_all(every, Wire(end_frame(job_id, self.state, "deleted")))
            self._settle(every)
            self.members, self.ahead = set(), {}
            return
        wire = Wire(KEEP_ALIVE)
        for member in [*self._write_all(self.members, wire), *self._write_all(self.ahead, wire)]:
            self._leave(member)
        self._last_write = self._loop.time()

    @staticmethod
    def _write_all(members: Iterable[Member], wire: Wire) -> list[Member]:
        """Write ``wire`` to each member's transport. The members that are gone, or hold more
        than :data:`MAX_BUFFERED` unsent bytes, are dropped instead (their streams end) and
        returned."""
        chunk, raw = wire.chunk, wire.raw
        dropped: list[Member] = []
        for member in members:
            transport = member.transport
            if transport.is_closing() or transport.get_write_buffer_size() > MAX_BUFFERED:
                dropped.append(member)
            else:
                transport.write(chunk if member.chunked else raw)
        for member in dropped:
            member.transport.abort()  # frees what it holds now; its handler sees the reset
            if not member.done.done():
                member.done.set_result(None)
        return dropped

    def _drop_all(self) -> None:
        every = [*self.members, *self.ahead]
        for member in every:
            member.transport.abort()
        self._settle(every)
        self.members, self.ahead = set(), {}

    @staticmethod
    def _settle(members: Collection[Member]) -> None:
        for member in members:
            if not member.done.done():
                member.done.set_result(None)


@dataclass
class SseState:
    """Per app: the channels of open streams, and the catch-up reads they share."""

    reads: EventReads = field(default_factory=EventReads)
    channels: dict[Topic, Channel] = field(default_factory=dict)
    closing: bool = False
    known_head: int = 0
    """The log's last id as last read here, for tenant streams starting "now"."""
    broadcast_reads: int = 0
    """Store reads made by channels (one per wake-up, whatever the number of members)."""

    @property
    def store_reads(self) -> int:
        """Every store read of the log made for streams; for tests and benchmarks."""
        return self.reads.store_reads + self.broadcast_reads

    def channel(self, svc: JobService, topic: Topic, heartbeat: float) -> Channel:
        """The topic's channel, held until :meth:`Channel.release`."""
        channel = self.channels.get(topic)
        if channel is None:
            channel = self.channels[topic] = Channel(self, svc, topic, heartbeat)
        channel.holders += 1
        return channel

    async def now(self, svc: JobService, channel: Channel) -> int:
        """The id a stream starting "now" resumes after: the last one published here, without
        a store read once this process has published or read any. An event committed a moment
        before (and not yet published here) is sent, as if the client had connected earlier."""
        known = max(svc.hub.last_id, self.known_head, channel.head or 0)
        if known == 0:
            known = self.known_head = await svc.store.last_event_id()
        return known
