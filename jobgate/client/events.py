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
from jobgate.client.errors import GatewayUnreachable, StreamError
from jobgate.client.sse import SSEDecoder

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
    are dropped, so each event reaches the caller once and in order. A job's stream is over at
    ``event: end``; the tenant's never ends by itself. A drop, a refused connection or a 5xx is
    retried after a backoff (the server's ``retry:`` advice, else 0.1 s, doubling, at most
    ``max_reconnect_wait``, jittered by ``rand``); ``max_reconnects`` consecutive failures with
    nothing received give up. A 4xx (a deleted job's 404, a bad filter) is raised at once.
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

    def next_call(self) -> Call[None]:
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
        return status == 200 and content_type.split(";")[0].strip() == "text/event-stream"

    def refused(self, response: httpx.Response, now: datetime) -> float:
        """An answer that is not the stream: raise it, or the seconds to wait to reconnect."""
        if response.status_code == 200:
            raise StreamError(
                f"{self.path} answered {response.headers.get('content-type')!r}, "
                "not text/event-stream"
            )
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
                break
        return events

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
        base = self._decoder.retry / 1000 if self._decoder.retry is not None else 0.1
        delay = min(self.max_reconnect_wait, base * 2.0**self.failures)
        if advised is not None:
            delay = max(delay, min(advised, self.max_reconnect_wait))
        self.failures += 1
        # Jitter: clients dropped together by a restart should not all come back at once.
        return delay * (0.5 + self.rand() / 2)

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
        raw = json.loads(data)
        parsed = model.model_validate(raw)
        if event_id is not None:
            self.last_id = event_id
        return Event(event_id, name, parsed, raw)
