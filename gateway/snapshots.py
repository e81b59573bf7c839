"""Encode once, serve many: each job version's public JSON, as bytes, kept in memory for reads.

A status read, a list page, a long poll and an action's answer all serve a job's public form. It
changes only when the job is written, so it is encoded once per version (on first use) and every
later read of that version serves the same bytes with ``ETag: "<version>"``, touching no database.

Freshness, per kind of write:
- This process's writes go through :class:`~gateway.writer.JobWriter`, which puts each saved
  version here before it wakes any waiter, and drops a job whose fenced save failed (the cache
  may be behind the store then).
- Other processes' writes (PostgreSQL replicas) arrive as LISTEN/NOTIFY signals naming the jobs
  they saved or claimed, and as the event feed; both drop those jobs here, so the next read goes
  to the store. After a gap in listening every entry is dropped.
- A read that went to the store fills the cache only if nothing dropped that job while the read
  was in flight (a *ticket* taken before the read says so), and never replaces a newer version:
  so a drop can never be undone by a slower read of the older row.

What this does not see: a claim in this process bumps the row's version without a save (the
runner holds the claimed version until its poll is saved). A client can see that version only by
a store read (a list page, a miss), and every store read fills the cache with what it saw, so a
later cached read is never older than a version the client saw from this process. Across replicas
the window is a NOTIFY's delivery; a client that sends ``If-None-Match`` with the ETag it holds is
served from the store whenever the cache is older than that ETag.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager

import orjson

from gateway.jobs import Job


class Snapshot:
    """One job version and its public JSON, encoded on first use."""

    __slots__ = ("_body", "etag", "job")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.etag = f'"{job.version}"'
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            body = self._body = orjson.dumps(self.job.public())
        return body


PAGES = 256
"""Encoded list pages kept (the most recently read), for dashboards re-reading an idle list."""


class Snapshots:
    """A bounded, least-recently-used map of job id to its newest known :class:`Snapshot`.

    Only reads insert (a version some client is reading); this process's saves refresh entries
    that are here but add none, so the poll loop's churn never evicts what clients read.
    Single-threaded (the event loop's): no locks.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Snapshot] = OrderedDict()
        self._seq = 0
        self._floor = 0
        """Reads that began before this may not fill (everything was dropped since)."""
        self._reads: dict[int, int] = {}
        """Store reads in flight, by the ticket they began with."""
        self._changed: dict[str, int] = {}
        """Jobs changed while reads were in flight: id -> when. A read that began earlier may
        have found the older row, so it may not fill that job."""
        self.generation = 0
        """Moves on with every change this process hears of: a list page encoded at one
        generation is current while it stays."""
        self._pages: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, job_id: str) -> Snapshot | None:
        entry = self._entries.get(job_id)
        if entry is not None:
            self._entries.move_to_end(job_id)
        return entry

    @contextmanager
    def reading(self) -> Iterator[int]:
        """Around a store read whose jobs will be offered to :meth:`fill`; yields its ticket."""
        ticket = self._seq
        self._reads[ticket] = self._reads.get(ticket, 0) + 1
        try:
            yield ticket
        finally:
            left = self._reads[ticket] - 1
            if left:
                self._reads[ticket] = left
            else:
                del self._reads[ticket]
                self._forget_changes()

    def fill(self, job: Job, ticket: int) -> Snapshot:
        """Offer what a store read (begun at ``ticket``) found. The answer is the snapshot to
        serve: the cached one when it is as new or newer, else one of ``job``, which is kept
        unless the job changed after the read began."""
        entry = self._entries.get(job.id)
        if entry is not None and entry.job.version >= job.version:
            return entry
        if ticket < self._floor or self._changed.get(job.id, -1) > ticket:
            return Snapshot(job)
        return self._set(job)

    def page(self, key: Hashable) -> bytes | None:
        """A list page encoded since the last change, or ``None``."""
        found = self._pages.get(key)
        if found is None or found[0] != self.generation:
            return None
        self._pages.move_to_end(key)
        return found[1]

    def keep_page(self, key: Hashable, generation: int, body: bytes) -> None:
        """Keep a page read from the store at ``generation`` (taken before the read), unless
        something changed since."""
        if generation != self.generation:
            return
        self._pages[key] = (generation, body)
        self._pages.move_to_end(key)
        if len(self._pages) > PAGES:
            self._pages.popitem(last=False)

    def put(self, job: Job) -> None:
        """A version this process saved (or created): refresh the entry if there is one."""
        self.generation += 1
        entry = self._entries.get(job.id)
        if entry is not None:
            if entry.job.version < job.version:
                self._entries[job.id] = Snapshot(job)
        else:
            self._changing(job.id)

    def drop(self, job_ids: Iterable[str]) -> None:
        """These jobs changed elsewhere (or may have): the next read of each goes to the store."""
        self.generation += 1
        for job_id in job_ids:
            self._entries.pop(job_id, None)
            self._changing(job_id)

    def drop_all(self) -> None:
        """Anything may have changed (a gap in listening to other replicas)."""
        self.generation += 1
        self._seq += 1
        self._floor = self._seq
        self._entries.clear()
        self._changed.clear()

    def _changing(self, job_id: str) -> None:
        if self._reads:
            self._seq += 1
            self._changed[job_id] = self._seq

    def _forget_changes(self) -> None:
        if not self._changed:
            return
        if not self._reads:
            self._changed.clear()
        elif len(self._changed) > self.capacity:
            # Reads keep overlapping: keep only changes an in-flight read could still miss.
            oldest = min(self._reads)
            self._changed = {k: v for k, v in self._changed.items() if v > oldest}

    def _set(self, job: Job) -> Snapshot:
        snapshot = Snapshot(job)
        entries = self._entries
        entries[job.id] = snapshot
        entries.move_to_end(job.id)
        if len(entries) > self.capacity:
            evicted, _ = entries.popitem(last=False)
            # A read in flight may hold an older row of it than the version just evicted.
            self._changing(evicted)
        return snapshot
