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
- A client that does not read what it is sent is disconnected once more than
  :data:`~gateway.web.fanout.MAX_BUFFERED` bytes wait for it; it resumes with its
  ``Last-Event-ID`` like any other.

This module parses the requests and runs each stream's handler; the streams themselves are written
by their channel (:mod:`gateway.web.fanout`), which is where their cost is kept down.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web

from gateway.states import JobState
from gateway.web.fanout import Member, SseState, Topic
from gateway.web.problems import BadInput
from gateway.web.state import COMPONENTS_KEY, tenant_of

_MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER

SSE_KEY = web.AppKey("sse", SseState)


def setup_sse(app: web.Application) -> None:
    app[SSE_KEY] = SseState()
    app.on_shutdown.append(_close_streams)


async def _close_streams(app: web.Application) -> None:
    """End every open stream, so that shutdown does not wait out the server's grace period for
    clients that never hang up. Each client reconnects elsewhere with its Last-Event-ID."""
    state = app[SSE_KEY]
    state.closing = True
    for channel in list(state.channels.values()):
        channel.close()


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


async def job_events(request: web.Request) -> web.StreamResponse:
    app = request.app
    components = app[COMPONENTS_KEY]
    svc = components.require_service()
    job_id = request.match_info["job_id"]
    after = last_event_id(request)
    tenant = tenant_of(request)
    heartbeat = components.settings.server.sse_heartbeat_seconds
    # Held (and so listening) before the job is read, so nothing committed after goes unnoticed.
    channel = app[SSE_KEY].channel(svc, Topic(tenant, job_id), heartbeat)
    member: Member | None = None
    try:
        job = await svc.get(job_id, tenant)
        response, member = await channel.open(request, after or 0, job.state)
        if member is not None:
            await member.done  # the stream's life at the head: written to by its channel
        await channel.finish(response, member)
        return response
    finally:
        channel.release(member)


async def all_events(request: web.Request) -> web.StreamResponse:
    app = request.app
    components = app[COMPONENTS_KEY]
    svc = components.require_service()
    providers = query_values(request, "provider", svc.adapters)
    states = query_values(request, "state", [state.value for state in JobState])
    after = last_event_id(request)
    topic = Topic(tenant_of(request), None, providers, tuple(JobState(s) for s in states))
    sse = app[SSE_KEY]
    channel = sse.channel(svc, topic, components.settings.server.sse_heartbeat_seconds)
    member: Member | None = None
    try:
        announce = after is None
        if after is None:
            after = await sse.now(svc, channel)
        response, member = await channel.open(request, after, None, announce=announce)
        if member is not None:
            await member.done
        await channel.finish(response, member)
        return response
    finally:
        channel.release(member)
