"""The storage protocol every store implements, and the values it trades in.

Each protocol has its own contract suite (``tests/unit/store/test_*_contract.py``), and every
implementation (memory, SQLite, PostgreSQL) runs them all.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

from adapters.base import JSON
from gateway.auth import DEFAULT_TENANT, ApiKey
from gateway.durations import DurationDelta, DurationSketch
from gateway.jobs import Job
from gateway.jobs import NewEvent as NewEvent  # stores take the events the job model makes
from gateway.states import JobState


@dataclass(frozen=True, slots=True)
class Event:
    """A persisted event. ``id`` increases monotonically across the whole store (SSE ids)."""

    id: int
    job_id: str
    tenant: str
    provider: str
    state: JobState
    kind: str
    data: Mapping[str, JSON]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JobFilter:
    tenant: str = DEFAULT_TENANT
    provider: str | None = None
    state: JobState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class VersionPage:
    """A listing page as (job id, version) pairs: what a reader holding encoded snapshots needs
    to know which of them are current, without decoding a single row."""

    versions: list[tuple[str, int]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """What a tenant holds, for its limits: unfinished jobs, and jobs made since a moment."""

    active: int
    recent: int
    oldest_recent: datetime | None
    """The creation time of the oldest of the ``recent`` jobs (when the window frees a place)."""


class IdempotencyPhase(StrEnum):
    """How far an idempotent request got: its recovery point (Stripe's model).

    A claim in any phase but ``done`` holds a lease. When the lease has run out (its owner died or
    gave up), the next request with the key takes the claim over in the phase it reached and
    resumes from there: a ``claimed`` request never called upstream and simply runs; an
    ``answered`` one has its upstream id recorded and only needs its local job; a ``calling`` one
    may or may not have created an upstream job and must be reconciled with the provider.
    """

    CLAIMED = "claimed"
    CALLING = "calling"
    ANSWERED = "answered"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A finished idempotent request: replayed verbatim when the same key and body come again."""

    key: str
    fingerprint: str
    status: int
    body: Mapping[str, JSON]
    job_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ClaimedIdempotency:
    """The caller now holds the key until ``lease_until`` and must advance, finish or release it.

    ``token`` fences a claim that was taken over: the previous holder's writes then match nothing.
    ``job_id`` is the id the job will get, chosen by the first claim and kept by every takeover,
    so that a recovery finds the job a crashed holder may already have written.
    """

    key: str
    token: str
    job_id: str
    phase: IdempotencyPhase = IdempotencyPhase.CLAIMED
    upstream_id: str | None = None
    called_at: datetime | None = None

    @property
    def recovered(self) -> bool:
        """Whether this claim was taken over from a holder whose lease ran out."""
        return self.phase is not IdempotencyPhase.CLAIMED


@dataclass(frozen=True, slots=True)
class AbandonedKey:
    """An unfinished key whose holder's lease ran out after the upstream call started: the
    request it stands for, so that it can be finished without waiting for the client."""

    key: str
    fingerprint: str
    command: Mapping[str, JSON]


class IdempotencyConflict(Exception):
    """The key was used with a different request body (HTTP 422)."""


class IdempotencyInFlight(Exception):
    """Another request with the same key holds it until ``lease_until`` (HTTP 409)."""

    def __init__(self, key: str, lease_until: datetime | None = None) -> None:
        super().__init__(key)
        self.lease_until = lease_until


class StoreUnavailable(Exception):
    """The store cannot be opened: unreachable, misconfigured or held by another process. The
    message is one line for an operator and never carries a password."""


class StaleWrite(Exception):
    """A fenced write found a newer version in the store; the caller's copy is out of date."""


@dataclass(frozen=True, slots=True)
class QuotaWant:
    """For a shared quota's claim: up to ``want`` jobs of ``provider``, within its limits."""

    provider: str
    want: int
    rate: float
    burst: int
    concurrency: int


DeliveryStatus = Literal["pending", "delivered", "failed", "disabled"]
DeliveryOutcome = Literal["delivered", "retry", "failed", "disabled"]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """An outbound webhook to send: one event to one URL. ``(event_id, url)`` is unique, so
    enqueueing the same pair again (a tailer replaying after a crash) adds nothing."""

    event_id: int
    job_id: str
    url: str
    kind: str
    """``terminal`` or ``progress``."""
    payload: str
    """The exact JSON body to send (and sign): stored, so a retry sends the same bytes."""
    due_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event_id: int
    job_id: str
    url: str
    kind: str
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    """When a pending delivery is next due (or its lease runs out); ``None`` once it is over."""
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class Lifecycle(Protocol):
    async def open(self) -> None:
        """Connect, and bring the schema up to date (migrations run here)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...


class JobRows(Protocol):
    """The jobs themselves. Writes are fenced by ``Job.version``: a save succeeds only if the
    stored version is exactly ``job.version - 1``, so a stale writer changes nothing.

    Every write that carries events appends them to the event log in the SAME transaction, so a
    change and its events are committed together or not at all.
    """

    async def create(self, job: Job, events: Sequence[NewEvent]) -> list[Event]:
        """Insert a new job (version 1) and its first events in one transaction."""
        ...

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job | None: ...

    async def get_by_upstream(
        self, provider: str, upstream_id: str, tenant: str | None = DEFAULT_TENANT
    ) -> Job | None:
        """The job of ``tenant`` (``None``: of any tenant) tracking this upstream job, or ``None``.
        An inbound callback names only the upstream job, and a provider account is shared by
        every tenant, so those lookups pass ``None``.

        An upstream job adopted more than once is tracked by several jobs: the newest one answers.
        """
        ...

    async def list_jobs(self, where: JobFilter, *, limit: int, cursor: str | None) -> Page:
        """Newest first by id; ``cursor`` is opaque and comes from a previous page."""
        ...

    async def list_versions(
        self, where: JobFilter, *, limit: int, cursor: str | None
    ) -> VersionPage:
        """The same page as :meth:`list_jobs` (same order, filters and cursors), as each job's
        id and current version only."""
        ...

    async def get_many(self, job_ids: Sequence[str], tenant: str = DEFAULT_TENANT) -> list[Job]:
        """The jobs of ``tenant`` among ``job_ids``, in no particular order; ids of other tenants'
        jobs and of jobs that do not exist are left out."""
        ...

    async def save_many(
        self, changes: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[tuple[Job, list[Event]] | None]:
        """Apply a batch of fenced updates in ONE transaction (the runner writes once per tick).

        For each change: ``None`` if the fence failed (the row was changed or deleted meanwhile),
        else the job and its numbered events. A save ends any claim on the job.
        """
        ...

    async def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Stop tracking: remove the job and its events; the answer says whether it existed."""
        ...

    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        lease_until: datetime,
        per_provider: Mapping[str, int] | None = None,
        owner: str = "",
    ) -> list[Job]:
        """Jobs whose ``next_poll_at`` <= ``now``, soonest first, at most ``limit``.

        With ``per_provider``, only jobs of the providers it names, at most that many of each (a
        provider with no token to spend is not claimed at all: a claim must be pollable at once).
        Tenants take turns: the claim takes each tenant's soonest due job, then each one's second,
        and so on (soonest first within a turn), so one tenant's backlog of due jobs cannot hold
        back another tenant's job. The cost is bounded by tenants times ``limit``, not by the
        backlog.

        Claimed jobs get ``next_poll_at = lease_until`` (and ``version + 1``) so that no other
        claim takes them until the lease runs out: a crashed poll is retried when its lease
        expires. ``owner`` names the claiming process (for operators; fencing is by version).

        Where the claim is kept is the store's choice, as long as no caller can tell: a store
        shared by processes (PostgreSQL, a SQLite file opened without ``exclusive``) writes it to
        the row; a store whose file one process holds (SQLite opened ``exclusive``, as the gateway
        opens it) may keep it in memory, so that a poll writes its job's row once, with its save.
        Then every read (``get``, ``get_by_upstream``, ``get_many``, ``list_jobs``,
        ``list_versions``) shows the claimed version and ``next_poll_at``, ``next_due`` counts the
        lease's end, and saves are fenced against the claimed version, exactly as if it had been
        written. The difference is a crash: such claims end with their process, and the next one
        finds those jobs due at their old time, at once, instead of at the lease's end.
        """
        ...

    async def next_due(self) -> datetime | None:
        """The earliest ``next_poll_at`` of any job, or ``None``."""
        ...

    async def count_by_state(self) -> dict[tuple[str, JobState], int]:
        """(provider, state) -> number of jobs, for the jobs gauge."""
        ...

    async def tenant_usage(self, tenant: str, since: datetime) -> TenantUsage:
        """The tenant's unfinished jobs (``queued`` or ``running``), and its jobs created at or
        after ``since`` (whatever their state), for per-tenant limits."""
        ...


class EventLog(Protocol):
    """The append-only log of job events (appended by :class:`JobRows` writes).

    Ids increase monotonically, and a reader that has seen every event up to id N and then reads
    ``events_after(N)`` never misses one later: no event with a smaller id may become visible after
    a larger one has been read (SSE resumes and the webhook cursor depend on it).
    """

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
        """Events with ``id > after_id`` in id order, of one tenant (``None``: every tenant, for
        the feed and the webhook tailer), optionally for one job or some providers."""
        ...

    async def last_event_id(self) -> int: ...


class IdempotencyKeys(Protocol):
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
        """The stored answer for a finished request with this key and fingerprint; or the claim.

        ``command`` is the request itself (what the fingerprint hashes), kept so that an
        abandoned key can be finished without its client.

        A new key is claimed in phase ``claimed`` with ``job_id``. An unfinished key whose lease
        ended before ``now`` is taken over: the claim comes back in the phase its holder reached,
        with the ``job_id``, upstream id and call time it recorded, under ``token`` and a new lease.

        Raises :class:`IdempotencyConflict` for the same key with another fingerprint and
        :class:`IdempotencyInFlight` while another holder's lease runs.
        """
        ...

    async def advance_idempotency(
        self,
        claim: ClaimedIdempotency,
        phase: IdempotencyPhase,
        *,
        now: datetime,
        upstream_id: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        """Record a recovery point: ``calling`` stamps the first call's time (``now``),
        ``answered`` the upstream id; ``lease_until`` moves the lease (to ``now``: the next
        request may recover at once). False when the claim was taken over or purged meanwhile:
        nothing is written."""
        ...

    async def finish_idempotency(
        self,
        claim: ClaimedIdempotency,
        *,
        status: int,
        body: Mapping[str, JSON],
        job_id: str | None,
        now: datetime,
    ) -> bool:
        """Store the answer to replay. False (nothing kept) when the claim was taken over or
        purged meanwhile."""
        ...

    async def release_idempotency(self, claim: ClaimedIdempotency) -> None:
        """Forget an unfinished claim (the request provably had no upstream effect)."""
        ...

    async def abandoned_idempotency(self, now: datetime, limit: int) -> list[AbandonedKey]:
        """Unfinished keys past their lease that reached ``calling`` or ``answered`` and kept
        their command, oldest first: the upstream may hold a job nobody tracks yet."""
        ...

    async def purge_idempotency(self, older_than: datetime) -> int: ...


class DeliveryQueue(Protocol):
    """Outbound webhook deliveries, and the named cursor of the tailer that enqueues them."""

    async def get_cursor(self, name: str) -> int | None:
        """A named position in the event log (the webhook tailer's), or ``None`` if never set."""
        ...

    async def set_cursor(self, name: str, value: int) -> None: ...

    async def enqueue_deliveries(
        self, deliveries: Sequence[NewDelivery], *, cursor: tuple[str, int] | None = None
    ) -> int:
        """Add pending deliveries and move ``cursor`` (name, event id) in ONE transaction, so a
        crash between the two can neither lose nor double an event's deliveries.

        Pairs already enqueued and URLs of disabled endpoints are skipped; the answer is how many
        rows were added.
        """
        ...

    async def claim_due_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime
    ) -> list[Delivery]:
        """Pending deliveries due by ``now``, soonest first; each is leased until ``lease_until``
        (a sender that dies mid-attempt leaves it to be retried when the lease runs out)."""
        ...

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
        """Record an attempt. ``retry`` keeps it pending until ``retry_at``; ``disabled`` also
        disables its URL, ending every other pending delivery to it, in the same transaction.

        Fenced by the claim: only a pending delivery still leased until ``leased_until`` (the
        ``next_attempt_at`` its claim returned) changes, so a sender whose lease ran out and was
        claimed again changes nothing. The answer says whether the write happened.
        """
        ...

    async def next_delivery_due(self) -> datetime | None:
        """The earliest ``next_attempt_at`` of any pending delivery, or ``None``."""
        ...

    async def endpoint_disabled(self, url: str) -> bool: ...

    async def list_deliveries(
        self, *, job_id: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Deliveries in the order they were enqueued (tests and operators)."""
        ...

    async def purge_deliveries(self, older_than: datetime) -> int:
        """Forget finished deliveries last updated before ``older_than``."""
        ...


class LearnedDurations(Protocol):
    """The completion-time sketches the cadence learns (``gateway.durations``), one per provider
    and cadence key, shared by every process on the store."""

    async def durations(self) -> dict[str, DurationSketch]:
        """Every stored sketch, by name."""
        ...

    async def merge_durations(self, deltas: Sequence[DurationDelta]) -> None:
        """Fold each delta into its stored sketch in one transaction: concurrent merges from
        several replicas all count (read, fold, write under the row's lock)."""
        ...


class ApiKeys(Protocol):
    """Client API keys, stored by their keyed hash (``gateway/auth.py``), never in plaintext."""

    async def create_api_key(self, key: ApiKey) -> None:
        """Store a new key (its id and digest are unique)."""
        ...

    async def api_key_by_digest(self, digest: str) -> ApiKey | None:
        """The key with this digest, revoked and expired ones included (the caller decides)."""
        ...

    async def api_key(self, key_id: str) -> ApiKey | None: ...

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key of ``tenant`` (``None``: of every tenant), oldest first."""
        ...

    async def revoke_api_key(
        self, key_id: str, now: datetime, *, tenant: str | None = None
    ) -> bool:
        """Revoke a key (of ``tenant`` only, when given) and signal ``keys`` to the other
        processes. False when there is no such usable key: unknown, another tenant's, or already
        revoked."""
        ...

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (key id -> time), batched by the caller: a key's
        ``last_used_at`` only moves forward."""
        ...


Signal = Literal["events", "due", "keys"]
"""What another process changed: it appended events, made a job due now, or revoked a key."""


class Signals(Protocol):
    """Wake-ups from other processes sharing the store (PostgreSQL's LISTEN/NOTIFY).

    A signal is only a hint to re-read: a lost one costs latency, never data, because every reader
    also re-reads on a timer. Single-process stores never signal.
    """

    def subscribe(self, callback: Callable[[Signal], None]) -> None:
        """Call ``callback`` for each signal, and with every kind after any gap in listening (a
        reconnect), since signals sent meanwhile are lost."""
        ...

    def subscribe_jobs(self, callback: Callable[[Sequence[str] | None], None]) -> None:
        """Call ``callback`` with the ids of jobs whose rows another process changed (saved,
        claimed, deleted; this process's own changes may be told too), and with ``None`` after
        any gap in listening: then any job may have changed."""
        ...


class JobStore(
    Lifecycle,
    JobRows,
    EventLog,
    IdempotencyKeys,
    DeliveryQueue,
    LearnedDurations,
    ApiKeys,
    Signals,
    Protocol,
):
    """Everything a gateway process needs from its store. Each part has its own contract suite
    (``tests/unit/store/``) that every implementation runs."""


# Cursors are opaque to clients; every store pages by job id (newest first) with the same form. A
# cursor names its tenant, so one tenant's cursor is refused by another's listing.
_CURSOR_PREFIX = "v2:"
_OLD_CURSOR_PREFIX = "v1:"


def encode_cursor(last_id: str, tenant: str = DEFAULT_TENANT) -> str:
    """An opaque cursor naming the last job of a page, for ``tenant``'s listing only."""
    raw = f"{_CURSOR_PREFIX}{tenant}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, tenant: str = DEFAULT_TENANT) -> str:
    """The job id inside ``cursor``; ``ValueError`` if it was not made by :func:`encode_cursor`
    for ``tenant``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if raw.startswith(_OLD_CURSOR_PREFIX) and tenant == DEFAULT_TENANT:
        # Made before tenants existed, when every job was the default tenant's.
        last_id = raw[len(_OLD_CURSOR_PREFIX) :]
    else:
        owner, sep, last_id = raw.removeprefix(_CURSOR_PREFIX).partition(":")
        if not raw.startswith(_CURSOR_PREFIX) or not sep or owner != tenant:
            raise ValueError(f"invalid cursor {cursor!r}")
    if not last_id:
        raise ValueError(f"invalid cursor {cursor!r}")
    return last_id
