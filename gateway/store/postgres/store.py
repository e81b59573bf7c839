"""The replicas' :class:`~gateway.store.base.JobStore`: PostgreSQL through an asyncpg pool.

Several gateway processes share one database. What keeps them from stepping on each other:

- claims take due rows with ``FOR UPDATE SKIP LOCKED`` and lease them by moving ``next_poll_at``
  to the lease's end, so each due job goes to exactly one replica until its lease runs out;
- every save is fenced by version, so a replica whose lease ran out (and whose job was claimed
  again) changes nothing;
- event ids come from a one-row counter locked until commit, so events become visible in id order
  and a reader resuming after id N misses none (``sql.CREATE_EVENT_SEQ`` says why not a sequence);
- commits that append events, leave a job due now or revoke an API key NOTIFY the other
  replicas (``listen.py``);
- claims let tenants take turns (``sql.CLAIM_DUE``), at a cost bounded by tenants times the limit.

Every statement is a named constant in ``sql.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final

import orjson
import structlog

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
from gateway.store.postgres import driver, rows
from gateway.store.postgres import sql as q
from gateway.store.postgres.driver import (
    CONNECT_ERRORS,
    Connection,
    Pool,
    Record,
    UniqueViolation,
)
from gateway.store.postgres.dsn import check_schema, unavailable
from gateway.store.postgres.listen import Listener, notify_jobs
from gateway.store.postgres.migrate import migrate
from gateway.store.postgres.quota import PostgresQuota

log = structlog.get_logger("jobgate.store")

_CLAIM_RETRIES: Final = 3
"""An idempotency key found taken can be released before we read it; try the claim again."""


_JOB_LISTINGS = (q.LIST_JOBS, q.LIST_JOBS_BEFORE, q.LIST_JOBS_LABELLED, q.LIST_JOBS_LABELLED_BEFORE)
_VERSION_LISTINGS = (
    q.LIST_VERSIONS,
    q.LIST_VERSIONS_BEFORE,
    q.LIST_VERSIONS_LABELLED,
    q.LIST_VERSIONS_LABELLED_BEFORE,
)


class PostgresStore:
    """A :class:`~gateway.store.base.JobStore` on PostgreSQL, safe to share between replicas."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.schema = check_schema(schema)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = connect_timeout
        self._pool: Pool | None = None
        self._callbacks: list[Callable[[Signal], None]] = []
        self._job_callbacks: list[Callable[[Sequence[str] | None], None]] = []
        self._listener = Listener(
            dsn,
            self._signal,
            timeout=connect_timeout,
            schema=self.schema,
            on_jobs=self._jobs_changed,
        )
        self.quota = PostgresQuota(lambda: self._db)
        """The providers' rate limits and concurrency, shared by every replica."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema if missing, migrate it, and start listening.

        Raises :class:`~gateway.store.base.StoreUnavailable` when the server cannot be
        reached or refuses us; :class:`~gateway.store.migrations.SchemaTooNew` when a newer
        jobgate has migrated the schema.
        """
        if self._pool is not None:
            return
        try:
            pool = await driver.create_pool(
                self.dsn,
                schema=self.schema,
                min_size=self._min_size,
                max_size=self._max_size,
                connect_timeout=self._timeout,
            )
        except CONNECT_ERRORS as exc:
            raise unavailable(self.dsn, exc) from None
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            await self._listener.start()
        except CONNECT_ERRORS as exc:
            pool.terminate()
            raise unavailable(self.dsn, exc) from None
        except BaseException:
            pool.terminate()
            raise
        if applied:
            log.info("store.migrated", schema=self.schema, applied=applied)
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        await self._listener.stop()
        if pool is None:
            return
        try:
            # Waits for calls in progress to hand their connections back, but not forever.
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            # Bounded: a readiness probe must answer even when the pool is exhausted or the
            # server has stopped answering.
            async with asyncio.timeout(self._timeout), self._pool.acquire() as conn:
                return bool(await conn.fetchval(q.PING) == 1)
        except driver.CONNECTION_LOST:
            return False

    def subscribe(self, callback: Callable[[Signal], None]) -> None:
        self._callbacks.append(callback)

    def subscribe_jobs(self, callback: Callable[[Sequence[str] | None], None]) -> None:
        self._job_callbacks.append(callback)

    # -- jobs ----------------------------------------------------------------------------------

    async def create(self, job: Job, events: Sequence[NewEvent]) -> list[Event]:
        return (await self._insert([(job, events)]))[0]

    async def _create_many(self, items: Sequence[tuple[Job, Sequence[NewEvent]]]) -> int:
        """Insert many new jobs in one transaction (benchmarks, imports); all or nothing."""
        return len(await self._insert(items))

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job | None:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.SELECT_JOB, job_id, tenant)
        return None if row is None else rows.job(row)

    async def get_by_upstream(
        self, provider: str, upstream_id: str, tenant: str | None = DEFAULT_TENANT
    ) -> Job | None:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.SELECT_JOB_BY_UPSTREAM, provider, upstream_id, tenant)
        return None if row is None else rows.job(row)

    async def list_jobs(self, where: JobFilter, *, limit: int, cursor: str | None) -> Page:
        found = await self._listing(where, limit, cursor, _JOB_LISTINGS)
        jobs = [rows.job(row) for row in found[:limit]]
        more = len(found) > limit
        return Page(
            jobs=jobs, next_cursor=encode_cursor(jobs[-1].id, where.tenant) if more else None
        )

    async def list_versions(
        self, where: JobFilter, *, limit: int, cursor: str | None
    ) -> VersionPage:
        found = await self._listing(where, limit, cursor, _VERSION_LISTINGS)
        versions = [(str(row[0]), int(row[1])) for row in found[:limit]]
        more = len(found) > limit
        return VersionPage(versions, encode_cursor(versions[-1][0], where.tenant) if more else None)

    async def _listing(
        self, where: JobFilter, limit: int, cursor: str | None, queries: tuple[str, str, str, str]
    ) -> list[Record]:
        """One page of a listing and the first row past it (whether there is a next page), by
        one of ``queries``: without and with a cursor, then the same with labels."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        before = decode_cursor(cursor, where.tenant) if cursor is not None else None
        state = where.state.value if where.state is not None else None
        args: list[object] = [where.tenant, where.provider, state, limit + 1]
        plain, after_cursor, labelled, labelled_after_cursor = queries
        if where.labels:
            args.append(rows.dumps(dict(where.labels)))
            sql = labelled if before is None else labelled_after_cursor
        else:
            sql = plain if before is None else after_cursor
        if before is not None:
            args.append(before)
        async with self._db.acquire() as conn:
            found: list[Record] = await conn.fetch(sql, *args)
        return found

    async def get_many(self, job_ids: Sequence[str], tenant: str = DEFAULT_TENANT) -> list[Job]:
        if not job_ids:
            return []
        async with self._db.acquire() as conn:
            found = await conn.fetch(q.SELECT_JOBS, list(dict.fromkeys(job_ids)), tenant)
        return [rows.job(row) for row in found]

    async def save_many(
        self, changes: Sequence[tuple[Job, Sequence[NewEvent]]]
    ) -> list[tuple[Job, list[Event]] | None]:
        if not changes:
            return []
        ids = sorted({job.id for job, _ in changes})
        async with self._transaction() as conn:
            stored = {str(r[0]): int(r[1]) for r in await conn.fetch(q.LOCK_FOR_SAVE, ids)}
            # Fences are checked in batch order, so two versions of one job in a batch behave as
            # if saved one after the other; only each job's last version is written.
            versions = dict(stored)
            passed: list[bool] = []
            applied: list[tuple[Job, Sequence[NewEvent]]] = []
            latest: dict[str, Job] = {}
            for job, events in changes:
                ok = versions.get(job.id) == job.version - 1
                passed.append(ok)
                if ok:
                    versions[job.id] = job.version
                    latest[job.id] = job
                    applied.append((job, events))
            if latest:
                writes = [(stored[job_id], job) for job_id, job in latest.items()]
                written = await conn.fetchrow(q.SAVE_JOBS, *rows.saved_columns(writes))
                count = 0 if written is None else int(written[0])
                if count != len(writes):
                    # Cannot happen while we hold the rows' locks; never report a write not made.
                    raise RuntimeError(f"fenced save wrote {count} of {len(writes)} rows")
            # Before the events' notice: a replica drops its stale copies before its feed wakes
            # the readers who will read them.
            await notify_jobs(conn, latest)
            numbered = iter(await append_events(conn, applied))
        return [
            (job, next(numbered)) if ok else None
            for (job, _), ok in zip(changes, passed, strict=True)
        ]

    async def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        # The foreign key cascades to the job's events.
        async with self._transaction() as conn:
            deleted = rows.command_count(await conn.execute(q.DELETE_JOB, job_id, tenant)) > 0
            if deleted:
                await notify_jobs(conn, [job_id])
            return deleted

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
        async with self._db.acquire() as conn:
            if per_provider is None:
                claimed = await conn.fetch(q.CLAIM_DUE, now, limit, lease_until, owner)
            else:
                caps = {p: min(n, limit) for p, n in per_provider.items() if n > 0}
                if not caps:
                    return []
                claimed = await conn.fetch(
                    q.CLAIM_DUE_PER_PROVIDER,
                    now,
                    limit,
                    lease_until,
                    owner,
                    list(caps),
                    list(caps.values()),
                )
            jobs = [rows.job(row) for row in claimed]
            # After the claim's commit: a process that dies in between leaves other replicas
            # serving the version before the lease, which no client has read from this one.
            await notify_jobs(conn, [job.id for job in jobs])
        return jobs

    async def next_due(self) -> datetime | None:
        async with self._db.acquire() as conn:
            earliest: datetime | None = await conn.fetchval(q.SELECT_NEXT_DUE)
        return earliest

    async def count_by_state(self) -> dict[tuple[str, JobState], int]:
        async with self._db.acquire() as conn:
            counted = await conn.fetch(q.COUNT_BY_STATE)
        return {(str(r[0]), JobState(r[1])): int(r[2]) for r in counted}

    async def tenant_usage(self, tenant: str, since: datetime) -> TenantUsage:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.TENANT_USAGE, tenant, since)
        if row is None:  # an aggregate always answers one row
            raise RuntimeError("tenant usage answered no row")
        return TenantUsage(int(row[0]), int(row[1]), row[2])

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
        args: list[object] = [after_id, tenant, list(providers), [s.value for s in states], limit]
        sql = q.EVENTS_AFTER
        if job_id is not None:
            sql = q.EVENTS_AFTER_OF_JOB
            args.append(job_id)
        async with self._db.acquire() as conn:
            return [rows.event(row) for row in await conn.fetch(sql, *args)]

    async def last_event_id(self) -> int:
        async with self._db.acquire() as conn:
            return int(await conn.fetchval(q.LAST_EVENT_ID))

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
        stored = None if command is None else rows.dumps(dict(command))
        async with self._db.acquire() as conn:
            for _ in range(_CLAIM_RETRIES):
                claimed = await conn.fetchrow(
                    q.CLAIM_IDEMPOTENCY, key, fingerprint, now, token, lease_until, job_id, stored
                )
                if claimed is not None:
                    state, held_job, upstream_id, called_at = (claimed[i] for i in range(4))
                    return ClaimedIdempotency(
                        key,
                        token,
                        str(held_job),
                        IdempotencyPhase(state),
                        None if upstream_id is None else str(upstream_id),
                        called_at,
                    )
                # A statement of its own, so its snapshot sees the row that beat our insert.
                row = await conn.fetchrow(q.SELECT_IDEMPOTENCY, key)
                if row is not None:
                    break
            else:
                raise IdempotencyInFlight(key)  # claimed and released over and over meanwhile
        stored, state, status, body, held_job, created_at, held_until = (row[i] for i in range(7))
        if stored != fingerprint:
            raise IdempotencyConflict(key)
        if state != IdempotencyPhase.DONE or body is None:
            # Not done and not taken over: its lease runs (or ran out just after our insert).
            raise IdempotencyInFlight(key, held_until)
        return IdempotencyRecord(
            key=key,
            fingerprint=str(stored),
            status=int(status),
            body=rows.loads_object(body),
            job_id=None if held_job is None else str(held_job),
            created_at=created_at,
        )

    async def abandoned_idempotency(self, now: datetime, limit: int) -> list[AbandonedKey]:
        async with self._db.acquire() as conn:
            found = await conn.fetch(q.ABANDONED_IDEMPOTENCY, now, limit)
        return [AbandonedKey(str(row[0]), str(row[1]), rows.loads_object(row[2])) for row in found]

    async def advance_idempotency(
        self,
        claim: ClaimedIdempotency,
        phase: IdempotencyPhase,
        *,
        now: datetime,
        upstream_id: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        async with self._db.acquire() as conn:
            status = await conn.execute(
                q.ADVANCE_IDEMPOTENCY,
                claim.key,
                claim.token,
                phase.value,
                now,
                upstream_id,
                lease_until,
            )
        return rows.command_count(status) == 1

    async def finish_idempotency(
        self,
        claim: ClaimedIdempotency,
        *,
        status: int,
        body: Mapping[str, JSON],
        job_id: str | None,
        now: datetime,
    ) -> bool:
        # A key purged or taken over while its request ran matches no row: nothing is kept.
        async with self._db.acquire() as conn:
            done = await conn.execute(
                q.FINISH_IDEMPOTENCY,
                claim.key,
                claim.token,
                status,
                rows.dumps(dict(body)),
                job_id,
                now,
            )
        return rows.command_count(done) == 1

    async def release_idempotency(self, claim: ClaimedIdempotency) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(q.RELEASE_IDEMPOTENCY, claim.key, claim.token)

    async def purge_idempotency(self, older_than: datetime) -> int:
        async with self._db.acquire() as conn:
            return rows.command_count(await conn.execute(q.PURGE_IDEMPOTENCY, older_than))

    # -- outbound webhook deliveries -----------------------------------------------------------

    async def get_cursor(self, name: str) -> int | None:
        async with self._db.acquire() as conn:
            value = await conn.fetchval(q.GET_CURSOR, name)
        return None if value is None else int(value)

    async def set_cursor(self, name: str, value: int) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(q.SET_CURSOR, name, value)

    async def durations(self) -> dict[str, DurationSketch]:
        async with self._db.acquire() as conn:
            found = await conn.fetch(q.SELECT_DURATIONS)
        return {row[0]: DurationSketch.from_record(orjson.loads(row[1])) for row in found}

    async def merge_durations(self, deltas: Sequence[DurationDelta]) -> None:
        if not deltas:
            return
        names = sorted({delta.name for delta in deltas})
        async with self._transaction() as conn:
            await conn.execute(q.ENSURE_DURATIONS, names)
            locked = await conn.fetch(q.LOCK_DURATIONS, names)
            sketches = {row[0]: DurationSketch.from_record(orjson.loads(row[1])) for row in locked}
            for delta in deltas:
                sketches[delta.name] = sketches.get(delta.name, DurationSketch()).absorb(
                    delta.sketch, half_life=delta.half_life
                )
            for name in names:
                await conn.execute(
                    q.UPDATE_DURATION, name, orjson.dumps(sketches[name].to_record()).decode()
                )

    async def enqueue_deliveries(
        self, deliveries: Sequence[NewDelivery], *, cursor: tuple[str, int] | None = None
    ) -> int:
        if not deliveries and cursor is None:
            return 0
        added = 0
        async with self._transaction() as conn:
            if deliveries:
                tag = await conn.execute(q.ENQUEUE_DELIVERIES, *rows.delivery_columns(deliveries))
                added = rows.command_count(tag)
            if cursor is not None:
                await conn.execute(q.SET_CURSOR, *cursor)
        return added

    async def claim_due_deliveries(
        self, now: datetime, *, limit: int, lease_until: datetime
    ) -> list[Delivery]:
        if limit < 1:
            return []
        async with self._db.acquire() as conn:
            claimed = await conn.fetch(q.CLAIM_DUE_DELIVERIES, now, limit, lease_until)
        return [rows.delivery(row) for row in claimed]

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
        next_at = retry_at if outcome == "retry" else None
        async with self._transaction() as conn:
            url = await conn.fetchval(
                q.FINISH_DELIVERY,
                delivery_id,
                status,
                attempts,
                next_at,
                last_status,
                last_error,
                now,
                leased_until,
            )
            if url is not None and outcome == "disabled":
                await conn.execute(q.DISABLE_ENDPOINT, url, now)
                await conn.execute(q.DISABLE_PENDING_DELIVERIES, url, now)
        return url is not None

    async def next_delivery_due(self) -> datetime | None:
        async with self._db.acquire() as conn:
            earliest: datetime | None = await conn.fetchval(q.NEXT_DELIVERY_DUE)
        return earliest

    async def endpoint_disabled(self, url: str) -> bool:
        async with self._db.acquire() as conn:
            return bool(await conn.fetchval(q.ENDPOINT_DISABLED, url))

    async def list_deliveries(
        self, *, job_id: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        limit = max(limit, 0)
        async with self._db.acquire() as conn:
            if job_id is None:
                found = await conn.fetch(q.LIST_DELIVERIES, limit)
            else:
                found = await conn.fetch(q.LIST_JOB_DELIVERIES, job_id, limit)
        return [rows.delivery(row) for row in found]

    async def purge_deliveries(self, older_than: datetime) -> int:
        async with self._db.acquire() as conn:
            return rows.command_count(await conn.execute(q.PURGE_DELIVERIES, older_than))

    # -- API keys ------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        try:
            async with self._db.acquire() as conn:
                await conn.execute(q.INSERT_API_KEY, *rows.api_key_values(key))
        except UniqueViolation as exc:
            raise ValueError(f"api key {key.id} already exists (its id or its digest)") from exc

    async def api_key_by_digest(self, digest: str) -> ApiKey | None:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.SELECT_API_KEY_BY_DIGEST, digest)
        return None if row is None else rows.api_key(row)

    async def api_key(self, key_id: str) -> ApiKey | None:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.SELECT_API_KEY, key_id)
        return None if row is None else rows.api_key(row)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        async with self._db.acquire() as conn:
            if tenant is None:
                found = await conn.fetch(q.LIST_API_KEYS)
            else:
                found = await conn.fetch(q.LIST_TENANT_API_KEYS, tenant)
        return [rows.api_key(row) for row in found]

    async def revoke_api_key(
        self, key_id: str, now: datetime, *, tenant: str | None = None
    ) -> bool:
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(q.REVOKE_API_KEY, key_id, now, tenant)
        return row is not None and int(row[0]) == 1

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        if not used:
            return
        async with self._db.acquire() as conn:
            await conn.execute(q.TOUCH_API_KEYS, list(used), list(used.values()))

    # -- internals -----------------------------------------------------------------------------

    @property
    def _db(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        return self._pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        async with self._db.acquire() as conn, conn.transaction():
            yield conn

    async def _insert(self, items: Sequence[tuple[Job, Sequence[NewEvent]]]) -> list[list[Event]]:
        if not items:
            return []
        try:
            async with self._transaction() as conn:
                await conn.fetchrow(q.INSERT_JOBS, *rows.job_columns([job for job, _ in items]))
                return await append_events(conn, items)
        except UniqueViolation as exc:
            raise ValueError(f"job already exists: {exc}") from exc

    def _jobs_changed(self, job_ids: Sequence[str] | None) -> None:
        for callback in list(self._job_callbacks):
            try:
                callback(job_ids)
            except Exception:  # one subscriber's bug must not silence the others
                log.exception("store.signal_callback_failed", signal="jobs")

    def _signal(self, signal: Signal) -> None:
        for callback in list(self._callbacks):
            try:
                callback(signal)
            except Exception:  # one subscriber's bug must not silence the others
                log.exception("store.signal_callback_failed", signal=signal)


async def append_events(
    conn: Connection, items: Sequence[tuple[Job, Sequence[NewEvent]]]
) -> list[list[Event]]:
    """Number and insert the events of ``items`` inside the caller's transaction, which then holds
    the event counter's lock: call it last, just before commit, to hold that lock briefly."""
    flat = [(job, event) for job, events in items for event in events]
    if not flat:
        return [[] for _ in items]
    last = int(await conn.fetchval(q.APPEND_EVENTS, *rows.event_columns(flat)))
    return rows.numbered(items, last - len(flat) + 1)
