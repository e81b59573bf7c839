"""The event log as SSE streams read it: each event's wire frame, encoded once (:func:`encode`,
:func:`end_frame`), and the catch-up reads that identical requests share (:class:`EventReads`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import orjson

from gateway.auth import DEFAULT_TENANT
from gateway.events import EventHub
from gateway.states import JobState
from gateway.store.base import Event, JobStore

BATCH = 200
"""Events per store read; a longer backlog is sent in several writes."""

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


def end_frame(job_id: str | None, state: JobState | None, reason: str) -> bytes:
    data = {"job_id": job_id, "state": state.value if state else None, "reason": reason}
    return b"event: end\ndata: %s\n\n" % orjson.dumps(data)


class EventReads:
    """One store read for many identical requests (same job or filters, same position): the
    catch-up reads of streams behind their channel's head.

    A reader may share a read only if it started after every publish the reader has seen: the
    hub's ``last_id`` when the read started (its *mark*) must be at least the hub's ``last_id``
    now. That rests on the store numbering events in commit order and the hub publishing after
    commit, which holds for the single-writer stores here. Finished reads linger briefly so that
    late readers share them too; the mark keeps that safe, the linger only bounds memory.
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
