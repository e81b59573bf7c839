"""The leased loop: claims run bounded, and a stop hands back every row it holds, including rows
claimed by a claim the stop interrupted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from gateway.leased import LeasedLoop, LeasedWork

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


class Work:
    """Rows are ints. A claim can be held at a gate; runs can be held until released."""

    def __init__(self, due: Sequence[int]) -> None:
        self.due = list(due)
        self.claim_gate: asyncio.Event | None = None
        self.claiming = asyncio.Event()
        self.run_gate = asyncio.Event()
        self.ran: list[int] = []
        self.handed_back: list[int] = []

    async def claim(self, room: int) -> list[int]:
        self.claiming.set()
        if self.claim_gate is not None:
            await self.claim_gate.wait()
        taken, self.due = self.due[:room], self.due[room:]
        return taken

    async def run(self, row: int) -> None:
        await self.run_gate.wait()
        self.ran.append(row)

    async def hand_back(self, rows: Sequence[int]) -> None:
        self.handed_back.extend(rows)

    async def next_due(self) -> datetime | None:
        return NOW if self.due else None

    def loop(self, capacity: int = 10) -> LeasedLoop[int]:
        work = LeasedWork(
            name="test",
            claim=self.claim,
            run=self.run,
            hand_back=self.hand_back,
            next_due=self.next_due,
            clock=lambda: NOW,
        )
        return LeasedLoop(work, capacity=capacity, tick=0.001)


async def test_runs_are_bounded_by_the_capacity() -> None:
    work = Work(range(5))
    loop = work.loop(capacity=2)
    assert await loop.step() == 2
    assert await loop.step() == 0  # no room until a run ends
    work.run_gate.set()
    await loop.drain()
    assert sorted(work.ran) == [0, 1]
    assert await loop.step() == 2


async def test_a_stop_hands_back_the_rows_whose_runs_it_interrupted() -> None:
    work = Work(range(3))
    loop = work.loop()
    assert await loop.step() == 3
    await loop.stop()
    assert sorted(work.handed_back) == [0, 1, 2]
    assert work.ran == []


@pytest.mark.parametrize("claimed", [0, 3])
async def test_a_stop_during_a_claim_waits_for_it_and_hands_back_what_it_took(
    claimed: int,
) -> None:
    # The store may commit a claim its caller stopped waiting for (SQLite's thread, the server):
    # rows nobody hands back would sit out their whole lease.
    work = Work(range(claimed))
    work.claim_gate = asyncio.Event()
    loop = work.loop()
    running = asyncio.create_task(loop.run())
    await work.claiming.wait()
    running.cancel()
    await asyncio.sleep(0)
    work.claim_gate.set()  # the claim completes after the stop began
    with pytest.raises(asyncio.CancelledError):
        await running
    assert sorted(work.handed_back) == list(range(claimed))
    assert work.ran == []
