"""Changes made by other replicas, brought to this process's waiters.

The hub (``gateway.events``) hears only this process's writes. With a shared store, a client
long-polling or streaming from replica B must see what replica A's runner wrote: the store signals
new events (PostgreSQL's NOTIFY), and the feed reads them from the log and publishes them to the
hub, exactly as if they had been written here. A re-read every second is the safety net for a lost
signal; publishing an event twice (one written here) only wakes its readers twice, and they read
from their own positions in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.events import EventHub, wait_set
from gateway.store.base import EventLog, Signal

log = structlog.get_logger("jobgate.feed")


class RemoteFeed:
    def __init__(
        self,
        store: EventLog,
        hub: EventHub,
        *,
        on_due: Callable[[], None] = lambda: None,
        on_changed: Callable[[list[str]], None] = lambda job_ids: None,
        interval: float = 1.0,
        batch: int = 1000,
    ) -> None:
        self.store = store
        self.hub = hub
        self.on_due = on_due
        self.on_changed = on_changed
        self.interval = interval
        self.batch = batch
        self.cursor = 0
        self._wake = asyncio.Event()

    def signal(self, kind: Signal) -> None:
        """The store's callback: events to read, or a job due now (the runner's to claim)."""
        if kind == "events":
            self._wake.set()
        elif kind == "due":
            self.on_due()

    async def start(self) -> None:
        """Begin at the log's end: what was written before this process started has no waiter."""
        self.cursor = await self.store.last_event_id()

    async def step(self) -> int:
        """Publish every event after the cursor; the number published."""
        published = 0
        while True:
            events = await self.store.events_after(self.cursor, tenant=None, limit=self.batch)
            if not events:
                return published
            self.cursor = events[-1].id
            # Cached snapshots of these jobs go first, so the readers woken next read the store.
            self.on_changed([event.job_id for event in events])
            self.hub.publish(events)
            published += len(events)
            if len(events) < self.batch:
                return published

    async def run(self) -> None:
        while True:
            await wait_set(self._wake, self.interval)
            try:
                await self.step()
            except Exception:
                # A loop that must never die: the cursor has not moved past anything unpublished.
                log.exception("feed.read_failed")
                await asyncio.sleep(self.interval)
