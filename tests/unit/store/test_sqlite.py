"""What only the SQLite store promises: the file outlives its process; a kill loses no commit."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.states import JobState
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    JobFilter,
    NewEvent,
    StoreUnavailable,
    TenantUsage,
)
from gateway.store.migrations import SchemaTooNew
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_sql import (
    MIGRATIONS,
    SCHEDULED_PROVIDERS,
    SCHEDULED_TENANTS,
    SCHEMA_VERSION,
    SELECT_DUE_OF_TENANT,
    TENANT_USAGE,
)
from tests.support import bumped
from tests.unit.store.factories import LEASE, T0, claim_key, full_job, make_job, make_key

REPO = Path(__file__).resolve().parents[3]


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file with a connection of our own, as an operator's sqlite3 shell would."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def query_plan(path: Path, sql: str, params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()


def to_us(moment: datetime | None) -> int | None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return None if moment is None else (moment - epoch) // timedelta(microseconds=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    impl = SqliteStore(tmp_path / "jobs.db")
    await impl.open()
    yield impl
    await impl.close()


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteStore(path)
    await first.open()
    job = full_job()
    other = make_job(next_poll_at=T0)
    await first.create(job, [NewEvent("created", {"by": "test"})])
    await first.create(other, [NewEvent("created", {})])
    [(saved, _)] = [r for r in await first.save_many([(bumped(job, T0, polls=8), [])]) if r]
    done = await claim_key(first, "done")
    assert isinstance(done, ClaimedIdempotency)
    await first.finish_idempotency(done, status=201, body={"id": job.id}, job_id=job.id, now=T0)
    await claim_key(first, "pending")
    events = await first.events_after(0, tenant="acme")
    # The newest event goes with its job: a reopened store must still not reuse its id.
    [newest] = await first.save_many([(bumped(other, T0), [NewEvent("progress", {})])])
    assert newest is not None
    last_id = newest[1][0].id
    assert await first.delete(other.id)
    await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.get(job.id, "acme") == saved
        assert await second.get(other.id) is None
        assert await second.events_after(0, tenant="acme") == events
        assert await second.events_after(0) == []  # the deleted job's events went with it
        assert await second.last_event_id() == last_id
        replay = await claim_key(second, "done")
        assert isinstance(replay, IdempotencyRecord)
        assert (replay.status, replay.body, replay.job_id) == (201, {"id": job.id}, job.id)
        with pytest.raises(IdempotencyInFlight):
            await claim_key(second, "pending")
        [created] = await second.create(make_job(), [NewEvent("created", {})])
        assert created.id > last_id
    finally:
        await second.close()


async def test_the_file_is_in_wal_mode_with_the_current_schema(
    store: SqliteStore, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.db"
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]

    def settings() -> list[tuple[Any, ...]]:
        pragmas = ("synchronous", "foreign_keys", "busy_timeout")
        return [store._db.execute(f"PRAGMA {name}").fetchone() for name in pragmas]

    # synchronous 1 is NORMAL: durable against a killed process, fsyncs only at checkpoints.
    assert await store._call(settings) == [(1,), (1,), (5000,)]


async def test_close_folds_the_wal_back(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    await store.open()
    await store.create(make_job(), [NewEvent("created", {})])
    await store.close()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert query(path, "SELECT COUNT(*) FROM jobs") == [(1,)]


async def test_a_file_from_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    job = make_job(upstream_id="up-old", labels={"team": "x"})
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO jobs (id, tenant, provider, state, next_poll_at, version, created_at,"
            " labels, record) VALUES (?, ?, ?, ?, NULL, 1, 0, '{}', ?)",
            (
                job.id,
                job.tenant,
                job.provider,
                job.state.value,
                orjson.dumps(job.to_record()).decode(),
            ),
        )
        conn.execute("PRAGMA user_version = 1")
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.get(job.id) == job
        assert await store.get_by_upstream(job.provider, "up-old") == job
    finally:
        await store.close()
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteStore(path)
    with pytest.raises(SchemaTooNew, match="upgrade jobgate"):
        await store.open()
    assert await store.ping() is False
    await store.close()


async def test_open_and_close_are_idempotent_and_calls_need_an_open_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db")
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("job_x")
    await store.open()
    await store.open()
    assert await store.ping() is True
    await store.close()
    await store.close()
    assert await store.ping() is False
    with pytest.raises(RuntimeError, match="not open"):
        await store.next_due()


async def test_fences_hold_between_two_stores_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    a, b = SqliteStore(path), SqliteStore(path)
    await a.open()
    await b.open()
    try:
        job = make_job(next_poll_at=T0)
        await a.create(job, [])
        assert (await a.save_many([(bumped(job, T0, polls=1), [])]))[0] is not None
        assert await b.save_many([(bumped(job, T0, polls=2), [])]) == [None]
        [claimed] = await b.claim_due(T0 + LEASE, limit=5, lease_until=T0 + 2 * LEASE)
        assert await a.claim_due(T0 + LEASE, limit=5, lease_until=T0 + 2 * LEASE) == []
        assert await a.get(job.id) == claimed
    finally:
        await a.close()
        await b.close()


async def test_columns_agree_with_the_record(store: SqliteStore, tmp_path: Path) -> None:
    job = make_job(next_poll_at=T0, labels={"team": "x", "env": "dev"})
    await store.create(job, [])
    await store.claim_due(T0, limit=1, lease_until=T0 + LEASE)
    rows = query(
        tmp_path / "jobs.db",
        "SELECT version, json_extract(record, '$.version'), next_poll_at,"
        " json_extract(record, '$.next_poll_at') FROM jobs",
    )
    lease_us = (T0 + LEASE - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert rows == [(2, 2, lease_us, "2026-11-22T10:00:30.123457Z")]


async def test_labels_follow_saves_and_deletes(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    job = make_job(labels={"team": "x", "env": "dev"})
    await store.create(job, [])
    assert query(path, "SELECT key, value FROM job_labels ORDER BY key") == [
        ("env", "dev"),
        ("team", "x"),
    ]
    relabelled = bumped(job, T0, labels={"team": "y"}, state=JobState.RUNNING)
    await store.save_many([(relabelled, [])])
    assert query(path, "SELECT key, value FROM job_labels") == [("team", "y")]
    page = await store.list_jobs(JobFilter(state=JobState.RUNNING), limit=5, cursor=None)
    assert page.jobs == [relabelled]
    await store.delete(job.id)
    assert query(path, "SELECT COUNT(*) FROM job_labels") == [(0,)]


async def test_idempotency_keys_are_plain_rows(store: SqliteStore, tmp_path: Path) -> None:
    claim = await claim_key(store, "k")
    assert isinstance(claim, ClaimedIdempotency)
    assert query(tmp_path / "jobs.db", "SELECT key, state, job_id FROM idempotency") == [
        ("k", "claimed", "job_for_k")
    ]


async def test_opening_the_file_exclusively_ends_the_dead_holders_leases(tmp_path: Path) -> None:
    """Only one process holds an exclusive file: a claim found unfinished at open belongs to a
    process that died, so a retry recovers it at once instead of waiting out its lease."""
    path = tmp_path / "jobs.db"
    first = SqliteStore(path, exclusive=True)
    await first.open()
    claim = await claim_key(first, "k")
    assert isinstance(claim, ClaimedIdempotency)
    await first.advance_idempotency(claim, IdempotencyPhase.CALLING, now=T0)
    with pytest.raises(IdempotencyInFlight):
        await claim_key(first, "k", now=T0 + timedelta(seconds=1))
    await first.close()
    second = SqliteStore(path, exclusive=True)
    await second.open()
    try:
        taken = await claim_key(second, "k", now=T0 + timedelta(seconds=1))
        assert isinstance(taken, ClaimedIdempotency)
        assert (taken.phase, taken.job_id) == (IdempotencyPhase.CALLING, "job_for_k")
    finally:
        await second.close()


async def test_keys_left_pending_by_an_older_version_become_calling(tmp_path: Path) -> None:
    """Migration 5: an old pending key may have reached the provider, so it must be reconciled,
    not rerun; and its lease is over."""
    path = tmp_path / "jobs.db"
    conn = sqlite3.connect(path)
    for migration in MIGRATIONS[:4]:
        for statement in migration.statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO idempotency (key, fingerprint, state, created_at) "
        "VALUES ('old', 'fp', 'pending', 5)"
    )
    conn.execute(
        "INSERT INTO idempotency (key, fingerprint, state, status, body, job_id, created_at) "
        "VALUES ('done', 'fp', 'done', 201, '{}', 'job_1', 5)"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        old = await claim_key(store, "old")
        assert isinstance(old, ClaimedIdempotency)
        assert (old.phase, old.job_id) == (IdempotencyPhase.CALLING, "job_for_old")
        done = await claim_key(store, "done")
        assert isinstance(done, IdempotencyRecord)
        assert done.job_id == "job_1"
    finally:
        await store.close()


async def test_a_file_from_schema_5_gains_tenants(tmp_path: Path) -> None:
    """Migration 6: the keys table, the tenant indexes, and the claim's walk in place of the
    per-provider due index; the jobs already there are claimed and counted by it."""
    path = tmp_path / "v5.db"
    jobs = [make_job(tenant=t, next_poll_at=T0 - timedelta(seconds=n)) for n, t in enumerate("ab")]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for migration in MIGRATIONS[:5]:
            for statement in migration.statements:
                conn.execute(statement)
        for job in jobs:
            conn.execute(
                "INSERT INTO jobs (id, tenant, provider, state, next_poll_at, version, created_at,"
                " labels, record, upstream_id) VALUES (?, ?, ?, ?, ?, 1, ?, '{}', ?, ?)",
                (
                    job.id,
                    job.tenant,
                    job.provider,
                    job.state.value,
                    to_us(job.next_poll_at),
                    to_us(job.created_at),
                    orjson.dumps(job.to_record()).decode(),
                    job.upstream_id,
                ),
            )
        conn.execute("PRAGMA user_version = 5")
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.tenant_usage("a", T0) == TenantUsage(1, 1, T0)
        claimed = await store.claim_due(
            T0, limit=5, lease_until=T0 + LEASE, per_provider={"pulse": 5}
        )
        assert [job.id for job in claimed] == [jobs[1].id, jobs[0].id]
        await store.create_api_key(make_key())
    finally:
        await store.close()
    indexes = {
        name for (name,) in query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    assert {"jobs_due_by_tenant", "jobs_active", "jobs_created", "api_keys_by_tenant"} <= indexes
    assert "jobs_due_by_provider" not in indexes
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        (SCHEDULED_PROVIDERS, {}),
        (SCHEDULED_TENANTS, {"provider": "pulse"}),
        (SELECT_DUE_OF_TENANT, ("pulse", "acme", 0, 10)),
        (TENANT_USAGE, {"tenant": "acme", "since": 0}),
    ],
    ids=["providers", "tenants", "due", "usage"],
)
async def test_claims_and_usage_read_index_ranges_only(
    store: SqliteStore, tmp_path: Path, sql: str, params: Any
) -> None:
    """A claim's walk and a tenant's usage read their own indexes alone (index ranges, no table
    rows), so neither grows with the backlog or with the tenant's finished jobs."""
    plan = [row[-1] for row in query_plan(tmp_path / "jobs.db", sql, params)]
    reads = [step for step in plan if step.startswith(("SCAN jobs", "SEARCH jobs"))]
    assert reads
    for step in reads:
        assert "USING COVERING INDEX" in step, plan
        assert step.startswith("SEARCH") or sql == SCHEDULED_PROVIDERS, plan


# -- a process killed mid-write ----------------------------------------------------------------

WRITER = """
import asyncio, sys
from dataclasses import replace
from datetime import UTC, datetime
from gateway.jobs import Job, new_id
from gateway.states import JobState
from gateway.store.base import NewEvent
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 22, tzinfo=UTC)


async def main(path):
    store = SqliteStore(path)
    await store.open()
    latest = []
    while True:
        # Only what has returned (been committed) is reported, so every line is a promise.
        job = Job(id=new_id(), provider="pulse", upstream_id="u", state=JobState.QUEUED,
                  created_at=T0, updated_at=T0, deadline_at=T0, next_poll_at=T0)
        await store.create(job, [NewEvent("created", {})])
        print("C", job.id, job.version, flush=True)
        latest.append(job)
        changes = [
            (replace(j, polls=j.polls + 1, version=j.version + 1), [NewEvent("progress", {})])
            for j in latest
        ]
        results = await store.save_many(changes)
        latest = [result[0] for result in results if result]
        print("S", " ".join(f"{j.id}:{j.version}" for j in latest), flush=True)
        latest = latest[-20:]


asyncio.run(main(sys.argv[1]))
"""


async def test_a_killed_writer_loses_no_committed_job(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    promised: dict[str, int] = {}

    async def read_until_enough() -> None:
        assert proc.stdout is not None
        while len(promised) < 150:
            line = await proc.stdout.readline()
            if not line:
                return
            record(line)

    def record(line: bytes) -> None:
        if not line.endswith(b"\n"):
            return  # cut off by the kill: not a promise
        kind, *items = line.decode().split()
        if kind == "C":
            promised[items[0]] = int(items[1])
        else:
            for item in items:
                job_id, version = item.split(":")
                promised[job_id] = max(promised[job_id], int(version))

    try:
        await asyncio.wait_for(read_until_enough(), timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, errors = await proc.communicate()
    for line in rest.splitlines(keepends=True):
        record(line)
    assert proc.returncode == -signal.SIGKILL, errors.decode()
    assert len(promised) >= 150, errors.decode()

    # The kill left commits in the WAL that opening must recover, not a tidily closed file.
    assert path.with_name(path.name + "-wal").stat().st_size > 0
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    store = SqliteStore(path)
    await store.open()
    try:
        for job_id, version in promised.items():
            job = await store.get(job_id)
            assert job is not None, job_id
            assert job.version >= version
        assert await store.last_event_id() >= len(promised)
    finally:
        await store.close()


async def test_a_second_gateway_process_on_one_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteStore(path, exclusive=True)
    await first.open()
    try:
        second = SqliteStore(path, exclusive=True)
        with pytest.raises(StoreUnavailable, match="postgres") as refused:
            await second.open()
        assert f"pid {os.getpid()}" in str(refused.value)
        assert await second.ping() is False
    finally:
        await first.close()
    # Closing (or dying) releases the file for the next process.
    again = SqliteStore(path, exclusive=True)
    await again.open()
    assert await again.ping() is True
    await again.close()


# -- claims held in memory (an exclusive store) and checkpoints off the worker ------------------


async def test_an_exclusive_store_holds_claims_in_memory_and_reads_show_them(
    tmp_path: Path,
) -> None:
    """The file is one process's: a claim writes nothing, yet every read and every fence sees it
    as if it had been written."""
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, exclusive=True)
    await store.open()
    try:
        job = make_job(next_poll_at=T0, labels={"team": "x"})
        later = make_job(next_poll_at=T0 + timedelta(seconds=9))
        await store.create(job, [])
        await store.create(later, [])
        [claimed] = await store.claim_due(T0, limit=5, lease_until=T0 + LEASE)
        assert (claimed.version, claimed.next_poll_at) == (2, T0 + LEASE)
        # Nothing reached the row: the poll's save will be the job's only write.
        assert query(path, f"SELECT version, next_poll_at FROM jobs WHERE id = '{job.id}'") == [
            (1, to_us(T0))
        ]
        assert await store.get(job.id) == claimed
        assert await store.get_by_upstream(job.provider, job.upstream_id) == claimed
        assert await store.get_many([job.id]) == [claimed]
        page = await store.list_jobs(JobFilter(), limit=5, cursor=None)
        assert claimed in page.jobs
        versions = await store.list_versions(JobFilter(), limit=5, cursor=None)
        assert (job.id, 2) in versions.versions
        # The held row is still first in the due index; next_due and claims pass it over.
        assert await store.next_due() == later.next_poll_at
        soon = T0 + timedelta(seconds=5)
        assert await store.claim_due(soon, limit=5, lease_until=T0 + LEASE) == []
        # Fenced against the claimed version: the old version's writer loses, the claim's wins.
        assert await store.save_many([(bumped(job, T0, polls=1), [])]) == [None]
        polled = bumped(claimed, T0, polls=1, next_poll_at=T0 + timedelta(seconds=5))
        [saved] = await store.save_many([(polled, [])])
        assert saved is not None
        assert query(path, f"SELECT version, next_poll_at FROM jobs WHERE id = '{job.id}'") == [
            (3, to_us(T0 + timedelta(seconds=5)))
        ]
        assert await store.get(job.id) == polled
        assert await store.next_due() == T0 + timedelta(seconds=5)
    finally:
        await store.close()


async def test_a_held_claim_ends_with_a_save_a_delete_or_its_lease(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db", exclusive=True)
    await store.open()
    try:
        kept, gone, lapsed = (make_job(next_poll_at=T0) for _ in range(3))
        for job in (kept, gone, lapsed):
            await store.create(job, [])
        claims = {job.id: job for job in await store.claim_due(T0, limit=5, lease_until=T0 + LEASE)}
        assert len(claims) == 3
        # A user's write on top of the claimed version ends the claim: the poll's save is fenced.
        cancelled = bumped(claims[kept.id], T0, state=JobState.CANCELED, next_poll_at=None)
        assert (await store.save_many([(cancelled, [])]))[0] is not None
        late = bumped(claims[kept.id], T0, polls=1)
        assert await store.save_many([(late, [])]) == [None]
        assert await store.delete(gone.id)
        assert await store.get(gone.id) is None
        # Only the lapsed claim is left; it is due when its lease ends, and claimed on top of it.
        assert await store.next_due() == T0 + LEASE
        [again] = await store.claim_due(T0 + LEASE, limit=5, lease_until=T0 + 2 * LEASE)
        assert (again.id, again.version) == (lapsed.id, claims[lapsed.id].version + 1)
        assert await store.save_many([(bumped(claims[lapsed.id], T0, polls=1), [])]) == [None]
    finally:
        await store.close()


async def test_claims_held_in_memory_end_with_the_process(tmp_path: Path) -> None:
    """A restart finds the jobs a dead process had claimed due at once: no lease to wait out."""
    path = tmp_path / "jobs.db"
    first = SqliteStore(path, exclusive=True)
    await first.open()
    job = make_job(next_poll_at=T0)
    await first.create(job, [])
    [claimed] = await first.claim_due(T0, limit=5, lease_until=T0 + LEASE)
    await first.close()  # no hand-back: as a killed process leaves it
    second = SqliteStore(path, exclusive=True)
    await second.open()
    try:
        assert await second.get(job.id) == job
        assert await second.next_due() == T0
        [again] = await second.claim_due(T0, limit=5, lease_until=T0 + LEASE)
        assert again == claimed
    finally:
        await second.close()


async def test_the_checkpointer_folds_the_wal_back_off_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, exclusive=True)
    await store.open()
    try:
        (autocheckpoint,) = await store._call(
            lambda: store._db.execute("PRAGMA wal_autocheckpoint").fetchone()
        )
        assert autocheckpoint == 0  # the worker's commits never checkpoint
        marker = "checkpointed-" + make_job().id
        await store.create(make_job(labels={"marker": marker}), [])
        checkpointer = store._checkpointer
        assert checkpointer is not None
        passes = checkpointer.passes

        def two_more_passes() -> None:  # the checkpointer is a thread: wait on one too
            deadline = time.monotonic() + 10
            while checkpointer.passes < passes + 2 and time.monotonic() < deadline:
                time.sleep(0.05)

        await asyncio.to_thread(two_more_passes)
        assert checkpointer.passes >= passes + 2
        # Only a checkpoint copies pages from the WAL into the database file itself.
        assert marker.encode() in path.read_bytes()
    finally:
        await store.close()
    assert store._checkpointer is None


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "shared"])
async def test_every_due_job_is_claimed_once_in_turns(tmp_path: Path, exclusive: bool) -> None:
    """Jobs due at the same instant, several tenants, claims smaller than the backlog: every due
    job is claimed exactly once, tenants taking turns, with the store opened either way."""
    store = SqliteStore(tmp_path / "jobs.db", exclusive=exclusive)
    await store.open()
    try:
        due = [
            make_job(tenant=tenant, next_poll_at=T0 - timedelta(seconds=n % 3))
            for tenant in ("a", "b", "c")
            for n in range(45)
        ]
        await store._create_many([(job, ()) for job in due])
        seen: list[str] = []
        while batch := await store.claim_due(T0, limit=40, lease_until=T0 + LEASE):
            if len(batch) == 40:  # while every tenant has jobs left, they take turns
                tenants = Counter(job.tenant for job in batch)
                assert max(tenants.values()) - min(tenants.values()) <= 1, tenants
            seen.extend(job.id for job in batch)
        assert sorted(seen) == sorted(job.id for job in due)
        assert await store.next_due() == T0 + LEASE
    finally:
        await store.close()
