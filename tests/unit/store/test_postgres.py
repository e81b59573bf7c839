"""What only the PostgreSQL store promises: replicas sharing one database migrate, claim, fence,
number events and take idempotency keys without stepping on each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway.states import JobState
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    NewEvent,
    StoreUnavailable,
    TenantUsage,
)
from gateway.store.migrations import Migration, SchemaTooNew
from gateway.store.postgres import PostgresStore
from gateway.store.postgres import rows as pg_rows
from gateway.store.postgres import sql as pg_sql
from gateway.store.postgres.migrate import migrate
from gateway.store.postgres.sql import (
    DUE_CHANNEL,
    EVENTS_CHANNEL,
    INSERT_JOBS,
    KEYS_CHANNEL,
    MIGRATIONS,
    channel,
)
from gateway.store.postgres.store import append_events
from tests.conftest import fresh_schema
from tests.support import bumped
from tests.unit.store.conftest import Heard, PgStores
from tests.unit.store.factories import (
    LEASE,
    T0,
    claim_key,
    create_all,
    full_job,
    make_job,
    make_key,
    new_delivery,
)

ALL_MIGRATIONS = [m.number for m in MIGRATIONS]
SKEW = timedelta(seconds=5)
"""Margin for "due now" against the server's clock, should it differ a little from ours."""
BLOCKED_BY = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))"


@pytest.fixture
async def raw(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own on the test's schema: an operator's psql, or a replica
    caught in the middle of a transaction."""
    conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
    yield conn
    await conn.close()


async def blocked_by(raw: asyncpg.Connection, pid: int) -> None:
    """Return once some session waits on a lock held by backend ``pid``: asked of the server,
    never guessed from elapsed time. Fails if none does within about five seconds."""
    for _ in range(500):
        if await raw.fetchval(BLOCKED_BY, pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no session waited on a lock of backend {pid}")


# -- migrations --------------------------------------------------------------------------------


async def test_two_replicas_opening_a_fresh_schema_together_both_succeed(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    await asyncio.gather(pg_stores(), pg_stores())
    applied = await raw.fetch("SELECT version, name, applied_at FROM schema_migrations")
    assert sorted(row["version"] for row in applied) == ALL_MIGRATIONS
    assert all(row["name"] and row["applied_at"] for row in applied)


async def test_concurrent_migrations_apply_each_migration_once(
    postgres_dsn: str, pg_schema: str, raw: asyncpg.Connection
) -> None:
    conns = [
        await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        for _ in range(3)
    ]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(n for applied in results for n in applied) == ALL_MIGRATIONS
    assert await migrate(raw) == []  # and again: nothing left


async def test_reopening_migrates_nothing_and_keeps_the_data(pg_stores: PgStores) -> None:
    first = await pg_stores()
    job = full_job()
    await first.create(job, [NewEvent("created", {"by": "test"})])
    await claim_key(first, "k")
    await first.close()
    second = await pg_stores()
    assert await second.get(job.id, "acme") == job
    assert [e.data for e in await second.events_after(0, tenant="acme")] == [{"by": "test"}]
    with pytest.raises(IdempotencyInFlight):
        await claim_key(second, "k")


async def test_a_schema_migrated_by_newer_code_is_refused(
    pg_stores: PgStores, postgres_dsn: str, pg_schema: str, raw: asyncpg.Connection
) -> None:
    await (await pg_stores()).close()
    await raw.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
    store = PostgresStore(postgres_dsn, schema=pg_schema)
    with pytest.raises(SchemaTooNew, match="99"):
        await store.open()
    assert await store.ping() is False


async def test_keys_left_pending_by_an_older_version_become_calling(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    """Migration 5: an old pending key may have reached the provider, so it is reconciled, not
    rerun; its lease is over at once."""
    assert await migrate(raw, MIGRATIONS[:4]) == [1, 2, 3, 4]
    await raw.execute(
        "INSERT INTO idempotency (key, fingerprint, state, created_at) VALUES ('old', 'fp', "
        "'pending', $1)",
        T0,
    )
    store = await pg_stores()
    old = await claim_key(store, "old", now=T0 + timedelta(seconds=1))
    assert isinstance(old, ClaimedIdempotency)
    assert (old.phase, old.called_at, old.job_id) == (IdempotencyPhase.CALLING, T0, "job_for_old")


async def test_a_schema_from_migration_5_gains_tenants(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    """Migration 6: the keys table and the tenant indexes, jobs_due_by_tenant in place of
    jobs_due; the jobs already there are claimed and counted through them."""
    assert await migrate(raw, MIGRATIONS[:5]) == [1, 2, 3, 4, 5]
    jobs = [make_job(tenant=t, next_poll_at=T0 - timedelta(seconds=n)) for n, t in enumerate("ab")]
    await raw.fetchrow(INSERT_JOBS, *pg_rows.job_columns(jobs))
    store = await pg_stores()
    assert await store.tenant_usage("a", T0) == TenantUsage(1, 1, T0)
    claimed = await store.claim_due(T0, limit=5, lease_until=T0 + LEASE)
    assert [job.id for job in claimed] == [jobs[1].id, jobs[0].id]
    await store.create_api_key(make_key())
    names = {
        str(row[0])
        for row in await raw.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1", store.schema
        )
    }
    assert {"jobs_due_by_tenant", "jobs_active", "jobs_created", "api_keys_by_tenant"} <= names
    assert "jobs_due" not in names


@pytest.mark.parametrize(
    ("statement", "args", "indexes"),
    [
        ("CLAIM_DUE", (T0, 10, T0 + LEASE, "x"), ["jobs_due_by_tenant"]),
        (
            "CLAIM_DUE_PER_PROVIDER",
            (T0, 10, T0 + LEASE, "x", ["pulse"], [10]),
            ["jobs_due_by_tenant"],
        ),
        (
            "CLAIM_WITHIN_QUOTA",
            (T0, T0 + LEASE, "x", ["pulse"], [10], [10.0], [10.0], [100]),
            ["jobs_due_by_tenant"],
        ),
        ("DUE_PROVIDERS", (["pulse"], T0), ["jobs_due_by_tenant"]),
        ("SELECT_NEXT_DUE", (), ["jobs_due_at"]),
        ("TENANT_USAGE", ("acme", T0 - timedelta(seconds=60)), ["jobs_active", "jobs_created"]),
    ],
)
@pytest.mark.parametrize("tenants", [80, 1])
@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
async def test_claims_and_usage_are_served_by_their_indexes(
    pg_stores: PgStores,
    raw: asyncpg.Connection,
    statement: str,
    args: tuple[Any, ...],
    indexes: list[str],
    tenants: int,
    plans: str,
) -> None:
    """Each reads index ranges, never the jobs table whole nor another tenant's backlog: their
    size must not set the cost. Planned on a table shaped like a busy deployment (one tenant's
    deep backlog, finished jobs, and beside it many small tenants or a single one: the planner
    then counts few tenants, and must still not walk jobs_due_at for one tenant's due jobs), as
    custom and as generic plans (asyncpg prepares statements: generic plans run after a few
    calls)."""
    store = await pg_stores()
    ago = [T0 - timedelta(seconds=n) for n in range(5000)]
    backlog = [make_job(tenant="acme", next_poll_at=ago[n], created_at=ago[n]) for n in range(3000)]
    small = [
        make_job(tenant=f"t{n:02d}", provider=p, next_poll_at=T0 + timedelta(seconds=n))
        for n in range(tenants)
        for p in ("pulse", "catchall")
    ]
    done = [
        make_job(tenant="acme", state=JobState.SUCCEEDED, created_at=ago[n]) for n in range(2000)
    ]
    await store._create_many([(job, []) for job in [*backlog, *small, *done]])
    await raw.execute("ANALYZE jobs")
    async with raw.transaction():
        await raw.execute(f"SET LOCAL plan_cache_mode = {plans}")
        statement_text = getattr(pg_sql, statement)
        plan = "\n".join(str(row[0]) for row in await raw.fetch("EXPLAIN " + statement_text, *args))
    for index in indexes:
        assert index in plan, plan
    assert "Seq Scan on jobs" not in plan, plan
    assert "jobs_upstream" not in plan, plan
    if statement != "SELECT_NEXT_DUE":
        assert "jobs_due_at" not in plan, plan
    if statement != "TENANT_USAGE":
        assert "jobs_list" not in plan, plan


async def test_each_migration_is_its_own_transaction(raw: asyncpg.Connection) -> None:
    good = Migration(1, "good", ("CREATE TABLE kept (x int)",))
    bad = Migration(2, "bad", ("CREATE TABLE dropped (x int)", "SELECT no_such_function()"))
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(raw, [good, bad])
    assert [r["version"] for r in await raw.fetch("SELECT version FROM schema_migrations")] == [1]
    assert await raw.fetchval("SELECT to_regclass('kept') IS NOT NULL")
    assert await raw.fetchval("SELECT to_regclass('dropped') IS NULL")


async def test_the_stores_sessions_never_jit_compile(pg_stores: PgStores) -> None:
    """A claim's estimated cost crosses jit_above_cost (the walk's recursive CTE is overestimated),
    and compiling it cost ~45 ms a claim: ten times the statement itself."""
    store = await pg_stores()
    async with store._db.acquire() as conn:
        assert await conn.fetchval("SHOW jit") == "off"


async def test_a_missing_database_is_unavailable_without_the_password(postgres_dsn: str) -> None:
    dsn = postgres_dsn.replace("postgres@", "postgres:hunter2@").rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StoreUnavailable, match="no_such_db") as caught:
        await PostgresStore(dsn).open()
    assert "hunter2" not in str(caught.value)


# -- claims and fences between replicas --------------------------------------------------------


async def test_replicas_claiming_together_never_claim_the_same_job(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    stores = [await pg_stores() for _ in range(4)]
    jobs = [
        make_job(tenant=f"t{n % 7}", next_poll_at=T0 - timedelta(milliseconds=n))
        for n in range(200)
    ]
    await stores[0]._create_many([(job, []) for job in jobs])

    async def drain(store: PostgresStore, owner: str) -> list[str]:
        mine: list[str] = []
        while batch := await store.claim_due(T0, limit=25, lease_until=T0 + LEASE, owner=owner):
            mine += [job.id for job in batch]
        return mine

    claims = await asyncio.gather(*(drain(s, f"replica-{n}") for n, s in enumerate(stores)))
    everything = [job_id for mine in claims for job_id in mine]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == {job.id for job in jobs}
    owners = {
        r["lease_owner"]: r["n"]
        for r in await raw.fetch("SELECT lease_owner, count(*) AS n FROM jobs GROUP BY lease_owner")
    }
    assert owners == {f"replica-{n}": len(mine) for n, mine in enumerate(claims) if mine}


async def test_a_claim_skips_rows_another_transaction_holds(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    store = await pg_stores()
    held, free = make_job(next_poll_at=T0 - LEASE), make_job(next_poll_at=T0)
    await create_all(store, [held, free])
    async with raw.transaction():
        await raw.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held.id)
        # Not blocked by the lock, and the held row (though due first) is not taken.
        claimed = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
        assert [job.id for job in claimed] == [free.id]
    [later] = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    assert later.id == held.id


async def test_a_lease_names_its_owner_until_the_job_is_saved(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    store = await pg_stores()
    await store.create(make_job(next_poll_at=T0), [])
    [claimed] = await store.claim_due(T0, limit=1, lease_until=T0 + LEASE, owner="pod-7")
    row = await raw.fetchrow("SELECT lease_owner, version, next_poll_at FROM jobs")
    assert (row["lease_owner"], row["version"], row["next_poll_at"]) == ("pod-7", 2, T0 + LEASE)
    assert await store.get(claimed.id) == claimed
    await store.save_many([(bumped(claimed, T0, polls=1), [])])
    assert await raw.fetchval("SELECT lease_owner FROM jobs") is None


async def test_a_stale_replica_is_fenced_out(pg_stores: PgStores) -> None:
    a, b = await pg_stores(), await pg_stores()
    job = make_job(next_poll_at=T0)
    await a.create(job, [])
    [claimed] = await b.claim_due(T0, limit=1, lease_until=T0 + LEASE)
    # a still holds version 1: its write changes nothing, and leaves no event behind.
    assert await a.save_many([(bumped(job, T0, polls=1), [NewEvent("progress", {})])]) == [None]
    assert await a.get(job.id) == claimed
    assert await b.events_after(0) == []


async def test_an_idempotency_key_claimed_by_one_replica_is_in_flight_for_another(
    pg_stores: PgStores,
) -> None:
    a, b = await pg_stores(), await pg_stores()
    results = await asyncio.gather(
        *(claim_key(s, "key") for s in (a, b, a, b)), return_exceptions=True
    )
    [won] = [r for r in results if isinstance(r, ClaimedIdempotency)]
    assert sum(isinstance(r, IdempotencyInFlight) for r in results) == 3
    await a.finish_idempotency(won, status=201, body={"id": "job_1"}, job_id="job_1", now=T0)
    replay = await claim_key(b, "key")
    assert isinstance(replay, IdempotencyRecord)
    assert (replay.status, replay.body) == (201, {"id": "job_1"})


async def test_an_expired_claim_is_taken_over_by_exactly_one_replica(pg_stores: PgStores) -> None:
    a, b = await pg_stores(), await pg_stores()
    first = await claim_key(a, "key")
    assert isinstance(first, ClaimedIdempotency)
    later = T0 + LEASE
    results = await asyncio.gather(
        *(claim_key(s, "key", now=later) for s in (a, b, a, b)), return_exceptions=True
    )
    [taken] = [r for r in results if isinstance(r, ClaimedIdempotency)]
    assert sum(isinstance(r, IdempotencyInFlight) for r in results) == 3
    assert taken.job_id == first.job_id
    assert taken.token != first.token
    assert not await a.finish_idempotency(first, status=201, body={}, job_id="j", now=later)


# -- the event log: ids become visible in order ------------------------------------------------


async def hold_events(
    raw: asyncpg.Connection, store: PostgresStore, outcome: str
) -> tuple[list[int], dict[str, Any]]:
    """Transaction A (on ``raw``) appends an event and stays open while B (the store) appends
    one; A then ends with ``outcome``. The answer: the ids B's save got, and what was observed."""
    a_job, b_job = make_job(), make_job()
    await create_all(store, [a_job, b_job])
    base = await store.last_event_id()
    seen: dict[str, Any] = {"base": base}
    transaction = raw.transaction()
    await transaction.start()
    [[held]] = await append_events(raw, [(a_job, [NewEvent("progress", {"by": "a"})])])
    seen["a"] = held.id
    b = asyncio.create_task(
        store.save_many([(bumped(b_job, T0), [NewEvent("progress", {"by": "b"})])])
    )
    await blocked_by(raw, raw.get_server_pid())
    # Only to observe that B is held back: B must not commit while A is open.
    done, _ = await asyncio.wait({b}, timeout=0.2)
    seen["b_finished_while_a_open"] = bool(done)
    seen["visible_while_a_open"] = await store.events_after(base)
    await (transaction.commit() if outcome == "commit" else transaction.rollback())
    [saved] = await b
    assert saved is not None
    return [event.id for event in saved[1]], seen


async def test_a_later_id_waits_for_the_earlier_one_to_commit(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    store = await pg_stores()
    b_ids, seen = await hold_events(raw, store, "commit")
    base = seen["base"]
    assert seen["b_finished_while_a_open"] is False
    assert seen["visible_while_a_open"] == []
    assert seen["a"] == base + 1
    assert b_ids == [base + 2]
    events = await store.events_after(base)
    assert [(e.id, e.data) for e in events] == [(base + 1, {"by": "a"}), (base + 2, {"by": "b"})]
    assert await store.last_event_id() == base + 2


async def test_a_rolled_back_append_leaves_no_gap(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    store = await pg_stores()
    b_ids, seen = await hold_events(raw, store, "rollback")
    assert seen["b_finished_while_a_open"] is False
    assert b_ids == [seen["base"] + 1]  # the id A had taken went back with A
    assert [e.id for e in await store.events_after(seen["base"])] == b_ids


async def test_concurrent_writers_leave_ids_without_gaps_or_repeats(pg_stores: PgStores) -> None:
    stores = [await pg_stores() for _ in range(3)]
    jobs = [make_job() for _ in range(30)]
    created = await asyncio.gather(
        *(
            stores[n % 3].create(job, [NewEvent("created", {}), NewEvent("x", {})])
            for n, job in enumerate(jobs)
        )
    )
    ids = sorted(event.id for events in created for event in events)
    assert ids == list(range(1, 61))
    assert [e.id for e in await stores[1].events_after(0, limit=100)] == ids
    for events in created:  # one transaction's events are consecutive
        assert events[1].id == events[0].id + 1


# -- signals between replicas (LISTEN/NOTIFY) --------------------------------------------------
#
# Channels are per database, not per schema: other tests' stores (another run on the same server)
# may signal too. So a test never asserts the absence of a signal it hears through a store; exact
# notices are read from one known sender instead (Notices), which nothing else can add to.


class Notices:
    """Every notice one backend sends on the store's channels, heard on a connection of our own."""

    def __init__(self, sender: int) -> None:
        self.sender = sender
        self.got: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, _conn: object, pid: int, channel: str, payload: str) -> None:
        if pid == self.sender:
            self.got.append((channel, payload))
            self._changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.got) < count:
                self._changed.clear()
                await self._changed.wait()


async def test_a_replica_hears_another_replicas_events(pg_stores: PgStores) -> None:
    a, b = await pg_stores(), await pg_stores()
    heard = Heard()
    b.subscribe(heard)
    await a.create(make_job(next_poll_at=None), [NewEvent("created", {})])
    await heard.wait_for("events")


async def test_only_events_and_jobs_due_now_are_signalled(
    pg_stores: PgStores, postgres_dsn: str, raw: asyncpg.Connection
) -> None:
    a = await pg_stores(max_size=1)  # one connection: every notice it sends comes from one pid
    async with a._db.acquire() as conn:
        notices = Notices(conn.get_server_pid())
    events, due = channel(EVENTS_CHANNEL, a.schema), channel(DUE_CHANNEL, a.schema)
    await raw.add_listener(events, notices)
    await raw.add_listener(due, notices)
    # The server's clock decides what is due now, so these times are relative to the real one.
    now = datetime.now(UTC)
    later = make_job(next_poll_at=now + timedelta(days=1))
    await a.create(later, [])  # neither events nor a job due now: no notice
    await a.save_many([(bumped(later, now, polls=1), [])])  # the same
    [created] = await a.create(make_job(next_poll_at=None), [NewEvent("created", {})])
    # A handed-back lease: due now, and one notice however many jobs the batch makes due.
    handed_back = [make_job(next_poll_at=now + LEASE) for _ in range(3)]
    await create_all(a, handed_back)
    await a.save_many([(bumped(job, now, next_poll_at=now - SKEW), []) for job in handed_back])
    await notices.wait_for(5)
    # Notices from one session arrive in commit order: had the first writes sent any, they would
    # be first here.
    assert notices.got == [
        (events, str(created.id)),
        *[(events, str(created.id + n)) for n in (1, 2, 3)],
        (due, ""),
    ]


async def test_a_revocation_is_one_notice_naming_the_key(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    a = await pg_stores(max_size=1)  # one connection: every notice it sends comes from one pid
    async with a._db.acquire() as conn:
        notices = Notices(conn.get_server_pid())
    keys = channel(KEYS_CHANNEL, a.schema)
    await raw.add_listener(keys, notices)
    key, other = make_key(tenant="acme"), make_key(tenant="acme")
    await a.create_api_key(key)  # making a key is no news to the other replicas
    await a.create_api_key(other)
    await a.touch_api_keys({key.id: T0})  # nor is using one
    assert not await a.revoke_api_key(key.id, T0, tenant="globex")  # refused: nothing to say
    assert await a.revoke_api_key(key.id, T0, tenant="acme")
    assert not await a.revoke_api_key(key.id, T0)  # already revoked
    assert await a.revoke_api_key(other.id, T0)
    await notices.wait_for(2)
    # Notices from one session arrive in commit order: any earlier one would be first here.
    assert notices.got == [(keys, key.id), (keys, other.id)]


async def test_after_a_lost_listener_reconnects_subscribers_are_told_everything(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    store = await pg_stores()
    lost_pid = store._listener.server_pid
    assert lost_pid is not None
    # Counts only what arrives once the listener is back (noise from other stores may come
    # earlier, while it is down or not yet noticed down).
    heard = Heard(accept=lambda: store._listener.server_pid not in (None, lost_pid))
    store.subscribe(heard)
    with capture_logs() as logs:
        assert await raw.fetchval("SELECT pg_terminate_backend($1)", lost_pid)
        await heard.wait_for("events")
        await heard.wait_for("due")
        await heard.wait_for("keys")
    assert [e["event"] for e in logs if e["event"].startswith("store.listener")] == [
        "store.listener_lost",
        "store.listener_reconnected",
    ]
    # And it listens again.
    heard.signals.clear()
    other = await pg_stores()
    await other.create(make_job(next_poll_at=None), [NewEvent("created", {})])
    await heard.wait_for("events")


async def test_a_failing_subscriber_does_not_silence_the_others(pg_stores: PgStores) -> None:
    store = await pg_stores()
    heard = Heard()

    def broken(signal: str) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(heard)
    with capture_logs() as logs:
        await store.create(make_job(next_poll_at=None), [NewEvent("created", {})])
        await heard.wait_for("events")
    assert any(e["event"] == "store.signal_callback_failed" for e in logs)


async def test_deployments_in_other_schemas_are_not_heard(
    pg_stores: PgStores, postgres_dsn: str
) -> None:
    ours = await pg_stores()
    heard = Heard()
    ours.subscribe(heard)
    async with fresh_schema(postgres_dsn) as schema:
        other = PostgresStore(postgres_dsn, schema=schema)
        await other.open()
        try:
            await other.create(make_job(next_poll_at=None), [NewEvent("created", {})])
        finally:
            await other.close()
    # Our own write is heard: had the other schema's been heard too, it would have come first.
    await ours.create(make_job(next_poll_at=None), [NewEvent("created", {})])
    await heard.wait_for("events")
    assert heard.signals == ["events"]


async def test_each_delivery_is_claimed_by_one_replica(pg_stores: PgStores) -> None:
    replicas = [await pg_stores() for _ in range(3)]
    await replicas[0].enqueue_deliveries([new_delivery(n) for n in range(60)])

    async def claim_all(store: PostgresStore) -> list[int]:
        taken: list[int] = []
        while batch := await store.claim_due_deliveries(T0, limit=7, lease_until=T0 + LEASE):
            taken.extend(delivery.id for delivery in batch)
        return taken

    claimed = await asyncio.gather(*(claim_all(store) for store in replicas))
    every = [delivery_id for batch in claimed for delivery_id in batch]
    assert len(every) == len(set(every)) == 60  # all sent, none by two replicas


class JobNotices:
    """What ``subscribe_jobs`` told: each call's ids (``None``: anything may have changed)."""

    def __init__(self) -> None:
        self.told: list[list[str] | None] = []
        self._arrived = asyncio.Event()

    def __call__(self, job_ids: Sequence[str] | None) -> None:
        self.told.append(None if job_ids is None else list(job_ids))
        self._arrived.set()

    def ids(self) -> set[str]:
        return {job_id for told in self.told if told is not None for job_id in told}

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not done():
                await self._arrived.wait()
                self._arrived.clear()


async def test_saves_claims_and_deletes_name_their_jobs_to_every_replica(
    pg_stores: PgStores, raw: asyncpg.Connection
) -> None:
    a, b = await pg_stores(), await pg_stores()
    notices = JobNotices()
    b.subscribe_jobs(notices)
    now = datetime.now(UTC)
    saved, claimed, deleted, untouched = (make_job(next_poll_at=None) for _ in range(4))
    await create_all(a, [saved, claimed, deleted, untouched])
    await a.save_many([(bumped(saved, now), []), (bumped(claimed, now, next_poll_at=now), [])])
    [lease] = await a.claim_due(now, limit=5, lease_until=now + LEASE)
    assert lease.id == claimed.id
    assert await a.delete(deleted.id)
    await notices.until(lambda: {saved.id, claimed.id, deleted.id} <= notices.ids())
    assert untouched.id not in notices.ids()  # a creation is nobody's stale copy
    # Many ids are split over payloads PostgreSQL accepts (under 8,000 bytes each).
    many = [make_job(next_poll_at=None) for _ in range(600)]
    await create_all(a, many)
    await a.save_many([(bumped(job, now), []) for job in many])
    await notices.until(lambda: {job.id for job in many} <= notices.ids())
    # A gap in listening: anything may have changed meanwhile.
    pid = b._listener.server_pid
    assert await raw.fetchval("SELECT pg_terminate_backend($1)", pid)
    await notices.until(lambda: None in notices.told)
