"""One loop for work kept as leased rows: claim what is due, run it with bounded concurrency, write
the outcomes, and hand every unfinished lease back on stop.

The poll runner (jobs) and the webhook sender (deliveries) are both this loop; they differ only in
what a claim, a run, a write and a hand-back are. A clean stop hands back what it holds, so the
next process (or the same one, restarted) takes that work at once instead of waiting out the lease.
Only a crash leaves leases to run out, and that is what leases are for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog

from gateway.events import wait_set

log = structlog.get_logger("jobgate.leased")

T = TypeVar("T")


@dataclass(frozen=True)
class LeasedWork(Generic[T]):
    """What one kind of leased row needs from the loop."""

    name: str
    claim: Callable[[int], Awaitable[Sequence[T]]]
    """Claim at most this many due rows (leased by the claim)."""
    run: Callable[[T], Coroutine[Any, Any, None]]
    """Work one claimed row. Must not raise: it records its own failures."""
    hand_back: Callable[[Sequence[T]], Awaitable[None]]
    """Make rows whose run was stopped due again now (a fenced write: a row that changed stays)."""
    next_due: Callable[[], Awaitable[datetime | None]]
    clock: Callable[[], datetime]
    flush: Callable[[], Awaitable[None]] | None = None
    """Write the outcomes that runs queued (the runner batches them); ``None`` if runs write."""
    pending: Callable[[], bool] = lambda: False
    """Whether outcomes wait for ``flush``."""


class LeasedLoop(Generic[T]):
    """Runs ``work`` until cancelled, at most ``capacity`` rows at a time, stepping every ``tick``
    while busy and at least every second otherwise (the safety net for wake-ups it never hears).

    A tick is a period, not a pause: the next step is due a tick after the last one STARTED, so
    the time a step spends in the store (its claim, its write) is not added to every tick. A pause
    after each step made the cycle tick + step: with fast upstreams a provider's slots sat idle
    for most of it, and under a busy store the loop woke far less often than its tick.
    """

    def __init__(self, work: LeasedWork[T], *, capacity: int, tick: float) -> None:
        self.work = work
        self.capacity = capacity
        self.tick = tick
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], T] = {}
        self._stepped = 0.0
        """When the last step started (the event loop's clock)."""
        self.steps = 0
        """Loop iterations so far (benchmarks read how often the loop woke)."""
        self.claimed = 0

    def wake(self) -> None:
        """Look for due rows now (one was added, or became due)."""
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled; then stop cleanly (see :meth:`stop`). Store faults are logged and
        retried: what was claimed comes back when its lease runs out, so nothing is lost."""
        try:
            while True:
                try:
                    await self.step()
                    await self._sleep()
                except Exception:
                    log.exception("leased.loop_failed", work=self.work.name)
                    await asyncio.sleep(1.0)
        finally:
            await self.stop()

    async def step(self) -> int:
        """Claim what is due (as far as there is room), start it, write what finished. Returns the
        number claimed.

        A stop that lands mid-step waits for the step to end: a claim or a write that has reached
        the store may commit all the same (SQLite's worker thread, the server), and a claim whose
        rows this loop never saw could not be handed back: they would sit out their lease.
        """
        stepping = asyncio.ensure_future(self._step())
        try:
            return await asyncio.shield(stepping)
        except asyncio.CancelledError:
            await asyncio.wait([stepping])
            if not stepping.cancelled() and stepping.exception() is not None:
                log.warning("leased.step_failed_at_stop", work=self.work.name)
            raise

    async def _step(self) -> int:
        self._stepped = asyncio.get_running_loop().time()
        room = self.capacity - len(self._inflight)
        claimed = await self.work.claim(room) if room > 0 else []
        self.steps += 1
        self.claimed += len(claimed)
        for row in claimed:
            task = asyncio.create_task(self.work.run(row))
            self._inflight[task] = row
            task.add_done_callback(self._done)
        if self.work.flush is not None:
            await self.work.flush()
        return len(claimed)

    async def drain(self) -> None:
        """Wait for every run in flight and write its outcome (tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        if self.work.flush is not None:
            await self.work.flush()

    async def stop(self) -> None:
        """Cancel the runs in flight, hand their rows back, and write what finished before."""
        tasks = dict(self._inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        stopped = [row for task, row in tasks.items() if task.cancelled()]
        try:
            if self.work.flush is not None:
                await self.work.flush()
            if stopped:
                await self.work.hand_back(stopped)
                log.info("leased.handed_back", work=self.work.name, rows=len(stopped))
        except Exception:
            # The store is gone (closed first, or unreachable): the leases run out instead.
            log.warning("leased.hand_back_failed", work=self.work.name, rows=len(stopped))

    def _done(self, task: asyncio.Task[None]) -> None:
        # A cancelled run stays listed until stop() has collected it for the hand-back.
        if not task.cancelled():
            self._inflight.pop(task, None)
        self._wake.set()

    async def _sleep(self) -> None:
        # What is left of this tick (nothing, when the step took longer than a tick).
        rest = max(0.0, self._stepped + self.tick - asyncio.get_running_loop().time())
        pending = self.work.pending()
        if pending or self._wake.is_set():
            self._wake.clear()
            # Outcomes wait for the next tick, so the polls finishing together are written
            # together.
            await asyncio.sleep(rest if pending else 0)
            return
        if len(self._inflight) >= self.capacity:
            await wait_set(self._wake, 1.0)
            return
        due = await self.work.next_due()
        delay = 1.0 if due is None else (due - self.work.clock()).total_seconds()
        # Coalesce: never step more often than a tick, and re-check at least every second.
        delay = min(1.0, max(rest, delay))
        if self.work.pending():
            delay = rest  # a run finished during the read above
        await wait_set(self._wake, delay)
