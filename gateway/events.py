"""In-process fan-out of persisted events to whoever is waiting: long polls and SSE streams.

The store's event log is the truth; the hub only says "something new, go and read it". So a waiter
that misses a wake-up loses nothing: it reads the log from its last id. Waiters register *before*
they read the store, so an event committed between their read and their wait still wakes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gateway.store.base import Event


class EventHub:
    """Many waiters, one publisher (the runner or the service after each committed write)."""

    def __init__(self) -> None:
        self._per_job: dict[str, set[asyncio.Event]] = {}
        self._any: set[asyncio.Event] = set()
        self.last_id = 0

    def publish(self, events: Iterable[Event]) -> None:
        woke = False
        for event in events:
            self.last_id = max(self.last_id, event.id)
            for waiter in self._per_job.get(event.job_id, ()):
                waiter.set()
            woke = True
        if woke:
            for waiter in self._any:
                waiter.set()

    def nudge(self, job_id: str) -> None:
        """Wake ``job_id``'s waiters with nothing new in the log: something they wait for
        changed in this process only (a capture began streaming, which readers can follow)."""
        for waiter in self._per_job.get(job_id, ()):
            waiter.set()

    @contextmanager
    def listen(self, job_id: str | None = None) -> Iterator[asyncio.Event]:
        """An event set on the next publish for ``job_id`` (or for any job when ``None``).

        The caller clears it after each wake-up. Leaving the block unregisters it, so a job with
        no listeners costs nothing here.
        """
        waiter = asyncio.Event()
        bucket = self._any if job_id is None else self._per_job.setdefault(job_id, set())
        bucket.add(waiter)
        try:
            yield waiter
        finally:
            bucket.discard(waiter)
            if job_id is not None and not bucket:
                self._per_job.pop(job_id, None)

    @property
    def listeners(self) -> int:
        return len(self._any) + sum(len(b) for b in self._per_job.values())


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` for at most ``seconds``; clear it and say whether it was set."""
    if seconds <= 0:
        fired = event.is_set()
    else:
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation that
        # arrives just as the event is set, and a loop waiting here could then never be stopped.
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
            fired = True
        except TimeoutError:
            fired = False
    event.clear()
    return fired
