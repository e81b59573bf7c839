"""Partial-result records as ``records`` events: the runner's one bounded extra call per poll."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from adapters.base import (
    JSON,
    Capabilities,
    ResultKind,
    ResultLocator,
    ResultPage,
    ResultPayload,
    StatusReport,
    UpstreamUnavailable,
)
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.policy import PollPolicy
from gateway.runner import RECORDS_PAGE, Runner
from gateway.states import JobState
from gateway.store.base import Event, NewEvent
from gateway.store.memory import MemoryStore
from tests.unit.test_runner import POLICY, T0, FakeClock, ScriptedAdapter

PARTIAL = ResultLocator(kind=ResultKind.PAGED, partial=True)
DONE = ResultLocator(kind=ResultKind.PAGED, partial=False)


def running(result: ResultLocator | None = PARTIAL) -> StatusReport:
    return StatusReport("", JobState.RUNNING, "enriching", result=result)


class RecordsAdapter(ScriptedAdapter):
    """A provider whose paged result grows while the job runs: ``available`` records exist."""

    def __init__(self) -> None:
        super().__init__("a")
        self.available = 0
        self.pages: list[tuple[int, int | None]] = []
        self.failing_results = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(submit=False, partial_results=True, result_kind=ResultKind.PAGED)

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        self.pages.append((page, page_size))
        if self.failing_results:
            raise UpstreamUnavailable("pull is down")
        size = page_size or 100
        first = (page - 1) * size
        records: list[JSON] = [{"n": n} for n in range(first, min(self.available, first + size))]
        return ResultPage(
            records=records,
            page=page,
            page_size=size,
            total_pages=max(1, -(-self.available // size)),
            total_records=self.available,
            partial=True,
        )


class Rig:
    def __init__(self, policy: PollPolicy = POLICY) -> None:
        self.clock = FakeClock()
        self.adapter = RecordsAdapter()
        self.store = MemoryStore()
        self.runner = Runner(
            self.store,
            {"a": self.adapter},
            {"a": policy},
            EventHub(),
            clock=self.clock.wall,
            mono=self.clock.monotonic,
            rand=lambda: 0.5,
        )

    async def add(self, *steps: StatusReport) -> Job:
        self.adapter.script("up", *steps)
        job = Job(
            id="job_1",
            provider="a",
            upstream_id="up",
            state=JobState.QUEUED,
            created_at=T0,
            updated_at=T0,
            deadline_at=T0 + timedelta(days=1),
            next_poll_at=T0,
        )
        await self.store.create(job, [NewEvent("created", job.public())])
        return job

    async def poll(self) -> Job:
        job = await self.store.get("job_1")
        assert job is not None
        if job.next_poll_at is not None:
            self.clock.advance_to(job.next_poll_at)
        assert await self.runner.step() == 1
        await self.runner.drain()
        job = await self.store.get("job_1")
        assert job is not None
        return job

    async def records(self) -> list[Event]:
        return [e for e in await self.store.events_after(0) if e.kind == "records"]


def data(event: Event) -> dict[str, Any]:
    return dict(event.data)


async def test_new_records_become_events_from_where_the_last_one_stopped() -> None:
    rig = Rig()
    await rig.add(running())
    rig.adapter.available = 30
    job = await rig.poll()
    assert job.records_seen == 30
    (first,) = await rig.records()
    assert data(first)["offset"] == 0
    assert data(first)["count"] == 30
    assert data(first)["records"] == [{"n": n} for n in range(30)]
    assert first.state is JobState.RUNNING

    job = await rig.poll()  # nothing new upstream: one look, no event
    assert job.records_seen == 30
    assert len(await rig.records()) == 1

    rig.adapter.available = 250
    for expected_seen in (100, 200, 250):
        job = await rig.poll()
        assert job.records_seen == expected_seen
    events = await rig.records()
    assert [(data(e)["offset"], data(e)["count"]) for e in events] == [
        (0, 30),
        (30, 70),
        (100, 100),
        (200, 50),
    ]
    delivered = [record for e in events for record in data(e)["records"]]
    assert delivered == [{"n": n} for n in range(250)]
    # One extra call per poll at most, pages of RECORDS_PAGE, never past the ones delivered.
    assert rig.adapter.pages == [(1, RECORDS_PAGE)] * 3 + [(2, RECORDS_PAGE), (3, RECORDS_PAGE)]


async def test_no_extra_call_without_a_partial_result() -> None:
    rig = Rig()
    await rig.add(
        StatusReport("", JobState.RUNNING, "fetching"),
        running(result=ResultLocator(kind=ResultKind.INLINE, partial=True)),
        StatusReport("", JobState.SUCCEEDED, "completed", result=DONE),
    )
    rig.adapter.available = 10
    for _ in range(3):
        await rig.poll()
    assert rig.adapter.pages == []
    assert await rig.records() == []


async def test_a_failed_records_call_changes_nothing_else() -> None:
    rig = Rig()
    await rig.add(running())
    rig.adapter.available = 10
    rig.adapter.failing_results = True
    job = await rig.poll()
    assert job.state is JobState.RUNNING
    assert job.records_seen == 0
    assert job.failures == 0
    assert await rig.records() == []
    assert rig.runner.circuits() == {"a": "closed"}

    rig.adapter.failing_results = False
    job = await rig.poll()
    assert job.records_seen == 10


async def test_records_never_wait_for_a_rate_limit_token() -> None:
    rig = Rig(replace(POLICY, burst=1, rate_per_second=0.001))
    await rig.add(running())
    rig.adapter.available = 10
    job = await rig.poll()  # the status call took the only token
    assert job.state is JobState.RUNNING
    assert rig.adapter.pages == []
    assert job.records_seen == 0


async def test_records_seen_survives_the_record_round_trip() -> None:
    rig = Rig()
    job = await rig.add(running())
    again = Job.from_record(replace(job, records_seen=42).to_record())
    assert again.records_seen == 42
    old = job.to_record()
    del old["records_seen"]
    assert Job.from_record(old).records_seen == 0
