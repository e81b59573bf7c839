"""Server-Sent Events: ``GET /v1/jobs/{job_id}/events`` and ``GET /v1/events``.

Every event comes from the store's event log and carries its id (``id:``), its kind (``event:``:
``created``, ``state``, ``progress``, ``records``, ...) and its data plus ``job_id``, ``provider``
and ``state`` (``data:``, one line of JSON). A client that reconnects with ``Last-Event-ID`` (or
``?last_event_id=`` for EventSource polyfills that cannot set headers; the header wins) gets every
later event exactly once, across gateway restarts too: the ids live in the store.

- A job stream without ``Last-Event-ID`` starts with the job's whole history (from id 0), so a
  client that connects late still sees ``created`` and every change since. Once it has sent the
  event that leaves the job finished (succeeded, failed, canceled, expired) and nothing newer is
  waiting, it sends ``event: end`` (without an id, so the client's Last-Event-ID stays put) and
  closes. An EventSource client should ``close()`` on ``end``; one that reconnects anyway gets
  ``end`` again, or the events of a ``continue`` that reopened the job. A deleted job's stream
  ends the same way, with ``"reason": "deleted"``.
- The tenant stream, ``/v1/events``, starts "now" unless ``Last-Event-ID`` is given, can be
  filtered by ``provider`` and ``state`` (the job's state when the event was written; repeat the
  parameter or separate values with commas) and ends only when the client or the gateway goes.
- An idle stream gets a ``: keep-alive`` comment every ``server.sse_heartbeat_seconds``.

Cost: a stream holds one hub listener (an ``asyncio.Event``) and reads the store only when woken.
:class:`EventReads` coalesces identical reads, so a thousand clients of one job, woken by one
publish, cause one store read and one JSON encoding between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import partial

import orjson
from aiohttp import web

from gateway.auth import DEFAULT_TENANT
from gateway.events import EventHub, wait_set
from gateway.states import FINISHED, JobState
from gateway.store.base import Event, JobStore
from gateway.web.problems import BadInput
from gateway.web.state import COMPONENTS_KEY, tenant_of

BATCH = 200
"""Events per store read; a longer backlog is sent in several writes."""

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx buffers proxied responses unless told not to, which would hold events back.
    "X-Accel-Buffering": "no",
}
KEEP_ALIVE = b": keep-alive\n\n"
_MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER

_Key = tuple[str, str | None, int, tuple[str, ...], tuple[JobState, ...]]


@dataclass(frozen=True, slots=True)
class Batch:
    """Events read from the log, with their wire form encoded once for every stream that shares
    the read."""

    events: list[Event]
    payload: bytes


def encode(event: Event) -> bytes:
    data = {
        **event.data,
        "job_id": event.job_id,
        "provider": event.provider,
        "state": event.state.value,
    }
    # orjson never emits a raw newline, so the JSON always fits on one ``data:`` line.
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.kind.encode(), orjson.dumps(data))


class EventReads:
    """One store read for many identical requests (same job or filters, same position).

    A reader may share a read only if it started after every publish the reader has seen: the
    hub's ``last_id`` when the read started (its *mark*) must be at least the hub's ``last_id``
    now. Readers clear their hub listener just before asking, so a shared read can never hide an
    event whose wake-up they consumed. That rests on the store numbering events in commit order
    and the hub publishing after commit, which holds for the single-writer stores here. Finished
    reads linger briefly so that late wakers share them too; the mark keeps that safe, the linger
    only bounds memory.
    """

    def __init__(self, *, limit: int = BATCH, linger: float = 1.0) -> None:
        self.limit = limit
        self.linger = linger
        self.store_reads = 0
        """Reads that went to the store (the rest were shared); for tests and benchmarks."""
        self._reads: dict[_Key, tuple[int, asyncio.Task[Batch]]] = {}

    async def read(
        self,
        store: JobStore,
        hub: EventHub,
        after: int,
        *,
        tenant: str = DEFAULT_TENANT,
        job_id: str | None = None,
        providers: tuple[str, ...] = (),
        states: tuple[JobState, ...] = (),
    ) -> Batch:
        # The tenant is part of the key: two tenants' streams never share a read.
        key: _Key = (tenant, job_id, after, providers, states)
        mark = hub.last_id
        entry = self._reads.get(key)
        if entry is None or entry[0] < mark:
            task = asyncio.get_running_loop().create_task(
                self._fetch(store, after, tenant, job_id, providers, states)
            )
            entry = (mark, task)
            self._reads[key] = entry
            self.store_reads += 1
            task.add_done_callback(partial(self._settled, key, entry))
        # Shielded: one reader leaving (its client hung up) must not cancel the others' read.
        return await asyncio.shield(entry[1])

    async def _fetch(
        self,
        store: JobStore,
        after: int,
        tenant: str,
        job_id: str | None,
        providers: Sequence[str],
        states: Sequence[JobState],
    ) -> Batch:
        events = await store.events_after(
            after,
            job_id=job_id,
            tenant=tenant,
            providers=providers,
            states=states,
            limit=self.limit,
        )
        return Batch(events, b"".join(encode(event) for event in events))

    def _settled(
        self, key: _Key, entry: tuple[int, asyncio.Task[Batch]], task: asyncio.Task[Batch]
    ) -> None:
        # Retrieving the exception marks it handled even if every reader has gone; the readers
        # still awaiting get it through the shield.
        if task.cancelled() or task.exception() is not None:
            self._forget(key, entry)
        else:
            task.get_loop().call_later(self.linger, self._forget, key, entry)

    def _forget(self, key: _Key, entry: tuple[int, asyncio.Task[Batch]]) -> None:
        if self._reads.get(key) is entry:
            del self._reads[key]


@dataclass
class SseState:
    """Per app: the shared reads, and the listeners of open streams (woken at shutdown)."""

    reads: EventReads = field(default_factory=EventReads)
    listeners: set[asyncio.Event] = field(default_factory=set)
    closing: bool = False


SSE_KEY = web.AppKey("sse", SseState)


def setup_sse(app: web.Application) -> None:
    app[SSE_KEY] = SseState()
    app.on_shutdown.append(_close_streams)


async def _close_streams(app: web.Application) -> None:
    """End every open stream, so that shutdown does not wait out the server's grace period for
    clients that never hang up. Each client reconnects elsewhere with its Last-Event-ID."""
    state = app[SSE_KEY]
    state.closing = True
    for listener in state.listeners:
        listener.set()


# -- request parsing ------------------------------------------------------------------------------


def last_event_id(request: web.Request) -> int | None:
    """The id to resume after: the ``Last-Event-ID`` header, else ``?last_event_id=``."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    name, code = "Last-Event-ID", "invalid_header"
    if not raw:
        raw = request.query.get("last_event_id", "").strip()
        name, code = "last_event_id", "invalid_query"
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > _MAX_EVENT_ID:
        raise BadInput(code, f"{name} must be an event id (a whole number >= 0), got {raw!r}")
    return int(raw)


def query_values(request: web.Request, name: str, allowed: Collection[str]) -> tuple[str, ...]:
    """A repeatable, comma-separable filter: ``?state=succeeded&state=failed`` or
    ``?state=succeeded,failed``; each value must be one of ``allowed``."""
    found: set[str] = set()
    for raw in request.query.getall(name, []):
        for item in raw.split(","):
            value = item.strip()
            if value not in allowed:
                known = ", ".join(sorted(allowed))
                raise BadInput("invalid_query", f"{name} must be one of {known}, got {value!r}")
            found.add(value)
    return tuple(sorted(found))


# -- handlers -------------------------------------------------------------------------------------


@dataclass
class _Cursor:
    after: int
    tenant: str
    job_id: str | None = None
    providers: tuple[str, ...] = ()
    states: tuple[JobState, ...] = ()
    state: JobState | None = None
    """The job's state as of the last event sent (job streams only)."""


async def job_events(request: web.Request) -> web.StreamResponse:
    svc = request.app[COMPONENTS_KEY].require_service()
    job_id = request.match_info["job_id"]
    after = last_event_id(request)
    # Registered before the first read, so nothing committed in between goes unnoticed.
    tenant = tenant_of(request)
    with svc.hub.listen(job_id) as listener:
        job = await svc.get(job_id, tenant)
        cursor = _Cursor(after=after or 0, tenant=tenant, job_id=job_id, state=job.state)
        return await _stream(request, listener, cursor)


async def all_events(request: web.Request) -> web.StreamResponse:
    svc = request.app[COMPONENTS_KEY].require_service()
    providers = query_values(request, "provider", svc.adapters)
    states = query_values(request, "state", [state.value for state in JobState])
    after = last_event_id(request)
    with svc.hub.listen(None) as listener:
        if after is None:
            after = await svc.store.last_event_id()
        cursor = _Cursor(
            after=after,
            tenant=tenant_of(request),
            providers=providers,
            states=tuple(JobState(s) for s in states),
        )
        return await _stream(request, listener, cursor)


async def _stream(
    request: web.Request, listener: asyncio.Event, cursor: _Cursor
) -> web.StreamResponse:
    state = request.app[SSE_KEY]
    response = web.StreamResponse(status=200, headers=HEADERS)
    await response.prepare(request)
    state.listeners.add(listener)
    try:
        await _pump(request, response, listener, cursor)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client hung up: the usual way for a stream to end
    finally:
        state.listeners.discard(listener)
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, listener: asyncio.Event, cursor: _Cursor
) -> None:
    components = request.app[COMPONENTS_KEY]
    svc = components.require_service()
    state = request.app[SSE_KEY]
    heartbeat = components.settings.server.sse_heartbeat_seconds
    while not state.closing:
        batch = await state.reads.read(
            svc.store,
            svc.hub,
            cursor.after,
            tenant=cursor.tenant,
            job_id=cursor.job_id,
            providers=cursor.providers,
            states=cursor.states,
        )
        if batch.events:
            await response.write(batch.payload)
            last = batch.events[-1]
            cursor.after, cursor.state = last.id, last.state
            if cursor.job_id is not None and last.kind == "deleted":
                await response.write(_end(cursor, "deleted"))
                return
            if len(batch.events) >= state.reads.limit:
                continue  # more is waiting: no need to wait for a wake-up
        if cursor.job_id is not None and cursor.state in FINISHED:
            await response.write(_end(cursor, "finished"))
            return
        if await wait_set(listener, heartbeat) or state.closing:
            continue
        # A deleted job publishes nothing: notice it at heartbeat pace rather than never.
        if cursor.job_id is not None and await svc.store.get(cursor.job_id, cursor.tenant) is None:
            await response.write(_end(cursor, "deleted"))
            return
        await response.write(KEEP_ALIVE)


def _end(cursor: _Cursor, reason: str) -> bytes:
    data = {
        "job_id": cursor.job_id,
        "state": cursor.state.value if cursor.state else None,
        "reason": reason,
    }
    return b"event: end\ndata: %s\n\n" % orjson.dumps(data)
