"""The SSE building blocks: shared event-log reads, the wire format and request parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.events import EventHub
from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import Event, NewEvent
from gateway.store.memory import MemoryStore
from gateway.web.event_reads import EventReads, encode
from gateway.web.problems import BadInput
from gateway.web.sse import last_event_id, query_values

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class CountingStore(MemoryStore):
    """A MemoryStore whose event reads are counted and can be held at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.failing: Exception | None = None

    async def events_after(
        self,
        after_id: int,
        *,
        job_id: str | None = None,
        tenant: str = "default",
        providers: Sequence[str] = (),
        states: Sequence[JobState] = (),
        limit: int = 500,
    ) -> list[Event]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        return await super().events_after(
            after_id,
            job_id=job_id,
            tenant=tenant,
            providers=providers,
            states=states,
            limit=limit,
        )


async def add_job(store: MemoryStore, hub: EventHub, job_id: str = "job_1") -> list[Event]:
    job = Job(
        id=job_id,
        provider="pulse",
        upstream_id="up",
        state=JobState.QUEUED,
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + timedelta(days=1),
    )
    events = await store.create(job, [NewEvent("created", job.public())])
    hub.publish(events)
    return events


async def test_concurrent_identical_reads_share_one_store_read() -> None:
    store, hub, reads = CountingStore(), EventHub(), EventReads()
    await add_job(store, hub)
    store.gate = asyncio.Event()
    waiters = [asyncio.create_task(reads.read(store, hub, 0, job_id="job_1")) for _ in range(50)]
    await asyncio.sleep(0)
    store.gate.set()
    batches = await asyncio.gather(*waiters)
    assert store.reads == 1
    assert reads.store_reads == 1
    assert all(batch is batches[0] for batch in batches)
    assert [event.kind for event in batches[0].events] == ["created"]

    # Finished reads linger for late wakers, as long as nothing was published since.
    again = await reads.read(store, hub, 0, job_id="job_1")
    assert again is batches[0]
    assert store.reads == 1


async def test_a_read_older_than_a_publish_is_never_shared() -> None:
    store, hub, reads = CountingStore(), EventHub(), EventReads()
    first = await reads.read(store, hub, 0)
    assert first.events == []
    await add_job(store, hub)  # published after the first read: a reader woken by it must see it
    second = await reads.read(store, hub, 0)
    assert [event.kind for event in second.events] == ["created"]
    assert store.reads == 2


async def test_different_positions_or_filters_are_separate_reads() -> None:
    store, hub, reads = CountingStore(), EventHub(), EventReads()
    created = await add_job(store, hub)
    await reads.read(store, hub, 0)
    await reads.read(store, hub, created[0].id)
    await reads.read(store, hub, 0, providers=("pulse",))
    await reads.read(store, hub, 0, states=(JobState.QUEUED,))
    await reads.read(store, hub, 0, job_id="job_1")
    assert store.reads == 5


async def test_a_failed_read_reaches_every_waiter_and_is_not_kept() -> None:
    store, hub, reads = CountingStore(), EventHub(), EventReads()
    store.gate = asyncio.Event()
    store.failing = RuntimeError("disk on fire")
    waiters = [asyncio.create_task(reads.read(store, hub, 0)) for _ in range(3)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    store.failing = None
    assert (await reads.read(store, hub, 0)).events == []
    assert store.reads == 2


async def test_one_waiter_leaving_does_not_cancel_the_shared_read() -> None:
    store, hub, reads = CountingStore(), EventHub(), EventReads()
    await add_job(store, hub)
    store.gate = asyncio.Event()
    leaving = asyncio.create_task(reads.read(store, hub, 0))
    staying = asyncio.create_task(reads.read(store, hub, 0))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    store.gate.set()
    assert [event.kind for event in (await staying).events] == ["created"]
    assert leaving.cancelled()
    assert store.reads == 1


def test_wire_format_is_one_message_per_event() -> None:
    event = Event(
        id=42,
        job_id="job_1",
        tenant="default",
        provider="pulse",
        state=JobState.RUNNING,
        kind="progress",
        data={"note": "two\nlines", "state": "running"},
        created_at=T0,
    )
    wire = encode(event)
    assert wire.endswith(b"\n\n")
    lines = wire.decode().removesuffix("\n\n").split("\n")
    assert lines[:2] == ["id: 42", "event: progress"]
    assert lines[2].startswith("data: ")
    assert len(lines) == 3
    assert orjson.loads(lines[2].removeprefix("data: ")) == {
        "note": "two\nlines",
        "state": "running",
        "job_id": "job_1",
        "provider": "pulse",
    }


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, "", None),
        ({"Last-Event-ID": "7"}, "", 7),
        ({"Last-Event-ID": " 7 "}, "", 7),
        ({"Last-Event-ID": ""}, "?last_event_id=5", 5),
        ({"Last-Event-ID": "9"}, "?last_event_id=5", 9),
        ({}, "?last_event_id=0", 0),
    ],
)
def test_last_event_id(headers: dict[str, str], query: str, expected: int | None) -> None:
    request = make_mocked_request("GET", "/v1/events" + query, headers=headers)
    assert last_event_id(request) == expected


@pytest.mark.parametrize(
    ("headers", "query", "code", "name"),
    [
        ({"Last-Event-ID": "abc"}, "", "invalid_header", "Last-Event-ID"),
        ({"Last-Event-ID": "-3"}, "", "invalid_header", "Last-Event-ID"),
        ({"Last-Event-ID": "²"}, "", "invalid_header", "Last-Event-ID"),
        ({}, "?last_event_id=1e3", "invalid_query", "last_event_id"),
        ({}, "?last_event_id=" + "9" * 30, "invalid_query", "last_event_id"),
    ],
)
def test_bad_last_event_id(headers: dict[str, str], query: str, code: str, name: str) -> None:
    request = make_mocked_request("GET", "/v1/events" + query, headers=headers)
    with pytest.raises(BadInput) as caught:
        last_event_id(request)
    assert caught.value.code == code
    assert name in caught.value.message


def test_query_values_repeat_and_commas() -> None:
    allowed = {"a", "b", "c"}
    request = make_mocked_request("GET", "/v1/events?p=b,a&p=c&p=a")
    assert query_values(request, "p", allowed) == ("a", "b", "c")
    assert query_values(make_mocked_request("GET", "/v1/events"), "p", allowed) == ()
    for bad in ("?p=d", "?p=a,", "?p="):
        with pytest.raises(BadInput) as caught:
            query_values(make_mocked_request("GET", "/v1/events" + bad), "p", allowed)
        assert caught.value.code == "invalid_query"
        assert "p must be one of a, b, c" in caught.value.message
