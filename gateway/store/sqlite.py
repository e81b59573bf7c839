"""The embedded :class:`~gateway.store.base.JobStore`: one SQLite file in WAL mode.

Every call runs on ONE dedicated worker thread that owns the only connection, so the connection is
never shared between threads, transactions never interleave, and the event loop never blocks on
disk. Batches (``save_many``, ``claim_due``) are one executor hop and one transaction each.

A job row keeps the whole :meth:`Job.to_record` as JSON plus the columns the queries filter and
order on. Times in columns are integer microseconds since the epoch: exact, compact and cheap to
compare (a float would not round-trip every microsecond, ISO text is three times larger).

Crash safety comes from WAL with ``synchronous=NORMAL``: a killed process loses nothing it
committed; only a power cut can drop the last few commits, never corrupt the file.

Checkpoints (where ``synchronous=NORMAL`` fsyncs, copying the WAL back into the file) run on a
second thread and connection (:class:`_Checkpointer`), never inside the worker's transactions: a
checkpoint of a busy WAL took a few hundred milliseconds, and every claim and save queued behind it.

Opened ``exclusive`` (the gateway), the file is this process's alone, so a claim's lease is kept in
the worker's memory rather than written to the row: a poll writes its job's row once (its save),
not twice. Every read shows a held claim as if it had been written (the claimed version, the lease
as ``next_poll_at``) and every save is fenced against it, so callers cannot tell the difference,
except after a crash: the claims die with the process, and a restart finds those jobs due at once
instead of waiting out the leases.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar

import orjson
import structlog

from adapters.base import JSON
from gateway.auth import DEFAULT_TENANT, ApiKey, Scope
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
    StoreUnavailable,
    TenantUsage,
    VersionPage,
    decode_cursor,
    encode_cursor,
)
from gateway.store.fair import Due, take_turns
from gateway.store.migrations import pending
from gateway.store.sqlite_sql import (
    ABANDONED_IDEMPOTENCY,
    ADD_JOB_COUNTS,
    ADVANCE_IDEMPOTENCY,
    CLAIM_IDEMPOTENCY,
    COUNT_BY_STATE,
    DELETE_JOB,
    DELETE_LABELS,
    DISABLE_ENDPOINT,
    DISABLE_PENDING_DELIVERIES,
    END_IDEMPOTENCY_LEASES,
    ENDPOINT_DISABLED,
    EVENTS_AFTER,
    EVENTS_AFTER_JOB,
    FINISH_DELIVERY,
    FINISH_IDEMPOTENCY,
    GET_CURSOR,
    INSERT_API_KEY,
    INSERT_DELIVERY,
    INSERT_EVENT,
    INSERT_JOB,
    INSERT_LABEL,
    LAST_EVENT_ID,
    LEASE_DELIVERY,
    LEASE_JOB,
    LIST_API_KEYS,
    LIST_DELIVERIES,
    LIST_JOB_DELIVERIES,
    LIST_JOBS,
    LIST_JOBS_BY_LABELS,
    LIST_TENANT_API_KEYS,
    MIGRATIONS,
    NEXT_DELIVERY_DUE,
    NO_CURSOR,
    PURGE_DELIVERIES,
    PURGE_IDEMPOTENCY,
    RELEASE_IDEMPOTENCY,
    REVOKE_API_KEY,
    SCHEDULED_PROVIDERS,
    SCHEDULED_TENANTS,
    SELECT_API_KEY,
    SELECT_API_KEY_BY_DIGEST,
    SELECT_DUE_DELIVERIES,
    SELECT_DUE_OF_TENANT,
    SELECT_DUE_ROWS,
    SELECT_DURATION,
    SELECT_DURATIONS,
    SELECT_FOR_SAVE,
    SELECT_IDEMPOTENCY,
    SELECT_JOB,
    SELECT_JOBS,
    SELECT_JOBS_BY_UPSTREAM,
    SELECT_NEXT_DUE,
    SELECT_RECORDS,
    SET_CURSOR,
    TAKE_OVER_IDEMPOTENCY,
    TENANT_USAGE,
    TOUCH_API_KEY,
    UPDATE_JOB,
    UPDATE_JOB_AND_STATE,
    UPSERT_DURATION,
)

log = structlog.get_logger("jobgate.store.sqlite")

P = ParamSpec("P")
T = TypeVar("T")

_PRAGMAS: Final = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    # 64 MiB: the hot part of a million-job table (the due index and recently polled rows).
    "PRAGMA cache_size = -65536",
    "PRAGMA temp_store = MEMORY",
    # Checkpoints are the checkpointer's (_Checkpointer), on its own thread: never a commit's.
    "PRAGMA wal_autocheckpoint = 0",
    "PRAGMA journal_size_limit = 67108864",
)

CHECKPOINT_EVERY: Final = 0.2
"""Seconds between the checkpointer's passes while the worker writes. Short, so that each pass
copies little and often finishes between two transactions: the WAL restarts from its beginning
only when a write begins with every frame copied back."""
WAL_FRAMES_CAP: Final = 32768
"""WAL frames (pages; 128 MiB at 4 KiB) past which the checkpointer waits for the writer to pause
(``RESTART``) instead of copying around it: passes that never catch up must not let the WAL grow
without bound. Seen only when writes outrun the disk."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)

_JobRow = tuple[str, str, str, str, int | None, int, int, str, str, str]


class _Lease(NamedTuple):
    """A claim held in memory (an exclusive store's): what the claim would have written."""

    job_id: str
    rowid: int
    until: int
    """The lease's end, in microseconds: the job's ``next_poll_at`` while it is held."""
    until_at: datetime
    version: int
    """The version the claim gave the job: saves are fenced against it, reads show it."""


_EventRow = tuple[int, str, str, str, str, str, str, int]
_KeyRow = tuple[str, str, str, str, str, str, int, int | None, int | None, int | None]


class SqliteStore:
    """A :class:`~gateway.store.base.JobStore` on one SQLite file.

    With ``exclusive`` (how the gateway opens it), one process at a time: a second gateway on
    the same file is refused at start-up. SQLite would keep the rows consistent (every write
    takes the write lock first, and writes are fenced), but two processes would each spend the
    providers' whole quotas and never wake each other's waiters: replicas need PostgreSQL.
    """

    def __init__(self, path: str | Path, *, exclusive: bool = False) -> None:
        self.path = Path(path)
        self.exclusive = exclusive
        self._lock: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._checkpointer: _Checkpointer | None = None
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None
        self._leases: dict[str, _Lease] = {}
        """Claims held in memory (exclusive stores only), by job id; ended by a save or a delete."""
        self._leased_rows: dict[int, _Lease] = {}
        """The same claims by row id, for the claim's and next_due's walks of the due index."""

    async def open(self) -> None:
        if self._executor is not None:
            return
        if self.exclusive:
            self._lock = _lock_exclusively(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobgate-sqlite")
        opened = False
        try:
            await self._call(self._open_sync)
            opened = True
        finally:
            if not opened:
                self._executor.shutdown(wait=True)
                self._executor = None
                self._unlock()
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        checkpointer, self._checkpointer = self._checkpointer, None
        try:
            if checkpointer is not None:
                # Off the event loop: a pass in progress may be in the middle of an fsync.
                await asyncio.get_running_loop().run_in_executor(None, checkpointer.stop)
            await self._call(self._close_sync)
        finally:
            self._executor = None
            executor.shutdown(wait=True)
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    async def ping(self) -> bool:
        if self._executor is None:
            return False
        try:
            return await self._call(self._ping_sync)
        except sqlite3.Error:
            return False

    # -- jobs ----------------------------------------------------------------------------------

    async def create(self, job: Job, events: Sequence[NewEvent]) -> list[Event]:
        numbered = await self._call(self._create_many_sync, [(job, events)])
        return numbered[0]

    async def _create_many(self, items: Sequence[tuple[Job, Sequence[NewEvent]]]) -> int:
        """Insert many new jobs in one transaction (benchmarks, imports); all or nothing."""
        return len(await self._call(self._create_many_sync, items))

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        return await self._call(self._get_sync, job_id, tenant)

    async def get_by_upstream(
        self, provider: str, upstream_id: str, tenant: str | None = DEFAULT_TENANT
    ) -> Job | None:
        return await self._call(self._get_by_upstream_sync, provider, upstream_id, tenant)

    async def list_jobs(self, where: JobFilter, *, limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        before = decode_cursor(cursor, where.tenant) if cursor is not None else None
        jobs = await self._call(self._list_sync, where, limit + 1, before)
        if len(jobs) > limit:
            del jobs[limit:]
            return Page(jobs=jobs, next_cursor=encode_cursor(jobs[-1].id, where.tenant))
        return Page(jobs=jobs, next_cursor=None)

    async def list_versions(
        self, where: JobFilter, *, limit: int, cursor: str | None
    ) -> VersionPage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        before = decode_cursor(cursor, where.tenant) if cursor is not None else None
        found = await self._call(self._list_versions_sync, where, limit + 1, before)
        if len(found) > limit:
            del found[limit:]
            return VersionPage(found, encode_cursor(found[-1][0], where.tenant))
        return VersionPage(found, None)

    async def get_many(self, job_ids: Sequence[str], tenant: str = DEFAULT_TENANT) -> list[Job]:
        if not job_ids:
            return []
        return await self._call(self._get_many_sync, job_ids, tenant)

    async def save_many(
        self, changes: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[tuple[Job, list[Event]] | None]:
        if not changes:
            return []
        return await self._call(self._save_many_sync, changes)

    async def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        return await self._call(self._delete_sync, job_id, tenant)

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
        if caps == {}:
            return []
        return await self._call(self._claim_due_sync, now, limit, lease_until, caps)

    def subscribe(self, callback: Callable[[Signal], None]) -> None:
        """One process only (the file is locked): the in-process hub hears every change."""
        return None

    def subscribe_jobs(self, callback: Callable[[Sequence[str] | None], None]) -> None:
        """One process only (the file is locked): there is never another writer."""
        return None

    async def next_due(self) -> datetime | None:
        return await self._call(self._next_due_sync)

    async def count_by_state(self) -> dict[tuple[str, JobState], int]:
        return await self._call(self._count_by_state_sync)

    async def tenant_usage(self, tenant: str, since: datetime) -> TenantUsage:
        return await self._call(self._tenant_usage_sync, tenant, since)

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
        if limit < 1:
            return []
        params: dict[str, Any] = {
            "after": after_id,
            "tenant": tenant,
            "job_id": job_id,
            "providers": _dumps(list(providers)),
            "states": _dumps([state.value for state in states]),
            "limit": limit,
        }
        sql = EVENTS_AFTER if job_id is None else EVENTS_AFTER_JOB
        return await self._call(self._events_sync, sql, params)

    async def last_event_id(self) -> int:
        return await self._call(self._last_event_id_sync)

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
        stored = None if command is None else _dumps(dict(command))
        return await self._call(
            self._claim_idempotency_sync, key, fingerprint, now, lease_until, job_id, token, stored
        )

    async def abandoned_idempotency(self, now: datetime, limit: int) -> list[AbandonedKey]:
        return await self._call(self._abandoned_idempotency_sync, now, limit)

    async def advance_idempotency(
        self,
        claim: ClaimedIdempotency,
        phase: IdempotencyPhase,
        *,
        now: datetime,
        upstream_id: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        params = {
            "phase": phase.value,
            "now": _to_us(now),
            "upstream_id": upstream_id,
            "lease_until": None if lease_until is None else _to_us(lease_until),
            "key": claim.key,
            "token": claim.token,
        }
        return await self._call(self._write_one_sync, ADVANCE_IDEMPOTENCY, params) == 1

    async def finish_idempotency(
        self,
        claim: ClaimedIdempotency,
        *,
        status: int,
        body: Mapping[str, JSON],
        job_id: str | None,
        now: datetime,
    ) -> bool:
        params = (status, _dumps(dict(body)), job_id, _to_us(now), claim.key, claim.token)
        return await self._call(self._write_one_sync, FINISH_IDEMPOTENCY, params) == 1

    async def release_idempotency(self, claim: ClaimedIdempotency) -> None:
        await self._call(self._write_one_sync, RELEASE_IDEMPOTENCY, (claim.key, claim.token))

    async def purge_idempotency(self, older_than: datetime) -> int:
        return await self._call(self._write_one_sync, PURGE_IDEMPOTENCY, (_to_us(older_than),))

    # -- outbound webhook deliveries -----------------------------------------------------------

    async def get_cursor(self, name: str) -> int | None:
        return await self._call(self._get_cursor_sync, name)

    async def set_cursor(self, name: str, value: int) -> None:
        await self._call(self._write_one_sync, SET_CURSOR, (name, value))

    async def durations(self) -> dict[str, DurationSketch]:
        return await self._call(self._durations_sync)

    async def merge_durations(self, deltas: Sequence[DurationDelta]) -> None:
        if deltas:
            await self._call(self._merge_durations_sync, deltas, _to_us(datetime.now(UTC)))

    async def enqueue_deliveries(
        self, deliveries: Sequence[NewDelivery], *, cursor: tuple[str, int] | None = None
    ) -> int:
        if not deliveries and cursor is None:
            return 0
        return await self._call(self._enqueue_deliveries_sync, deliveries, cursor)

    async def claim_due_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime
    ) -> list[Delivery]:
        if limit < 1:
            return []
        return await self._call(self._claim_deliveries_sync, now, limit, lease_until)

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
        status = "pending" if outcome == "retry" else outcome
        next_at = _to_us(retry_at) if outcome == "retry" and retry_at is not None else None
        now_us = _to_us(now)
        params = (
            status,
            attempts,
            next_at,
            last_status,
            last_error,
            now_us,
            delivery_id,
            _to_us(leased_until),
        )
        return await self._call(self._finish_delivery_sync, params, outcome == "disabled", now_us)

    async def next_delivery_due(self) -> datetime | None:
        return await self._call(self._next_delivery_due_sync)

    async def endpoint_disabled(self, url: str) -> bool:
        return await self._call(self._endpoint_disabled_sync, url)

    async def list_deliveries(
        self, *, job_id: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        if job_id is None:
            return await self._call(self._deliveries_sync, LIST_DELIVERIES, (limit,))
        return await self._call(self._deliveries_sync, LIST_JOB_DELIVERIES, (job_id, limit))

    async def purge_deliveries(self, older_than: datetime) -> int:
        return await self._call(self._write_one_sync, PURGE_DELIVERIES, (_to_us(older_than),))

    # -- API keys ------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        row: _KeyRow = (
            key.id,
            key.tenant,
            _dumps(sorted(scope.value for scope in key.scopes)),
            key.digest,
            key.prefix,
            key.name,
            _to_us(key.created_at),
            _to_us_or_none(key.expires_at),
            _to_us_or_none(key.revoked_at),
            _to_us_or_none(key.last_used_at),
        )
        try:
            await self._call(self._write_one_sync, INSERT_API_KEY, row)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"api key {key.id} already exists (its id or its digest)") from exc

    async def api_key_by_digest(self, digest: str) -> ApiKey | None:
        found = await self._call(self._api_keys_sync, SELECT_API_KEY_BY_DIGEST, (digest,))
        return found[0] if found else None

    async def api_key(self, key_id: str) -> ApiKey | None:
        found = await self._call(self._api_keys_sync, SELECT_API_KEY, (key_id,))
        return found[0] if found else None

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        if tenant is None:
            return await self._call(self._api_keys_sync, LIST_API_KEYS, ())
        return await self._call(self._api_keys_sync, LIST_TENANT_API_KEYS, (tenant,))

    async def revoke_api_key(
        self, key_id: str, now: datetime, *, tenant: str | None = None
    ) -> bool:
        # One process owns the file: its own cache hears the revocation, so there is no signal.
        params = {"now": _to_us(now), "id": key_id, "tenant": tenant}
        return await self._call(self._write_one_sync, REVOKE_API_KEY, params) == 1

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        if used:
            rows = [{"id": key_id, "used": _to_us(when)} for key_id, when in used.items()]
            await self._call(self._write_many_sync, TOUCH_API_KEY, rows)

    # -- the worker thread ---------------------------------------------------------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is not open")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        # IMMEDIATE takes the write lock up front, so a read-then-write (claim, fence) cannot be
        # overtaken by another process between its read and its write.
        cursor = self._db.cursor()
        committed = False
        try:
            cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            cursor.execute("COMMIT")
            committed = True
        finally:
            if not committed and self._db.in_transaction:
                cursor.execute("ROLLBACK")
            cursor.close()

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        ready = False
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise RuntimeError(f"{self.path}: cannot use WAL (journal mode is {mode})")
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            self._conn = conn
            self._migrate()
            if self.exclusive:
                self._write_one_sync(END_IDEMPOTENCY_LEASES, ())
            ready = True
        finally:
            if not ready:
                self._conn = None
                conn.close()

    def _migrate(self) -> None:
        """Apply what the file lacks, one migration per transaction (the write lock keeps a
        second process out meanwhile), so a failure leaves the schema at the last whole one."""
        while True:
            with self._transaction() as cursor:
                (version,) = cursor.execute("PRAGMA user_version").fetchone()
                todo = pending(MIGRATIONS, range(1, version + 1))
                if not todo:
                    return
                for statement in todo[0].statements:
                    cursor.execute(statement)
                # PRAGMA takes no parameters; the value is an int from our own table.
                cursor.execute(f"PRAGMA user_version = {todo[0].number:d}")

    def _close_sync(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        # Claims held in memory end with the store (a clean stop has handed their jobs back).
        self._leases.clear()
        self._leased_rows.clear()
        try:
            # Folds the WAL back into the main file so the next open starts from one small file.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _ping_sync(self) -> bool:
        row: tuple[int] | None = self._db.execute("SELECT 1").fetchone()
        return row == (1,)

    def _create_many_sync(
        self, items: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[list[Event]]:
        rows: list[_JobRow] = []
        for job, _ in items:
            rows.append(
                (
                    job.id,
                    job.tenant,
                    job.provider,
                    job.state.value,
                    _to_us_or_none(job.next_poll_at),
                    job.version,
                    _to_us(job.created_at),
                    _labels(job.labels),
                    job.to_json(),
                    job.upstream_id,
                )
            )
        try:
            with self._transaction() as cursor:
                cursor.executemany(INSERT_JOB, rows)
                cursor.executemany(
                    INSERT_LABEL,
                    [(job.id, k, v) for job, _ in items for k, v in job.labels.items()],
                )
                _add_counts(cursor, Counter((job.provider, job.state.value) for job, _ in items))
                return _insert_events(cursor, items)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"job already exists: {exc}") from exc

    def _job(self, record: str) -> Job:
        """A stored record as a job, with the claim this store holds on it, if any, applied: what
        the row would say had the claim been written to it."""
        job = Job.from_json(record)
        lease = self._leases.get(job.id) if self._leases else None
        return job if lease is None else job.leased(lease.until_at, lease.version)

    def _get_sync(self, job_id: str, tenant: str) -> Job | None:
        row = self._db.execute(SELECT_JOB, (job_id, tenant)).fetchone()
        return self._job(row[0]) if row else None

    def _get_by_upstream_sync(
        self, provider: str, upstream_id: str, tenant: str | None
    ) -> Job | None:
        params = {"provider": provider, "upstream_id": upstream_id, "tenant": tenant}
        rows = self._db.execute(SELECT_JOBS_BY_UPSTREAM, params)
        newest = max(rows, default=None)
        return self._job(newest[1]) if newest else None

    def _list_sync(self, where: JobFilter, limit: int, before: str | None) -> list[Job]:
        sql, params = self._listing(where, limit, before)
        return [self._job(record) for (record,) in self._db.execute(sql, params)]

    def _list_versions_sync(
        self, where: JobFilter, limit: int, before: str | None
    ) -> list[tuple[str, int]]:
        sql, params = self._listing(where, limit, before)
        # The same walk, reading two columns instead of decoding each record.
        sql = sql.replace("SELECT jobs.record", "SELECT jobs.id, jobs.version", 1)
        leases = self._leases
        return [
            (job_id, lease.version if (lease := leases.get(job_id)) else version)
            for job_id, version in self._db.execute(sql, params)
        ]

    def _get_many_sync(self, job_ids: Sequence[str], tenant: str) -> list[Job]:
        ids = orjson.dumps(list(dict.fromkeys(job_ids))).decode()
        return [self._job(record) for (record,) in self._db.execute(SELECT_JOBS, (ids, tenant))]

    def _listing(
        self, where: JobFilter, limit: int, before: str | None
    ) -> tuple[str, dict[str, Any]]:
        labels = sorted(where.labels.items())
        params: dict[str, Any] = {
            "tenant": where.tenant,
            "before": NO_CURSOR if before is None else before,
            "provider": where.provider,
            "state": where.state.value if where.state is not None else None,
            "limit": limit,
        }
        sql = LIST_JOBS
        if labels:
            (key, value), others = labels[0], dict(labels[1:])
            params.update(key=key, value=value, others=_dumps(others))
            sql = LIST_JOBS_BY_LABELS
        return sql, params

    def _save_many_sync(
        self, changes: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[tuple[Job, list[Event]] | None]:
        with self._transaction() as cursor:
            ids = orjson.dumps(list({job.id for job, _ in changes})).decode()
            stored = {row[1]: row for row in cursor.execute(SELECT_FOR_SAVE, (ids,))}
            # The fences are checked here, in batch order, so that two versions of one job in one
            # batch behave as if saved one after the other; only each job's last version is written.
            # A claim held in memory stands for a write of its version.
            leases = self._leases
            versions = {
                job_id: lease.version if (lease := leases.get(job_id)) else row[2]
                for job_id, row in stored.items()
            }
            applied: list[tuple[Job, Sequence[NewEvent]]] = []
            passed: list[bool] = []
            latest: dict[str, Job] = {}
            for job, events in changes:
                ok = versions.get(job.id) == job.version - 1
                passed.append(ok)
                if ok:
                    versions[job.id] = job.version
                    latest[job.id] = job
                    applied.append((job, events))
            _write_saved(cursor, [(stored[job_id], job) for job_id, job in latest.items()])
            numbered = iter(_insert_events(cursor, applied))
        if leases:
            for job_id in latest:  # committed: a save ends any claim on the job
                self._release(job_id)
        results: list[tuple[Job, list[Event]] | None] = []
        for (job, _), ok in zip(changes, passed, strict=True):
            results.append((job, next(numbered)) if ok else None)
        return results

    def _delete_sync(self, job_id: str, tenant: str) -> bool:
        # The foreign keys cascade to the job's events and labels.
        with self._transaction() as cursor:
            deleted = cursor.execute(DELETE_JOB, (job_id, tenant)).fetchall()
            _add_counts(cursor, Counter({(provider, state): -1 for provider, state in deleted}))
        if deleted:
            self._release(job_id)
        return bool(deleted)

    def _claim_due_sync(
        self, now: datetime, limit: int, lease_until: datetime, caps: Mapping[str, int] | None
    ) -> list[Job]:
        now_us = _to_us(now)
        lease_us = _to_us(lease_until)
        lease_iso = _iso(lease_until)
        claimed: list[Job] = []
        if self.exclusive:
            # Nothing is written, so no write lock: this connection is the file's only writer, and
            # this thread runs one call at a time, so nothing changes between the reads below.
            chosen, records = self._choose(self._db, now_us, limit, caps)
            leases = self._leases
            for item in chosen:
                job = Job.from_json(records[item.payload])
                held = leases.get(job.id)  # a lease that ran out: claimed again on top of it
                version = (held.version if held is not None else job.version) + 1
                claimed.append(job.leased(lease_until, version))
                self._hold(_Lease(job.id, item.payload, lease_us, lease_until, version))
            return claimed
        updates: list[tuple[int, int, str, int]] = []
        with self._transaction() as cursor:
            chosen, records = self._choose(cursor, now_us, limit, caps)
            for item in chosen:
                record = orjson.loads(records[item.payload])
                record["version"] += 1
                record["next_poll_at"] = lease_iso
                claimed.append(Job.from_record(record))
                updates.append((lease_us, record["version"], _dumps(record), item.payload))
            if updates:
                cursor.executemany(LEASE_JOB, updates)
        return claimed

    def _choose(
        self,
        cursor: sqlite3.Cursor | sqlite3.Connection,
        now_us: int,
        limit: int,
        caps: Mapping[str, int] | None,
    ) -> tuple[list[Due[tuple[int, int], int]], dict[int, str]]:
        """The due rows a claim takes, soonest first, and their records by row id."""
        if caps is None:
            providers = [p for (p,) in cursor.execute(SCHEDULED_PROVIDERS).fetchall()]
            wants = {provider: limit for provider in providers}
        else:
            wants = {provider: min(cap, limit) for provider, cap in caps.items()}
        # Each (provider, tenant)'s soonest due jobs from the index alone (next_poll_at and
        # rowid), each read only as far as the turns ask (gateway.store.fair).
        streams: dict[str, list[Generator[Due[tuple[int, int], int], None, None]]] = {}
        for provider, want in wants.items():
            tenants = cursor.execute(SCHEDULED_TENANTS, {"provider": provider}).fetchall()
            for (tenant,) in tenants:
                stream = self._due_rows(provider, tenant, now_us, want)
                streams.setdefault(tenant, []).append(stream)
        try:
            chosen = take_turns(streams, limit=limit, caps=caps)
        finally:
            for tenant_streams in streams.values():
                for stream in tenant_streams:
                    stream.close()
        if not chosen:
            return [], {}
        wanted = _dumps([item.payload for item in chosen])
        records: dict[int, str] = dict(cursor.execute(SELECT_RECORDS, (wanted,)).fetchall())
        chosen.sort(key=_order)
        return chosen, records

    def _due_rows(
        self, provider: str, tenant: str, now_us: int, want: int
    ) -> Generator[Due[tuple[int, int], int], None, None]:
        """A (provider, tenant)'s soonest due rows, read as they are asked for: the statement
        runs at the first ask and ends when the stream is closed. Rows under a claim held in
        memory (still due in the index) are passed over until their lease runs out."""
        held = self._leased_rows
        rows = self._db.execute(SELECT_DUE_OF_TENANT, (provider, tenant, now_us, want + len(held)))
        try:
            for when, rowid in rows:
                lease = held.get(rowid) if held else None
                if lease is None or lease.until <= now_us:
                    yield Due((when, rowid), tenant, provider, rowid)
        finally:
            rows.close()

    def _hold(self, lease: _Lease) -> None:
        self._release(lease.job_id)
        self._leases[lease.job_id] = lease
        self._leased_rows[lease.rowid] = lease

    def _release(self, job_id: str) -> None:
        lease = self._leases.pop(job_id, None)
        if lease is not None:
            del self._leased_rows[lease.rowid]

    def _next_due_sync(self) -> datetime | None:
        held = self._leased_rows
        if not held:
            (earliest,) = self._db.execute(SELECT_NEXT_DUE).fetchone()
            return _from_us(earliest) if earliest is not None else None
        # The rows under claims held in memory are still due in the index: the earliest due row
        # no claim holds, or the first lease to run out, whichever comes first.
        earliest = min(lease.until for lease in held.values())
        rows = self._db.execute(SELECT_DUE_ROWS)
        try:
            for when, rowid in rows:
                if when >= earliest:
                    break
                if rowid not in held:
                    earliest = when
                    break
        finally:
            rows.close()
        return _from_us(earliest)

    def _count_by_state_sync(self) -> dict[tuple[str, JobState], int]:
        return {
            (provider, JobState(state)): count
            for provider, state, count in self._db.execute(COUNT_BY_STATE)
        }

    def _tenant_usage_sync(self, tenant: str, since: datetime) -> TenantUsage:
        params = {"tenant": tenant, "since": _to_us(since)}
        active, recent, oldest = self._db.execute(TENANT_USAGE, params).fetchone()
        return TenantUsage(active, recent, None if oldest is None else _from_us(oldest))

    def _events_sync(self, sql: str, params: Mapping[str, Any]) -> list[Event]:
        return [
            Event(
                id=row[0],
                job_id=row[1],
                tenant=row[2],
                provider=row[3],
                state=JobState(row[4]),
                kind=row[5],
                data=orjson.loads(row[6]),
                created_at=_from_us(row[7]),
            )
            for row in self._db.execute(sql, params)
        ]

    def _last_event_id_sync(self) -> int:
        row = self._db.execute(LAST_EVENT_ID).fetchone()
        return int(row[0]) if row else 0

    def _claim_idempotency_sync(
        self,
        key: str,
        fingerprint: str,
        now: datetime,
        lease_until: datetime,
        job_id: str,
        token: str,
        command: str | None,
    ) -> IdempotencyRecord | ClaimedIdempotency:
        lease_us = _to_us(lease_until)
        with self._transaction() as cursor:
            claim = (key, fingerprint, _to_us(now), token, lease_us, job_id, command)
            if cursor.execute(CLAIM_IDEMPOTENCY, claim).rowcount == 1:
                return ClaimedIdempotency(key, token, job_id)
            row = cursor.execute(SELECT_IDEMPOTENCY, (key,)).fetchone()
            stored, state, status, body, held_job, created_at, held_until, upstream, called = row
            if stored != fingerprint:
                raise IdempotencyConflict(key)
            if state == IdempotencyPhase.DONE:
                return IdempotencyRecord(
                    key=key,
                    fingerprint=stored,
                    status=status,
                    body=orjson.loads(body),
                    job_id=held_job,
                    created_at=_from_us(created_at),
                )
            if held_until > _to_us(now):
                raise IdempotencyInFlight(key, _from_us(held_until))
            cursor.execute(TAKE_OVER_IDEMPOTENCY, (token, lease_us, job_id, key))
        return ClaimedIdempotency(
            key,
            token,
            held_job or job_id,
            IdempotencyPhase(state),
            upstream,
            None if called is None else _from_us(called),
        )

    def _abandoned_idempotency_sync(self, now: datetime, limit: int) -> list[AbandonedKey]:
        rows = self._db.execute(ABANDONED_IDEMPOTENCY, (_to_us(now), limit)).fetchall()
        return [AbandonedKey(key, stored, orjson.loads(command)) for key, stored, command in rows]

    def _write_one_sync(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> int:
        with self._transaction() as cursor:
            return cursor.execute(sql, params).rowcount

    def _write_many_sync(self, sql: str, rows: Sequence[Sequence[Any] | Mapping[str, Any]]) -> int:
        with self._transaction() as cursor:
            return cursor.executemany(sql, rows).rowcount

    def _api_keys_sync(self, sql: str, params: Sequence[Any]) -> list[ApiKey]:
        return [_api_key(row) for row in self._db.execute(sql, params)]

    def _durations_sync(self) -> dict[str, DurationSketch]:
        return {
            name: DurationSketch.from_record(orjson.loads(text))
            for name, text in self._db.execute(SELECT_DURATIONS)
        }

    def _merge_durations_sync(self, deltas: Sequence[DurationDelta], now_us: int) -> None:
        # One write transaction: a shared file's other writers wait, and no merge is lost.
        with self._transaction() as cursor:
            for delta in deltas:
                row = cursor.execute(SELECT_DURATION, (delta.name,)).fetchone()
                stored = (
                    DurationSketch.from_record(orjson.loads(row[0])) if row else DurationSketch()
                )
                merged = stored.absorb(delta.sketch, half_life=delta.half_life)
                cursor.execute(
                    UPSERT_DURATION,
                    (delta.name, orjson.dumps(merged.to_record()).decode(), now_us),
                )

    def _get_cursor_sync(self, name: str) -> int | None:
        row = self._db.execute(GET_CURSOR, (name,)).fetchone()
        return int(row[0]) if row else None

    def _enqueue_deliveries_sync(
        self, deliveries: Sequence[NewDelivery], cursor_to: tuple[str, int] | None
    ) -> int:
        rows = [
            (
                new.event_id,
                new.job_id,
                new.url,
                new.kind,
                new.payload,
                _to_us(new.due_at),
                _to_us(new.due_at),
                _to_us(new.due_at),
                new.url,
            )
            for new in deliveries
        ]
        with self._transaction() as cursor:
            added = cursor.executemany(INSERT_DELIVERY, rows).rowcount if rows else 0
            if cursor_to is not None:
                cursor.execute(SET_CURSOR, cursor_to)
        return added

    def _claim_deliveries_sync(
        self, now: datetime, limit: int, lease_until: datetime
    ) -> list[Delivery]:
        lease_us = _to_us(lease_until)
        with self._transaction() as cursor:
            rows = cursor.execute(SELECT_DUE_DELIVERIES, (_to_us(now), limit)).fetchall()
            cursor.executemany(LEASE_DELIVERY, [(lease_us, row[0]) for row in rows])
        return [_delivery((*row[:8], lease_us, *row[9:])) for row in rows]

    def _finish_delivery_sync(self, params: Sequence[Any], disable: bool, now_us: int) -> bool:
        with self._transaction() as cursor:
            finished = cursor.execute(FINISH_DELIVERY, params).fetchall()
            if disable and finished:
                (url,) = finished[0]
                cursor.execute(DISABLE_ENDPOINT, (url, now_us))
                cursor.execute(DISABLE_PENDING_DELIVERIES, (now_us, url))
        return bool(finished)

    def _next_delivery_due_sync(self) -> datetime | None:
        (earliest,) = self._db.execute(NEXT_DELIVERY_DUE).fetchone()
        return _from_us(earliest) if earliest is not None else None

    def _endpoint_disabled_sync(self, url: str) -> bool:
        return self._db.execute(ENDPOINT_DISABLED, (url,)).fetchone() is not None

    def _deliveries_sync(self, sql: str, params: Sequence[Any]) -> list[Delivery]:
        return [_delivery(row) for row in self._db.execute(sql, params)]


class _Checkpointer:
    """Copies the WAL back into the database file on a thread and a connection of its own.

    Its ``PASSIVE`` passes never wait for the worker: the worker's reads and writes go on during a
    pass, and the pass's fsyncs are this thread's. Past ``WAL_FRAMES_CAP`` frames a pass asks for a
    ``RESTART``, which waits (busy_timeout) for the writer to pause so that the WAL can start over.
    """

    def __init__(self, path: Path, every: float = CHECKPOINT_EVERY) -> None:
        self.path = path
        self.every = every
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="jobgate-sqlite-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End after the pass in progress, if any (close's TRUNCATE checkpoint comes next)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("sqlite.checkpointer_failed", path=str(self.path), error=str(exc))
            return
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = "PASSIVE"
            while not self._stop.wait(self.every):
                try:
                    _, frames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                except sqlite3.Error as exc:
                    # The next pass tries again; until then the WAL only grows a little.
                    log.warning("sqlite.checkpoint_failed", path=str(self.path), error=str(exc))
                    continue
                self.passes += 1
                mode = "RESTART" if frames > WAL_FRAMES_CAP else "PASSIVE"
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------------
# Helpers for the worker thread, inside the caller's transaction where they take a cursor


def _lock_exclusively(path: Path) -> int:
    """Hold an exclusive lock on ``<path>.lock`` for as long as the descriptor is open. The kernel
    drops it when the process dies however it dies, so a crash never leaves the file locked."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreUnavailable(
            f"{path} is in use by another jobgate process ({holder}); one SQLite file serves one "
            "process: run replicas with store.kind = 'postgres'"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    return fd


def _write_saved(cursor: sqlite3.Cursor, rows: Sequence[tuple[Any, Job]]) -> None:
    """Write jobs whose fences have passed; ``rows`` pairs each stored row with its new job."""
    plain: list[tuple[int | None, int, str, int, int]] = []
    full: list[tuple[str, str, int | None, int, str, int, int]] = []
    relabelled: list[Job] = []
    moved: Counter[tuple[str, str]] = Counter()
    for (rowid, _, version, state, labels), job in rows:
        record = job.to_json()
        new_labels = _labels(job.labels)
        next_poll = _to_us_or_none(job.next_poll_at)
        if state == job.state.value and labels == new_labels:
            plain.append((next_poll, job.version, record, rowid, version))
        else:
            full.append(
                (job.state.value, new_labels, next_poll, job.version, record, rowid, version)
            )
            if labels != new_labels:
                relabelled.append(job)
            if state != job.state.value:
                moved[job.provider, state] -= 1
                moved[job.provider, job.state.value] += 1
    written = 0
    if plain:
        written += cursor.executemany(UPDATE_JOB, plain).rowcount
    if full:
        written += cursor.executemany(UPDATE_JOB_AND_STATE, full).rowcount
    if written != len(rows):
        # Cannot happen while we hold the write lock; refuse to report writes that did not occur.
        raise RuntimeError(f"fenced save wrote {written} of {len(rows)} rows")
    _add_counts(cursor, moved)
    if relabelled:
        cursor.executemany(DELETE_LABELS, [(job.id,) for job in relabelled])
        cursor.executemany(
            INSERT_LABEL, [(job.id, k, v) for job in relabelled for k, v in job.labels.items()]
        )


def _order(item: Due[tuple[int, int], int]) -> tuple[int, int]:
    return item.order


def _add_counts(cursor: sqlite3.Cursor, deltas: Counter[tuple[str, str]]) -> None:
    rows = [(provider, state, n) for (provider, state), n in deltas.items() if n]
    if rows:
        cursor.executemany(ADD_JOB_COUNTS, rows)


def _insert_events(
    cursor: sqlite3.Cursor, items: Sequence[tuple[Job, Sequence[NewEvent]]]
) -> list[list[Event]]:
    """Number and insert the events of ``items`` (inside the caller's transaction).

    Ids are assigned here rather than by SQLite so that one ``executemany`` can insert them all and
    still tell each caller its ids; the write lock makes reading the sequence first safe.
    """
    numbered: list[list[Event]] = []
    rows: list[_EventRow] = []
    next_id = 0
    for job, events in items:
        if events and next_id == 0:
            row = cursor.execute(LAST_EVENT_ID).fetchone()
            next_id = (int(row[0]) if row else 0) + 1
        created_us = _to_us(job.updated_at) if events else 0
        batch: list[Event] = []
        for event in events:
            batch.append(
                Event(
                    id=next_id,
                    job_id=job.id,
                    tenant=job.tenant,
                    provider=job.provider,
                    state=job.state,
                    kind=event.kind,
                    data=event.data,
                    created_at=job.updated_at,
                )
            )
            rows.append(
                (
                    next_id,
                    job.id,
                    job.tenant,
                    job.provider,
                    job.state.value,
                    event.kind,
                    _dumps(dict(event.data)),
                    created_us,
                )
            )
            next_id += 1
        numbered.append(batch)
    if rows:
        cursor.executemany(INSERT_EVENT, rows)
    return numbered


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        id=row[0],
        tenant=row[1],
        scopes=frozenset(Scope(name) for name in orjson.loads(row[2])),
        digest=row[3],
        prefix=row[4],
        name=row[5],
        created_at=_from_us(row[6]),
        expires_at=_from_us(row[7]) if row[7] is not None else None,
        revoked_at=_from_us(row[8]) if row[8] is not None else None,
        last_used_at=_from_us(row[9]) if row[9] is not None else None,
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        event_id=row[1],
        job_id=row[2],
        url=row[3],
        kind=row[4],
        payload=row[5],
        status=row[6],
        attempts=row[7],
        next_attempt_at=_from_us(row[8]) if row[8] is not None else None,
        last_status=row[9],
        last_error=row[10],
        created_at=_from_us(row[11]),
        updated_at=_from_us(row[12]),
    )


def _dumps(value: JSON) -> str:
    return orjson.dumps(value).decode()


def _labels(labels: Mapping[str, str]) -> str:
    # Sorted, so equal labels give equal text and the update trigger can skip unchanged ones.
    return orjson.dumps(dict(labels), option=orjson.OPT_SORT_KEYS).decode() if labels else "{}"


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _to_us_or_none(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _MICROSECOND


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _iso(value: datetime) -> str:
    # The same shape as Job.to_record writes, so a leased record reads back like any other.
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
