"""Event streams (sans-I/O): jobgate's SSE messages as typed :class:`Event` objects, and the
reconnect rules that deliver each of them once across dropped connections and restarts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from gateway.web.models import EndEventData, JobEventData, RecordsEventData, StateEventData
from jobgate.client.core import Call, job_path, nothing, problem_from
from jobgate.client.errors import GatewayUnreachable, StreamError, UnexpectedAnswer
from jobgate.client.sse import SSEDecoder

MAX_ADVISED_WAIT = 300.0
"""The longest the server's reconnect advice (``retry:``, Retry-After) is followed: past five
minutes, a stream that is meant to be live is better retried (and refused again) than left
silent for longer."""
EVENT_STREAM = "text/event-stream"

EventData = JobEventData | StateEventData | RecordsEventData | EndEventData

EVENT_MODELS: dict[str, type[EventData]] = {
    "created": JobEventData,
    "state": StateEventData,
    "progress": JobEventData,
    "records": RecordsEventData,
    "end": EndEventData,
}
"""The data model of each event name (the gateway's ``routes.JOB_EVENTS`` plus ``end``)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a stream: its id in the gateway's event log (``None`` for ``end``), its name,
    its data as the gateway's model, and the decoded JSON as sent."""

    id: int | None
    event: str
    data: EventData
    raw: dict[str, Any] = field(repr=False)


def _values(value: str | Sequence[str] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return ",".join(value)


class EventStream:
    """An SSE subscription that survives dropped connections.

    Each (re)connect sends ``Last-Event-ID`` with the last id received, and events at or below it
    are dropped, so each event reaches the caller once and in order. The last id also moves
    with a data-less ``id:`` line (the gateway opens a stream with ``id: <head>``), so a
    reconnect before the first event resumes from where the stream stood, not from "now".

    A job's stream is over at ``event: end``; the tenant's never ends by itself. A drop, a
    refused connection or a 5xx/429 is retried after a backoff: 0.1 s, doubling, at most
    ``max_reconnect_wait``, jittered by ``rand``; but never sooner than the server asked
    (its ``retry:`` field or Retry-After, followed up to :data:`MAX_ADVISED_WAIT`).
    ``max_reconnects`` consecutive failures with nothing received give up. A 4xx (a deleted
    job's 404, a bad filter) is raised at once.

    Event data is read with the gateway's models, minus any top-level field this client does not
    know (a newer gateway's addition); an event kind it does not know is skipped. Data that still
    does not read raises :class:`UnexpectedAnswer`.
    """

    def __init__(
        self,
        job_id: str | None = None,
        *,
        provider: str | Sequence[str] | None = None,
        state: str | Sequence[str] | None = None,
        last_event_id: int | None = None,
        reconnect: bool = True,
        max_reconnect_wait: float = 5.0,
        max_reconnects: int | None = 20,
        rand: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.job_id = job_id
        self.path = "/v1/events" if job_id is None else job_path(job_id, "/events")
        params: list[tuple[str, str]] = []
        providers, states = _values(provider), _values(state)
        if job_id is not None and (providers or states):
            raise ValueError("provider and state filter /v1/events, not one job's stream")
        if providers:
            params.append(("provider", providers))
        if states:
            params.append(("state", states))
        self.params = tuple(params)
        self.last_id = last_event_id
        self.reconnect = reconnect
        self.max_reconnect_wait = max_reconnect_wait
        self.max_reconnects = max_reconnects
        self.rand = rand
        self.failures = 0
        self.connects = 0
        self.done = False
        self._decoder = SSEDecoder()

    def next_call(self) -> Call[None] | None:
        """The request that opens (or reopens) the stream; ``None`` once it is over."""
        if self.done:
            return None
        headers = [("Accept", "text/event-stream"), ("Cache-Control", "no-cache")]
        if self.last_id is not None:
            headers.append(("Last-Event-ID", str(self.last_id)))
        return Call(
            "GET",
            self.path,
            nothing,
            params=self.params,
            headers=tuple(headers),
            idempotent=True,
        )

    def opened(self, status: int, content_type: str) -> bool:
        """Whether the answer is the stream (``True``); otherwise the driver reads its body and
        calls :meth:`refused`."""
        self.connects += 1
        self._decoder.reset()
        return status == 200 and content_type.split(";")[0].strip() == EVENT_STREAM

    def refused(self, response: httpx.Response, now: datetime) -> float:
        """An answer that is not the stream: raise it, or the seconds to wait to reconnect."""
        if response.status_code == 200:
            answered = response.headers.get("content-type")
            raise StreamError(f"{self.path} answered {answered!r}, not {EVENT_STREAM}")
        problem = problem_from(response, now)
        if not self.reconnect or not (response.status_code >= 500 or response.status_code == 429):
            raise problem
        return self._backoff(problem.retry_after, lambda: problem)

    def feed(self, chunk: bytes) -> list[Event]:
        if chunk:
            self.failures = 0  # the connection works: the next drop starts the backoff over
        events: list[Event] = []
        for message in self._decoder.feed(chunk):
            event = self._event(message.event, message.data, message.id if message.has_id else None)
            if event is None:
                continue
            events.append(event)
            if event.event == "end":
                self.done = True
                return events
        self._follow_decoder()
        return events

    def _follow_decoder(self) -> None:
        """Take the decoder's last id when it is past ours: a data-less ``id:`` line."""
        raw = self._decoder.last_event_id
        if raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 20:
            seen = int(raw)
            if self.last_id is None or seen > self.last_id:
                self.last_id = seen

    def dropped(self, reason: str | None, url: str) -> float | None:
        """The connection ended without ``end`` (``reason`` is the transport error, or ``None``
        for a clean close): seconds to wait before reconnecting, or ``None`` when the stream is
        over (no reconnects asked for, and the server closed it cleanly)."""
        self._decoder.reset()
        if not self.reconnect:
            if reason is None:
                self.done = True
                return None
            raise GatewayUnreachable(url, reason)
        return self._backoff(None, lambda: GatewayUnreachable(url, reason or "stream closed"))

    def _backoff(self, advised: float | None, give_up: Callable[[], Exception]) -> float:
        if self.max_reconnects is not None and self.failures >= self.max_reconnects:
            raise give_up()
        backoff = min(self.max_reconnect_wait, 0.1 * 2.0**self.failures)
        # Jitter: clients dropped together by a restart should not all come back at once.
        delay = backoff * (0.5 + self.rand() / 2)
        asked = [] if advised is None else [advised]
        if self._decoder.retry is not None:
            asked.append(self._decoder.retry / 1000)
        if asked:
            # The server's advice is a floor ("not before"), so its jitter only adds.
            floor = min(max(asked), MAX_ADVISED_WAIT)
            delay = max(delay, floor * (1 + self.rand() / 4))
        self.failures += 1
        return delay

    def _event(self, name: str, data: str, raw_id: str | None) -> Event | None:
        event_id: int | None = None
        if raw_id is not None:
            if not (raw_id.isascii() and raw_id.isdigit()):
                return None  # not one of the gateway's ids: nothing to resume from
            event_id = int(raw_id)
            if self.last_id is not None and event_id <= self.last_id:
                return None  # already delivered before a reconnect
        model = EVENT_MODELS.get(name)
        if model is None:
            # A kind this client does not know: skipped, but its id is still the position.
            if event_id is not None:
                self.last_id = event_id
            return None
        parsed, raw = _read(model, data)
        if parsed is None or raw is None:
            raise UnexpectedAnswer(200, EVENT_STREAM, data.encode(), what=f"a {name!r} event")
        if event_id is not None:
            self.last_id = event_id
        return Event(event_id, name, parsed, raw)


def _read(model: type[EventData], data: str) -> tuple[EventData | None, dict[str, Any] | None]:
    """The event's data as ``model``, its unknown top-level fields left out (the models forbid
    extra fields; a newer gateway may add some), and the JSON as sent; ``None`` if it does not
    read (the caller raises, outside this ``except``)."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    known = {field.alias or name for name, field in model.model_fields.items()}
    try:
        return model.model_validate({k: v for k, v in raw.items() if k in known}), raw
    except ValueError:
        return None, None
