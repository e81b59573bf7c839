"""The one place job changes are committed: saved with their events, published, logged and
counted once, whoever made them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from gateway.events import EventHub
from gateway.jobs import Job, transition
from gateway.states import Action, JobState, Refused
from gateway.store.memory import MemoryStore
from gateway.writer import JobWriter, Update

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


@dataclass
class Counted:
    transitions: list[tuple[str, JobState, JobState]] = field(default_factory=list)
    finishes: list[str] = field(default_factory=list)

    def transition(self, provider: str, src: JobState, dst: JobState) -> None:
        self.transitions.append((provider, src, dst))

    def anomaly(self, provider: str, refused: Refused) -> None:
        raise AssertionError("no anomaly here")

    def finished(self, job: Job, now: datetime) -> None:
        self.finishes.append(job.id)


def job(state: JobState) -> Job:
    return Job(
        id="job_01WRITER",
        provider="catchall",
        upstream_id="up",
        state=state,
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + timedelta(days=1),
        finished_at=T0 if state is JobState.SUCCEEDED else None,
    )


async def test_a_continue_is_logged_counted_and_published_like_any_transition() -> None:
    store, hub = MemoryStore(), EventHub()
    observer = Counted()
    writer = JobWriter(store, hub, observer=observer)
    done = await writer.create(job(JobState.SUCCEEDED))
    stored = await store.get(done.id)
    assert stored is not None
    with hub.listen(done.id) as woken, capture_logs() as logs:
        running = transition(stored, JobState.RUNNING, T0, action=Action.CONTINUE)
        [saved] = await writer.save([Update(stored, running)], T0)
        assert woken.is_set()
    assert saved == running
    assert observer.transitions == [("catchall", JobState.SUCCEEDED, JobState.RUNNING)]
    [line] = [entry for entry in logs if entry["event"] == "job.transition"]
    assert (line["src"], line["state"]) == ("succeeded", "running")
    kinds = [event.kind for event in await store.events_after(0, job_id=done.id)]
    assert kinds == ["created", "state"]


async def test_a_fenced_update_is_neither_published_nor_counted() -> None:
    store, hub = MemoryStore(), EventHub()
    observer = Counted()
    writer = JobWriter(store, hub, observer=observer)
    queued = await writer.create(job(JobState.QUEUED))
    first = transition(queued, JobState.RUNNING, T0)
    stale = transition(queued, JobState.FAILED, T0)  # made from the same version
    assert await writer.save([Update(queued, first)], T0) == [first]
    with capture_logs() as logs:
        assert await writer.save([Update(queued, stale)], T0) == [None]
    assert observer.transitions == [("catchall", JobState.QUEUED, JobState.RUNNING)]
    assert observer.finishes == []
    assert [entry for entry in logs if entry["event"] == "job.transition"] == []
    stored = await store.get(queued.id)
    assert stored is not None
    assert stored.state is JobState.RUNNING
