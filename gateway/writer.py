"""The one place job changes are committed.

The runner (its observations and verdicts) and the service (creations and user actions) hand their
changes here. Each is saved with its events in one fenced transaction; then the encoded snapshot
that reads serve is refreshed (``gateway.snapshots``) and the events are published to this
process's waiters, which so read the new version. Every change of state is logged once
(``job.transition``) and counted once (``jobgate_job_transitions_total``), whoever made it: a
``continue`` counts like a poll's finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from gateway.events import EventHub
from gateway.jobs import Job, NewEvent, job_events
from gateway.snapshots import Snapshots
from gateway.states import JobState, Refused
from gateway.store.base import Event, JobStore

log = structlog.get_logger("jobgate.jobs")


class ChangeObserver(Protocol):
    """What committed changes tell the metrics layer. Every method is cheap and never raises."""

    def transition(self, provider: str, src: JobState, dst: JobState) -> None: ...

    def anomaly(self, provider: str, refused: Refused) -> None: ...

    def finished(self, job: Job, now: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class Update:
    """A new version of a job, with the events it deserves (by default from :func:`job_events`)."""

    before: Job
    after: Job
    events: Sequence[NewEvent] | None = None
    refused: Refused | None = None
    """An upstream report that was not applied: logged by the runner, counted here once saved."""

    def entries(self) -> Sequence[NewEvent]:
        return job_events(self.before, self.after) if self.events is None else self.events


class JobWriter:
    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        *,
        observer: ChangeObserver | None = None,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.observer = observer
        self.snapshots = snapshots if snapshots is not None else Snapshots()
        """Encoded public forms for reads: refreshed here before any waiter wakes."""

    async def create(self, job: Job) -> Job:
        """Insert a new job with its ``created`` event."""
        events = await self.store.create(job, job_events(None, job))
        self.snapshots.put(job)  # new on list pages
        self.hub.publish(events)
        return job

    async def save(self, updates: Sequence[Update], now: datetime) -> list[Job | None]:
        """Save ``updates`` in one transaction; ``None`` for each one whose fence failed (another
        writer saved that job first, so this version is stale and nothing of it was applied)."""
        if not updates:
            return []
        results = await self.store.save_many([(u.after, u.entries()) for u in updates])
        published: list[Event] = []
        saved: list[Job | None] = []
        for update, result in zip(updates, results, strict=True):
            if result is None:
                # Another writer got there first: whatever is cached of this job may be behind.
                self.snapshots.drop([update.after.id])
                saved.append(None)
                continue
            job, events = result
            self.snapshots.put(job)
            published.extend(events)
            saved.append(job)
            self._observe(update, now)
        self.hub.publish(published)
        return saved

    def _observe(self, update: Update, now: datetime) -> None:
        before, after = update.before, update.after
        if after.state is not before.state:
            log.info(
                "job.transition",
                job_id=after.id,
                provider=after.provider,
                src=before.state.value,
                state=after.state.value,
                native_status=after.native_status,
                code=after.error.code if after.error and after.finished else None,
            )
        if self.observer is None:
            return
        if after.state is not before.state:
            self.observer.transition(after.provider, before.state, after.state)
            if after.finished:
                self.observer.finished(after, now)
        if update.refused is not None:
            self.observer.anomaly(after.provider, update.refused)
