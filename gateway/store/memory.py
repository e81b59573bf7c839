"""An in-memory :class:`~gateway.store.base.JobStore` for unit tests.

It keeps the same contract as the other stores (the suites
``tests/unit/store/test_*_contract.py`` check them all), including JSON serialisation: every job and
event goes through ``orjson`` on the way in, so a value the real store could not persist fails here
too, and no caller can alias a stored object.

No method awaits between reading and writing its state, so each one is atomic on the event loop and
needs no lock.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import orjson

from adapters.base import JSON
from gateway.auth import DEFAULT_TENANT, ApiKey
from gateway.durations import DurationDelta, DurationSketch
from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import (
    AbandonedKey,
    ClaimedIdempotency,
    Delivery,
    DeliveryOutcome,
    Event,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    JobFilter,
    NewDelivery,
    NewEvent,
    Page,
    Signal,
    TenantUsage,
    VersionPage,
    decode_cursor,
    encode_cursor,
)
from gateway.store.fair import Due, take_turns

_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass(slots=True)
class _IdempotencyRow:
    fingerprint: str
    phase: IdempotencyPhase
    created_at: datetime
    token: str
    lease_until: datetime
    job_id: str | None
    status: int = 0
    body: Mapping[str, JSON] | None = None
    upstream_id: str | None = None
    called_at: datetime | None = None
    command: Mapping[str, JSON] | None = None


def _copy_job(job: Job) -> Job:
    return Job.from_record(orjson.loads(orjson.dumps(job.to_record())))


def _copy_data(data: Mapping[str, JSON]) -> dict[str, JSON]:
    copied: dict[str, JSON] = orjson.loads(orjson.dumps(dict(data)))
    return copied


class MemoryStore:
    """Jobs in a dict, due times in a heap per (provider, tenant), events in one id-ordered list."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids: list[str] = []  # sorted, for newest-first listing
        self._by_upstream: dict[tuple[str, str], set[str]] = {}  # (provider, upstream id) -> ids
        # (provider, tenant) -> a heap of (next_poll_at, job id, version). Entries are never removed
        # in place: an entry is live only while the job still has that version, since every change
        # to a job bumps its version. A claim reads each pair's soonest few, never the backlog.
        self._due: dict[tuple[str, str], list[tuple[datetime, str, int]]] = {}
        self._due_entries = 0
        self._events: list[Event] = []
        self._event_ids: list[int] = []
        self._last_event_id = 0
        self._idempotency: dict[str, _IdempotencyRow] = {}
        self._cursors: dict[str, int] = {}
        self._durations: dict[str, DurationSketch] = {}
        self._deliveries: dict[int, Delivery] = {}  # by id, so in enqueue order
        self._delivery_keys: set[tuple[int, str]] = set()  # (event id, url)
        self._last_delivery_id = 0
        self._disabled_urls: set[str] = set()
        self._keys: dict[str, ApiKey] = {}  # by id, in the order they were made
        self._key_digests: dict[str, str] = {}  # digest -> id

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    def subscribe(self, callback: Callable[[Signal], None]) -> None:
        """One process only: the in-process hub hears every change, so there is never a signal."""
        return None

    def subscribe_jobs(self, callback: Callable[[Sequence[str] | None], None]) -> None:
        """One process only: there is never another writer."""
        return None

    # -- jobs ----------------------------------------------------------------------------------

    async def create(self, job: Job, events: Sequence[NewEvent]) -> list[Event]:
        if job.id in self._jobs:
            raise ValueError(f"job {job.id} already exists")
        stored = _copy_job(job)
        numbered = [self._number(stored, event) for event in events]
        self._put(stored)
        insort(self._ids, stored.id)
        self._by_upstream.setdefault((stored.provider, stored.upstream_id), set()).add(stored.id)
        self._append_events(numbered)
        return numbered

    async def _create_many(self, items: Sequence[tuple[Job, Sequence[NewEvent]]]) -> int:
        """Bulk insert for benchmarks and imports; all or nothing, like the SQLite store's."""
        ids = [job.id for job, _ in items]
        if len(set(ids)) != len(ids) or any(job_id in self._jobs for job_id in ids):
            raise ValueError("duplicate job id in bulk insert")
        for job, events in items:
            await self.create(job, events)
        return len(items)

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            return None
        return job

    async def get_by_upstream(
        self, provider: str, upstream_id: str, tenant: str | None = DEFAULT_TENANT
    ) -> Job | None:
        ids = self._by_upstream.get((provider, upstream_id), ())
        jobs = [self._jobs[job_id] for job_id in ids if tenant in (None, self._jobs[job_id].tenant)]
        return max(jobs, key=lambda job: job.id, default=None)

    async def list_jobs(self, where: JobFilter, *, limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        end = (
            len(self._ids)
            if cursor is None
            else bisect_left(self._ids, decode_cursor(cursor, where.tenant))
        )
        page: list[Job] = []
        for index in range(end - 1, -1, -1):
            job = self._jobs[self._ids[index]]
            if not _matches(job, where):
                continue
            if len(page) == limit:
                return Page(jobs=page, next_cursor=encode_cursor(page[-1].id, where.tenant))
            page.append(job)
        return Page(jobs=page, next_cursor=None)

    async def list_versions(
        self, where: JobFilter, *, limit: int, cursor: str | None
    ) -> VersionPage:
        page = await self.list_jobs(where, limit=limit, cursor=cursor)
        return VersionPage([(job.id, job.version) for job in page.jobs], page.next_cursor)

    async def get_many(self, job_ids: Sequence[str], tenant: str = DEFAULT_TENANT) -> list[Job]:
        found = (self._jobs.get(job_id) for job_id in dict.fromkeys(job_ids))
        return [job for job in found if job is not None and job.tenant == tenant]

    async def save_many(
        self, changes: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[tuple[Job, list[Event]] | None]:
        results: list[tuple[Job, list[Event]] | None] = []
        for job, events in changes:
            current = self._jobs.get(job.id)
            if current is None or current.version != job.version - 1:
                results.append(None)
                continue
            stored = _copy_job(job)
            numbered = [self._number(stored, event) for event in events]
            self._put(stored)
            self._append_events(numbered)
            results.append((stored, numbered))
        self._compact_due()
        return results

    async def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            return False
        del self._jobs[job_id]
        del self._ids[bisect_left(self._ids, job_id)]
        tracking = self._by_upstream.get((job.provider, job.upstream_id), set())
        tracking.discard(job_id)
        if not tracking:
            self._by_upstream.pop((job.provider, job.upstream_id), None)
        kept = [event for event in self._events if event.job_id != job_id]
        if len(kept) != len(self._events):
            self._events = kept
            self._event_ids = [event.id for event in kept]
        return True

    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        lease_until: datetime,
        per_provider: Mapping[str, int] | None = None,
        owner: str = "",
    ) -> list[Job]:
        if limit < 1:
            return []
        caps = None if per_provider is None else {p: n for p, n in per_provider.items() if n > 0}
        # Each (provider, tenant)'s soonest due jobs, popped only when the turns ask for them
        # (gateway.store.fair); the live entries popped and not claimed go back into their heaps.
        popped: list[tuple[tuple[str, str], tuple[datetime, str, int]]] = []
        streams: dict[str, list[Generator[Due[tuple[datetime, str], Job], None, None]]] = {}
        for (provider, tenant), heap in self._due.items():
            if caps is None or provider in caps:
                wanted = limit if caps is None else min(caps[provider], limit)
                stream = self._due_stream(provider, tenant, heap, now, wanted, popped)
                streams.setdefault(tenant, []).append(stream)
        chosen = take_turns(streams, limit=limit, caps=caps)
        taken = {item.payload.id for item in chosen}
        for pair, entry in popped:
            if entry[1] not in taken:
                heapq.heappush(self._due[pair], entry)
                self._due_entries += 1
        for pair in [pair for pair, heap in self._due.items() if not heap]:
            del self._due[pair]
        claimed = [
            item.payload.leased(lease_until) for item in sorted(chosen, key=lambda item: item.order)
        ]
        # Pushed only now, so that a lease already due (lease_until <= now) is not claimed twice.
        for job in claimed:
            self._put(job)
        self._compact_due()
        return claimed

    def _due_stream(
        self,
        provider: str,
        tenant: str,
        heap: list[tuple[datetime, str, int]],
        now: datetime,
        wanted: int,
        popped: list[tuple[tuple[str, str], tuple[datetime, str, int]]],
    ) -> Generator[Due[tuple[datetime, str], Job], None, None]:
        """The pair's live jobs due by ``now``, soonest first, at most ``wanted``: each popped
        (and noted in ``popped``) only when asked for; dead entries met are dropped for good."""
        found = 0
        while heap and found < wanted and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            self._due_entries -= 1
            job = self._jobs.get(entry[1])
            if job is not None and job.version == entry[2]:
                popped.append(((provider, tenant), entry))
                found += 1
                yield Due((entry[0], entry[1]), tenant, provider, job)

    async def next_due(self) -> datetime | None:
        earliest: datetime | None = None
        for key, heap in list(self._due.items()):
            while heap:
                when, job_id, version = heap[0]
                job = self._jobs.get(job_id)
                if job is not None and job.version == version:
                    earliest = when if earliest is None else min(earliest, when)
                    break
                heapq.heappop(heap)
                self._due_entries -= 1
            if not heap:
                del self._due[key]
        return earliest

    async def count_by_state(self) -> dict[tuple[str, JobState], int]:
        counts: dict[tuple[str, JobState], int] = {}
        for job in self._jobs.values():
            key = (job.provider, job.state)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def tenant_usage(self, tenant: str, since: datetime) -> TenantUsage:
        # A linear scan: this store is for unit tests, where the table is a handful of rows.
        mine = [job for job in self._jobs.values() if job.tenant == tenant]
        recent = [job.created_at for job in mine if job.created_at >= since]
        active = sum(job.state in _ACTIVE for job in mine)
        return TenantUsage(active, len(recent), min(recent, default=None))

    # -- events --------------------------------------------------------------------------------

    async def events_after(
        self,
        after_id: int,
        *,
        job_id: str | None = None,
        tenant: str | None = DEFAULT_TENANT,
        providers: Sequence[str] = (),
        states: Sequence[JobState] = (),
        limit: int = 500,
    ) -> list[Event]:
        found: list[Event] = []
        start = bisect_right(self._event_ids, after_id)
        for event in self._events[start:]:
            if len(found) >= limit:
                break
            if tenant is not None and event.tenant != tenant:
                continue
            if job_id is not None and event.job_id != job_id:
                continue
            if providers and event.provider not in providers:
                continue
            if states and event.state not in states:
                continue
            found.append(event)
        return found

    async def last_event_id(self) -> int:
        return self._last_event_id

    # -- idempotency keys ----------------------------------------------------------------------

    async def claim_idempotency(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        *,
        lease_until: datetime,
        job_id: str,
        token: str,
        command: Mapping[str, JSON] | None = None,
    ) -> IdempotencyRecord | ClaimedIdempotency:
        row = self._idempotency.get(key)
        if row is None:
            row = _IdempotencyRow(
                fingerprint, IdempotencyPhase.CLAIMED, now, token, lease_until, job_id
            )
            row.command = None if command is None else _copy_data(command)
            self._idempotency[key] = row
            return ClaimedIdempotency(key, token, job_id)
        if row.fingerprint != fingerprint:
            raise IdempotencyConflict(key)
        if row.phase is IdempotencyPhase.DONE and row.body is not None:
            return IdempotencyRecord(
                key=key,
                fingerprint=row.fingerprint,
                status=row.status,
                body=_copy_data(row.body),
                job_id=row.job_id,
                created_at=row.created_at,
            )
        if row.lease_until > now:
            raise IdempotencyInFlight(key, row.lease_until)
        row.token, row.lease_until = token, lease_until
        row.job_id = row.job_id or job_id
        return ClaimedIdempotency(key, token, row.job_id, row.phase, row.upstream_id, row.called_at)

    def _held(self, claim: ClaimedIdempotency) -> _IdempotencyRow | None:
        row = self._idempotency.get(claim.key)
        if row is None or row.token != claim.token or row.phase is IdempotencyPhase.DONE:
            return None
        return row

    async def advance_idempotency(
        self,
        claim: ClaimedIdempotency,
        phase: IdempotencyPhase,
        *,
        now: datetime,
        upstream_id: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        row = self._held(claim)
        if row is None:
            return False
        row.phase = phase
        if phase is IdempotencyPhase.CALLING:
            row.called_at = row.called_at or now
        if upstream_id is not None:
            row.upstream_id = upstream_id
        if lease_until is not None:
            row.lease_until = lease_until
        return True

    async def finish_idempotency(
        self,
        claim: ClaimedIdempotency,
        *,
        status: int,
        body: Mapping[str, JSON],
        job_id: str | None,
        now: datetime,
    ) -> bool:
        row = self._held(claim)
        # A missing row was purged while the request ran; the answer is simply not kept.
        if row is None:
            return False
        row.phase = IdempotencyPhase.DONE
        row.status = status
        row.body = _copy_data(body)
        row.job_id = job_id
        return True

    async def release_idempotency(self, claim: ClaimedIdempotency) -> None:
        if self._held(claim) is not None:
            del self._idempotency[claim.key]

    async def abandoned_idempotency(self, now: datetime, limit: int) -> list[AbandonedKey]:
        started = (IdempotencyPhase.CALLING, IdempotencyPhase.ANSWERED)
        found = [
            (row.created_at, key, row)
            for key, row in self._idempotency.items()
            if row.phase in started and row.lease_until <= now and row.command is not None
        ]
        found.sort(key=lambda item: (item[0], item[1]))
        return [
            AbandonedKey(key, row.fingerprint, _copy_data(row.command or {}))
            for _, key, row in found[:limit]
        ]

    async def purge_idempotency(self, older_than: datetime) -> int:
        old = [key for key, row in self._idempotency.items() if row.created_at < older_than]
        for key in old:
            del self._idempotency[key]
        return len(old)

    # -- outbound webhook deliveries -----------------------------------------------------------

    async def get_cursor(self, name: str) -> int | None:
        return self._cursors.get(name)

    async def durations(self) -> dict[str, DurationSketch]:
        return dict(self._durations)

    async def merge_durations(self, deltas: Sequence[DurationDelta]) -> None:
        for delta in deltas:
            stored = self._durations.get(delta.name, DurationSketch())
            self._durations[delta.name] = stored.absorb(delta.sketch, half_life=delta.half_life)

    async def set_cursor(self, name: str, value: int) -> None:
        self._cursors[name] = value

    async def enqueue_deliveries(
        self, deliveries: Sequence[NewDelivery], *, cursor: tuple[str, int] | None = None
    ) -> int:
        added = 0
        for new in deliveries:
            key = (new.event_id, new.url)
            if key in self._delivery_keys or new.url in self._disabled_urls:
                continue
            self._delivery_keys.add(key)
            self._last_delivery_id += 1
            self._deliveries[self._last_delivery_id] = Delivery(
                id=self._last_delivery_id,
                event_id=new.event_id,
                job_id=new.job_id,
                url=new.url,
                kind=new.kind,
                payload=new.payload,
                status="pending",
                attempts=0,
                next_attempt_at=new.due_at,
                last_status=None,
                last_error=None,
                created_at=new.due_at,
                updated_at=new.due_at,
            )
            added += 1
        if cursor is not None:
            self._cursors[cursor[0]] = cursor[1]
        return added

    async def claim_due_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime
    ) -> list[Delivery]:
        # A linear scan: this store is for unit tests, where the table is a handful of rows.
        due = sorted(
            (
                d
                for d in self._deliveries.values()
                if d.status == "pending"
                and d.next_attempt_at is not None
                and d.next_attempt_at <= now
            ),
            key=lambda d: (d.next_attempt_at, d.id),
        )[: max(limit, 0)]
        claimed = [replace(d, next_attempt_at=lease_until) for d in due]
        for delivery in claimed:
            self._deliveries[delivery.id] = delivery
        return claimed

    async def finish_delivery(
        self,
        delivery_id: int,
        *,
        leased_until: datetime,
        outcome: DeliveryOutcome,
        attempts: int,
        now: datetime,
        retry_at: datetime | None = None,
        last_status: int | None = None,
        last_error: str | None = None,
    ) -> bool:
        if outcome == "retry" and retry_at is None:
            raise ValueError("a retry needs retry_at")
        delivery = self._deliveries.get(delivery_id)
        if (
            delivery is None
            or delivery.status != "pending"
            or delivery.next_attempt_at != leased_until
        ):
            return False
        self._deliveries[delivery_id] = replace(
            delivery,
            status="pending" if outcome == "retry" else outcome,
            attempts=attempts,
            next_attempt_at=retry_at if outcome == "retry" else None,
            last_status=last_status,
            last_error=last_error,
            updated_at=now,
        )
        if outcome == "disabled":
            self._disabled_urls.add(delivery.url)
            for other in list(self._deliveries.values()):
                if other.url == delivery.url and other.status == "pending":
                    self._deliveries[other.id] = replace(
                        other, status="disabled", next_attempt_at=None, updated_at=now
                    )
        return True

    async def next_delivery_due(self) -> datetime | None:
        return min(
            (
                d.next_attempt_at
                for d in self._deliveries.values()
                if d.status == "pending" and d.next_attempt_at is not None
            ),
            default=None,
        )

    async def endpoint_disabled(self, url: str) -> bool:
        return url in self._disabled_urls

    async def list_deliveries(
        self, *, job_id: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        found = [d for d in self._deliveries.values() if job_id is None or d.job_id == job_id]
        return found[: max(limit, 0)]

    async def purge_deliveries(self, older_than: datetime) -> int:
        old = [
            d
            for d in self._deliveries.values()
            if d.status != "pending" and d.updated_at < older_than
        ]
        for delivery in old:
            del self._deliveries[delivery.id]
            self._delivery_keys.discard((delivery.event_id, delivery.url))
        return len(old)

    # -- API keys ------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        if key.id in self._keys or key.digest in self._key_digests:
            raise ValueError(f"api key {key.id} already exists (its id or its digest)")
        self._keys[key.id] = replace(key, source="store")
        self._key_digests[key.digest] = key.id

    async def api_key_by_digest(self, digest: str) -> ApiKey | None:
        key_id = self._key_digests.get(digest)
        return None if key_id is None else self._keys[key_id]

    async def api_key(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        keys = [key for key in self._keys.values() if tenant in (None, key.tenant)]
        return sorted(keys, key=lambda key: (key.created_at, key.id))

    async def revoke_api_key(
        self, key_id: str, now: datetime, *, tenant: str | None = None
    ) -> bool:
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None or tenant not in (None, key.tenant):
            return False
        self._keys[key_id] = replace(key, revoked_at=now)
        return True

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        for key_id, when in used.items():
            key = self._keys.get(key_id)
            if key is not None and (key.last_used_at is None or key.last_used_at < when):
                self._keys[key_id] = replace(key, last_used_at=when)

    # -- internals -----------------------------------------------------------------------------

    def _put(self, job: Job) -> None:
        self._jobs[job.id] = job
        if job.next_poll_at is not None:
            heap = self._due.setdefault((job.provider, job.tenant), [])
            heapq.heappush(heap, (job.next_poll_at, job.id, job.version))
            self._due_entries += 1

    def _compact_due(self) -> None:
        # Dead entries pile up as jobs are saved and claimed; rebuild once they dominate the heaps.
        if self._due_entries <= 2 * len(self._jobs) + 64:
            return
        self._due = {}
        self._due_entries = 0
        for job in self._jobs.values():
            if job.next_poll_at is not None:
                pair = self._due.setdefault((job.provider, job.tenant), [])
                pair.append((job.next_poll_at, job.id, job.version))
                self._due_entries += 1
        for heap in self._due.values():
            heapq.heapify(heap)

    def _number(self, job: Job, event: NewEvent) -> Event:
        self._last_event_id += 1
        return Event(
            id=self._last_event_id,
            job_id=job.id,
            tenant=job.tenant,
            provider=job.provider,
            state=job.state,
            kind=event.kind,
            data=_copy_data(event.data),
            created_at=job.updated_at,
        )

    def _append_events(self, events: list[Event]) -> None:
        self._events.extend(events)
        self._event_ids.extend(event.id for event in events)


def _matches(job: Job, where: JobFilter) -> bool:
    if job.tenant != where.tenant:
        return False
    if where.provider is not None and job.provider != where.provider:
        return False
    if where.state is not None and job.state != where.state:
        return False
    return all(job.labels.get(key) == value for key, value in where.labels.items())
