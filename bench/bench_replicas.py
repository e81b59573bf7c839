"""Replicas: claims and polls per second on SQLite and on PostgreSQL with one and several
replicas, each next to the database's own ``FOR UPDATE SKIP LOCKED`` claim rate.

    python bench/bench_replicas.py [--seconds 10] [--jobs 20000] [--batch 500] [--tick 0.02]
                                   [--next-poll 0.001] [--replicas 3] [--pool 10] [--profile]
                                   [--only sqlite,pg1,pgN,pgN-1p,pgN-local,raw1,rawN]
                                   [--dir DIR]
                                   [--dsn postgresql://postgres@127.0.0.1:5432/test]

Every runner scenario polls ``--jobs`` RUNNING jobs, all due, for ``--seconds`` through the real
:class:`~gateway.runner.Runner` and an in-process adapter that answers RUNNING at once (no HTTP:
the store and the runner are what is measured). The policy never binds (rate, burst and
concurrency in the millions) and puts the next poll ``--next-poll`` (1 ms) after the last, so a
job is due again as soon as its poll is saved. Each scenario starts from a fresh store, loaded up
front through the store's bulk ``_create_many``:

1. ``sqlite``: one Runner on a SqliteStore in a temporary directory.
2. ``pg1``: one Runner on one PostgresStore, with the quota shared through the store
   (``SharedQuota``) and NOTIFY wired to wake the runner, as ``create_app`` wires them.
3. ``pgN``: ``--replicas`` worker processes on one schema, one Runner and one PostgresStore each,
   started together: each replica has its own interpreter, as in a deployment.
3b. ``pgN-1p``: the same Runners in one process, sharing one event loop and so one core for all
   their Python. On a small machine the two show which limit is the store's and which the CPU's.
3c. ``pgN-local``: as 3, but each Runner keeps its own buckets (``quota=None``): the claims lock
   no quota row, so the shared quota's cost shows by difference.

Runners run in worker processes this script starts (``--worker``, hidden), so every scenario gets
a fresh interpreter. A worker opens its stores, says ``ready``, waits for ``go`` on stdin, runs for
``--seconds`` and prints one JSON line: its counts, its CPU time, and where its loop's time went
(the claim, the quota's transaction in it; the save; the rest, mostly the tick's sleep; and the
polls' own Python).

4. ``raw1``, the baseline: a bare asyncpg loop on a three-column table with as many rows (``id``,
   ``due``, ``version``; an index on ``due``) claiming ``--batch`` rows with
   ``UPDATE ... WHERE id IN (SELECT id ... ORDER BY due LIMIT n FOR UPDATE SKIP LOCKED)
   RETURNING`` and writing a new due time back, over one connection. 4b, ``rawN``: the same over
   ``--replicas`` connections at once. No tick, no JSON record, no quota: the database's ceiling.

Figures are rows per second: claims (rows claimed) and polls (adapter calls; for the baseline,
rows written back), each with its ratio to the baseline over one connection. Around each window
the parent samples /proc (the machine's busy CPU, the PostgreSQL server's processes, the bench's
Python; what is left is the kernel's I/O write-back and network, and other processes) and the
WAL position, so every figure says where its time went. ``--profile`` adds a cProfile of each
worker's window.

PostgreSQL scenarios each use a fresh schema ``bench_<hex>``, dropped at the end; a VACUUM and a
CHECKPOINT come before each window. Only a server on the loopback interface is used; if none
answers, only SQLite runs. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
from fake_upstream import IDLE, PROVIDER, InstantAdapter  # bench/ is sys.path[0]

from adapters.http import utcnow
from gateway.events import EventHub
from gateway.feed import RemoteFeed
from gateway.jobs import Job, new_id
from gateway.logs import configure_logging
from gateway.policy import PollPolicy
from gateway.quota import SharedQuota
from gateway.runner import Runner
from gateway.states import JobState
from gateway.store.base import JobStore, NewEvent
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from gateway.writer import JobWriter, Update

SCRIPT: Final = Path(__file__).resolve()
"""Workers are this script, started again with ``--worker``."""
LOAD_BATCH: Final = 5000
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
RAW_NEXT_DUE: Final = 0.001
"""The baseline writes each row back due this long after now: due again at once."""
NEVER: Final = 1_000_000
READY_TIMEOUT: Final = 120.0
"""How long a worker may take to import, open its store and say ``ready``."""
STOP_TIMEOUT: Final = 60.0
"""How long a worker may take, after its window, to hand its leases back and report."""
PROFILE_LINES: Final = 18
SCENARIOS: Final = ("sqlite", "pg1", "pgN", "pgN-1p", "pgN-local", "raw1", "rawN")
"""``--only`` keys: SQLite; PostgreSQL with 1 and with N replicas (processes; Runners in one
process; processes with local buckets instead of the shared quota); the raw loop over 1 and over
N connections."""


def unbound_policy(next_poll: float) -> PollPolicy:
    """Limits that never bind, and the next poll ``next_poll`` seconds after the last."""
    return PollPolicy(
        first_delay=next_poll,
        min_interval=next_poll,
        max_interval=next_poll,
        multiplier=1.0,
        jitter=0.0,
        concurrency=NEVER,
        rate_per_second=float(NEVER),
        burst=NEVER,
        eta_aware=False,
    )


# --------------------------------------------------------------------------------------------------
# CPU, from /proc


CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over every CPU since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - idle, total


def postgres_jiffies() -> dict[int, int]:
    """CPU of every process named ``postgres``: its utime + stime, plus the time of its children
    that have exited (the postmaster's cutime + cstime: backends and autovacuum workers gone)."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                text = stat.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        name = text[text.find("(") + 1 : text.rfind(")")]
        if name != "postgres":
            continue
        rest = text[text.rfind(")") + 2 :].split()
        # Fields 14 to 17 of the man page: utime, stime, cutime, cstime.
        found[int(entry.name)] = sum(int(value) for value in rest[11:15])
    return found


@dataclass
class Usage:
    """What a window cost: the machine's and PostgreSQL's CPU in cores (seconds of CPU a second),
    and the WAL PostgreSQL wrote."""

    machine_busy: float = 0.0
    postgres: float = 0.0
    wal_bytes: int = 0
    strangers: set[str] = field(default_factory=set)
    """Other client sessions' application names, seen on the server at the window's start or
    end."""


WAL_POSITION: Final = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
STRANGERS: Final = """
SELECT coalesce(nullif(application_name, ''), '(unnamed)') FROM pg_stat_activity
WHERE backend_type = 'client backend' AND application_name NOT LIKE 'jobgate%'
"""
"""Client sessions that are neither the stores' (``jobgate``, ``jobgate-listen``) nor ours."""


async def connect(dsn: str, *, search_path: str | None = None) -> Any:
    """A connection of the bench's own, named so that it is not counted as someone else's."""
    settings = {"application_name": "jobgate-bench"}
    if search_path is not None:
        settings["search_path"] = search_path
    return await asyncpg.connect(dsn, timeout=5, server_settings=settings)


@contextlib.asynccontextmanager
async def measure(dsn: str | None) -> AsyncIterator[Usage]:
    """Measure the window of the ``async with`` block (WAL too if ``dsn`` names a server)."""
    conn = None if dsn is None else await connect(dsn)
    try:
        usage = Usage()
        if conn is not None:
            usage.strangers.update(str(row[0]) for row in await conn.fetch(STRANGERS))
        wal0 = 0 if conn is None else int(await conn.fetchval(WAL_POSITION))
        busy0, total0 = machine_jiffies()
        pg0 = postgres_jiffies()
        started = time.monotonic()
        yield usage
        wall = max(1e-9, time.monotonic() - started)
        busy1, total1 = machine_jiffies()
        pg1 = postgres_jiffies()
        cpus = os.cpu_count() or 1
        usage.machine_busy = (busy1 - busy0) / max(1, total1 - total0) * cpus
        # Totals, not per pid: a process that exits moves its time into the postmaster's cutime.
        usage.postgres = (sum(pg1.values()) - sum(pg0.values())) / CLOCK_TICKS / wall
        if conn is not None:
            usage.wal_bytes = int(await conn.fetchval(WAL_POSITION)) - wal0
            usage.strangers.update(str(row[0]) for row in await conn.fetch(STRANGERS))
    finally:
        if conn is not None:
            await conn.close()


# --------------------------------------------------------------------------------------------------
# The fake upstream and the instrumented runner


@dataclass
class Counts:
    """One runner's (or one worker's, summed) figures for the measured window."""

    claims: int = 0
    polls: int = 0
    saved: int = 0
    fenced: int = 0
    steps: int = 0
    claim_s: float = 0.0
    """The whole claim: with a shared quota, its buckets are locked and charged in the claim's
    transaction."""
    save_s: float = 0.0
    polls_s: float = 0.0
    """Inside the polls (fetch_status, folding the report in): Python only, the adapter never
    waits. They run while the loop awaits the claim's and the save's round trips."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    runners: int = 0

    def add(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


class CountingWriter(JobWriter):
    """The runner's writer, counting the versions it committed and the ones fenced out."""

    counts: Counts | None = None

    async def save(self, updates: Sequence[Update], now: datetime) -> list[Job | None]:
        saved = await super().save(updates, now)
        if self.counts is not None:
            written = sum(job is not None for job in saved)
            self.counts.saved += written
            self.counts.fenced += len(saved) - written
        return saved


class BenchRunner(Runner):
    """The real runner, timing its claims and its flushes and counting claims and steps.

    ``run()`` drives the leased loop's ``step``, not ``Runner.step``, so the counting hooks are
    the two calls that loop makes every step: the claim (when there is room) and the flush."""

    counts: Counts | None = None

    async def _claim(self, room: int) -> list[Job]:
        started = time.perf_counter()
        claimed = await super()._claim(room)
        if self.counts is not None:
            self.counts.claim_s += time.perf_counter() - started
            self.counts.claims += len(claimed)
        return claimed

    async def _flush(self) -> None:
        started = time.perf_counter()
        await super()._flush()
        if self.counts is not None:
            self.counts.save_s += time.perf_counter() - started
            self.counts.steps += 1

    async def _poll_guarded(self, job: Job) -> None:
        started = time.perf_counter()
        await super()._poll_guarded(job)
        if self.counts is not None:
            self.counts.polls_s += time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# A worker: one or more Runners in this process, started by the parent (``--worker CONFIG``)


@dataclass(frozen=True)
class WorkerConfig:
    kind: str
    """``sqlite`` or ``postgres``."""
    target: str
    """The SQLite file, or the PostgreSQL DSN."""
    schema: str
    runners: int
    seconds: float
    tick: float
    batch: int
    next_poll: float
    pool: int
    name: str
    profile: bool
    shared_quota: bool = True
    """PostgreSQL: the quota kept in the store (as create_app has it); else each Runner's own
    buckets in memory, and claims that lock no quota row."""


def open_store(config: WorkerConfig) -> JobStore:
    if config.kind == "sqlite":
        return SqliteStore(config.target)
    return PostgresStore(config.target, schema=config.schema, max_size=config.pool)


async def worker(config: WorkerConfig) -> dict[str, Any]:
    configure_logging("console", "WARNING")
    adapters = {PROVIDER: InstantAdapter()}
    policies = {PROVIDER: unbound_policy(config.next_poll)}
    stores: list[JobStore] = []
    runners: list[BenchRunner] = []
    per_runner: list[Counts] = []
    feeds: list[RemoteFeed] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for index in range(config.runners):
            store = open_store(config)
            await store.open()
            stores.append(store)
            counts = Counts(runners=1)
            hub = EventHub()
            writer = CountingWriter(store, hub)
            # As create_app: replicas spend one quota kept in the store; SQLite keeps it in memory.
            shared = None
            if isinstance(store, PostgresStore) and config.shared_quota:
                shared = SharedQuota(store.quota, policies)
            runner = BenchRunner(
                store,
                adapters,
                policies,
                hub,
                tick=config.tick,
                batch=config.batch,
                writer=writer,
                quota=shared,
                owner=f"{config.name}-{index}",
            )
            if isinstance(store, PostgresStore):
                # As create_app: other replicas' due signals (NOTIFY) wake this runner.
                feed = RemoteFeed(store, hub, on_due=runner.wake)
                await feed.start()
                store.subscribe(feed.signal)
                feeds.append(feed)
            runners.append(runner)
            per_runner.append(counts)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        profiler = cProfile.Profile() if config.profile else None
        cpu = time.process_time()
        started = time.perf_counter()
        for runner, counts in zip(runners, per_runner, strict=True):
            runner.counts = counts
            assert isinstance(runner.writer, CountingWriter)
            runner.writer.counts = counts
        if profiler is not None:
            profiler.enable()
        tasks = [asyncio.create_task(feed.run()) for feed in feeds]
        tasks += [asyncio.create_task(runner.run()) for runner in runners]
        await asyncio.sleep(config.seconds)
        # The window ends here: what the stop does (hand-backs) is not counted.
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for runner in runners:
            runner.counts = None
            assert isinstance(runner.writer, CountingWriter)
            runner.writer.counts = None
        total = Counts()
        for runner, counts in zip(runners, per_runner, strict=True):
            counts.polls = runner.status_calls[PROVIDER]
            total.add(counts)
        total.wall_s = wall
        total.cpu_s = cpu
        result: dict[str, Any] = {"counts": asdict(total)}
        if profiler is not None:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats(pstats.SortKey.TIME).print_stats(PROFILE_LINES)
            result["profile"] = text.getvalue()
        return result
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for store in stores:
            await store.close()


def worker_main(raw: str) -> None:
    config = WorkerConfig(**json.loads(raw))
    result = asyncio.run(worker(config))
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------
# The parent: loading, starting workers, the baseline


@dataclass
class Outcome:
    name: str
    how: str
    claims: float = 0.0
    """Rows claimed per second."""
    polls: float = 0.0
    """Adapter calls per second (the baseline: rows written back per second)."""
    counts: Counts = field(default_factory=Counts)
    cpu: Usage = field(default_factory=Usage)
    python_cores: float = 0.0
    profiles: list[str] = field(default_factory=list)
    raw_claim_s: float = 0.0
    raw_write_s: float = 0.0


def make_jobs(count: int, now: datetime) -> list[tuple[Job, Sequence[NewEvent]]]:
    """``count`` RUNNING jobs, due one microsecond apart over the last ``count`` microseconds."""
    started = now - timedelta(hours=1)
    jobs: list[tuple[Job, Sequence[NewEvent]]] = []
    for index in range(count):
        job = Job(
            id=new_id(),
            provider=PROVIDER,
            upstream_id=f"up-{index}",
            state=JobState.RUNNING,
            created_at=started,
            updated_at=started,
            deadline_at=now + timedelta(days=2),
            native_status="running",
            progress=IDLE,
            started_at=started,
            next_poll_at=now - timedelta(microseconds=count - index),
            polls=3,
            unchanged_polls=2,
            labels={"team": ("search", "ingest", "ml")[index % 3], "env": "prod"},
            request={"query": "companies hiring in Berlin", "limit": 100},
            version=4,
        )
        jobs.append((job, ()))
    return jobs


async def load(store: SqliteStore | PostgresStore, count: int) -> float:
    """Insert ``count`` due jobs through the store's bulk path; the seconds it took."""
    started = time.perf_counter()
    jobs = make_jobs(count, utcnow())
    for offset in range(0, count, LOAD_BATCH):
        await store._create_many(jobs[offset : offset + LOAD_BATCH])
    return time.perf_counter() - started


async def run_workers(
    configs: Sequence[WorkerConfig], dsn: str | None
) -> tuple[Counts, Usage, list[str]]:
    """Start one worker process per config, wait until each is ready, start them together, and
    sum what they report. A worker that fails or hangs is killed (by its own handle)."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for config in configs:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(SCRIPT),
                    "--worker",
                    json.dumps(asdict(config)),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    # Inherited: what a worker logs (warnings and up) shows as it happens, and a
                    # chatty worker cannot block on a pipe nobody reads.
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
            if line.strip() != b"ready":
                raise RuntimeError("a worker did not start (its stderr is above)")
        seconds = configs[0].seconds
        async with measure(dsn) as cpu:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            await asyncio.sleep(seconds)
        total = Counts()
        profiles: list[str] = []
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), seconds + STOP_TIMEOUT)
            if not line:
                raise RuntimeError("a worker ended without a report (its stderr is above)")
            report = json.loads(line)
            counts = Counts(**report["counts"])
            # Rates add up per worker (each over its own window, within milliseconds of the others).
            total.add(counts)
            if "profile" in report:
                profiles.append(report["profile"])
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            if proc.returncode != 0:
                print(f"  (a worker exited {proc.returncode}: its stderr is above)")
        total.wall_s /= len(procs)
        return total, cpu, profiles
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def outcome_of(name: str, how: str, counts: Counts, cpu: Usage, profiles: list[str]) -> Outcome:
    wall = max(1e-9, counts.wall_s)
    return Outcome(
        name=name,
        how=how,
        claims=counts.claims / wall,
        polls=counts.polls / wall,
        counts=counts,
        cpu=cpu,
        python_cores=counts.cpu_s / wall,
        profiles=profiles,
    )


def config(args: argparse.Namespace, **changes: Any) -> WorkerConfig:
    base: dict[str, Any] = {
        "kind": "postgres",
        "target": args.dsn,
        "schema": "public",
        "runners": 1,
        "seconds": args.seconds,
        "tick": args.tick,
        "batch": args.batch,
        "next_poll": args.next_poll,
        "pool": args.pool,
        "name": "bench",
        "profile": args.profile,
    }
    base.update(changes)
    return WorkerConfig(**base)


async def sqlite_scenario(args: argparse.Namespace, directory: Path, postgres: bool) -> Outcome:
    path = directory / "replicas.db"
    store = SqliteStore(path)
    await store.open()
    try:
        loaded = await load(store, args.jobs)
    finally:
        await store.close()
    if postgres:
        await settle(args.dsn, None)  # a quiet server: no checkpoint of earlier work meanwhile
    print(f"  loaded {args.jobs:,} jobs into {path} in {loaded:.1f} s", flush=True)
    counts, cpu, profiles = await run_workers(
        [config(args, kind="sqlite", target=str(path), name="sqlite")], None
    )
    return outcome_of("SQLite, 1 process", "one Runner, one SqliteStore", counts, cpu, profiles)


@contextlib.asynccontextmanager
async def fresh_schema(dsn: str) -> AsyncIterator[str]:
    """A schema name no one else uses, dropped (with everything in it) at the end."""
    name = f"bench_{uuid.uuid4().hex}"
    try:
        yield name
    finally:
        conn = await connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()


async def settle(dsn: str, table: str | None) -> None:
    """Start from a vacuumed, analysed table, as in a store that has been running, and from a
    checkpoint, so that one scenario's dirty pages are not written during the next one's window
    (at ~3 KB of WAL a poll, a 10 s scenario writes a good share of max_wal_size)."""
    conn = await connect(dsn)
    try:
        if table is not None:
            await conn.execute(f"VACUUM ANALYZE {table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def postgres_scenario(
    args: argparse.Namespace,
    name: str,
    how: str,
    *,
    processes: int,
    runners: int,
    shared_quota: bool = True,
) -> Outcome:
    async with fresh_schema(args.dsn) as schema:
        store = PostgresStore(args.dsn, schema=schema)
        await store.open()  # creates and migrates the schema
        try:
            loaded = await load(store, args.jobs)
        finally:
            await store.close()
        await settle(args.dsn, f"{schema}.jobs")
        print(f"  loaded {args.jobs:,} jobs into schema {schema} in {loaded:.1f} s", flush=True)
        configs = [
            config(
                args,
                schema=schema,
                runners=runners,
                name=f"replica{index}",
                shared_quota=shared_quota,
            )
            for index in range(processes)
        ]
        counts, cpu, profiles = await run_workers(configs, args.dsn)
    return outcome_of(name, how, counts, cpu, profiles)


# The baseline's table and statements. Due times come from Python, as the runner's do.
RAW_TABLE: Final = """
CREATE TABLE raw_jobs (id bigint PRIMARY KEY, due timestamptz NOT NULL, version bigint NOT NULL)
"""
RAW_INDEX: Final = "CREATE INDEX raw_jobs_due ON raw_jobs (due)"
RAW_LOAD: Final = """
INSERT INTO raw_jobs (id, due, version)
SELECT g, $2::timestamptz - ($1 - g) * interval '1 microsecond', 4 FROM generate_series(1, $1) AS g
"""
RAW_CLAIM: Final = """
UPDATE raw_jobs SET due = $3, version = version + 1
WHERE id IN (
    SELECT id FROM raw_jobs WHERE due <= $1 ORDER BY due LIMIT $2 FOR UPDATE SKIP LOCKED
)
RETURNING id, version
"""
RAW_WRITE_BACK: Final = """
UPDATE raw_jobs SET due = $2, version = raw_jobs.version + 1
FROM unnest($1::bigint[]) AS done (id)
WHERE raw_jobs.id = done.id
"""


@dataclass
class RawCounts:
    claims: int = 0
    written: int = 0
    loops: int = 0
    claim_s: float = 0.0
    write_s: float = 0.0


async def raw_loop(
    conn: Any, batch: int, until: float, lease: timedelta, counts: RawCounts
) -> None:
    while time.monotonic() < until:
        now = utcnow()
        started = time.perf_counter()
        claimed = await conn.fetch(RAW_CLAIM, now, batch, now + lease)
        middle = time.perf_counter()
        ids = [row[0] for row in claimed]
        if ids:
            await conn.execute(RAW_WRITE_BACK, ids, utcnow() + timedelta(seconds=RAW_NEXT_DUE))
        counts.claim_s += middle - started
        counts.write_s += time.perf_counter() - middle
        counts.claims += len(ids)
        counts.written += len(ids)
        counts.loops += 1


async def raw_scenario(args: argparse.Namespace, connections: int) -> Outcome:
    async with fresh_schema(args.dsn) as schema:
        setup = await connect(args.dsn)
        try:
            await setup.execute(f"CREATE SCHEMA {schema}")
            await setup.execute(f"SET search_path = {schema}")
            await setup.execute(RAW_TABLE)
            await setup.execute(RAW_INDEX)
            await setup.execute(RAW_LOAD, args.jobs, utcnow())
        finally:
            await setup.close()
        await settle(args.dsn, f"{schema}.raw_jobs")
        conns = [await connect(args.dsn, search_path=schema) for _ in range(connections)]
        try:
            totals = [RawCounts() for _ in conns]
            lease = timedelta(seconds=120)
            async with measure(args.dsn) as cpu:
                cpu_started = time.process_time()
                started = time.perf_counter()
                until = time.monotonic() + args.seconds
                await asyncio.gather(
                    *(
                        raw_loop(conn, args.batch, until, lease, counts)
                        for conn, counts in zip(conns, totals, strict=True)
                    )
                )
                wall = time.perf_counter() - started
                cpu_spent = time.process_time() - cpu_started
        finally:
            for conn in conns:
                await conn.close()
    claims = sum(c.claims for c in totals)
    written = sum(c.written for c in totals)
    loops = sum(c.loops for c in totals)
    how = (
        "bare asyncpg loop, one connection"
        if connections == 1
        else (f"{connections} bare asyncpg loops on {connections} connections, one process")
    )
    return Outcome(
        name=f"raw SKIP LOCKED, {connections} conn",
        how=how,
        claims=claims / wall,
        polls=written / wall,
        counts=Counts(claims=claims, polls=written, saved=written, steps=loops, wall_s=wall),
        cpu=cpu,
        python_cores=cpu_spent / wall,
        raw_claim_s=sum(c.claim_s for c in totals),
        raw_write_s=sum(c.write_s for c in totals),
    )


# --------------------------------------------------------------------------------------------------
# Report


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:5.2f}x" if base else "   n/a"


def other_cores(outcome: Outcome) -> float:
    return max(0.0, outcome.cpu.machine_busy - outcome.cpu.postgres - outcome.python_cores)


def print_outcome(outcome: Outcome, args: argparse.Namespace) -> None:
    c = outcome.counts
    print(
        f"  {outcome.claims:>9,.0f} claims/s  {outcome.polls:>9,.0f} polls/s  "
        f"({c.claims:,} claims, {c.polls:,} polls in {c.wall_s:.1f} s)"
    )
    cpus = os.cpu_count() or 1
    print(
        f"  CPU, cores: machine {outcome.cpu.machine_busy:.2f} of {cpus} busy = PostgreSQL "
        f"{outcome.cpu.postgres:.2f} + the bench's Python {outcome.python_cores:.2f} + other "
        f"(kernel write-back and network, other processes) {other_cores(outcome):.2f}"
    )
    if outcome.cpu.strangers:
        print(
            "  (other clients were connected to the server during the window: "
            f"{', '.join(sorted(outcome.cpu.strangers))}; its time may have gone to them too)"
        )
    rows = max(1, c.polls)
    print(
        f"  CPU per row polled: PostgreSQL {outcome.cpu.postgres * c.wall_s / rows * 1e6:.0f} us,"
        f" Python {outcome.python_cores * c.wall_s / rows * 1e6:.0f} us"
    )
    if outcome.cpu.wal_bytes:
        print(f"  WAL written per row polled: {outcome.cpu.wal_bytes / rows:,.0f} bytes")
    if outcome.raw_claim_s or outcome.raw_write_s:
        loops = max(1, c.steps)
        print(
            f"  {c.steps:,} loops, {c.claims / loops:.0f} rows a claim; per loop: claim "
            f"{outcome.raw_claim_s / loops * 1000:.1f} ms, write-back "
            f"{outcome.raw_write_s / loops * 1000:.1f} ms"
        )
        return
    steps = max(1, c.steps)
    runner_wall = max(1e-9, c.wall_s * max(1, c.runners))
    rest = runner_wall - c.claim_s - c.save_s
    print(
        f"  {c.steps:,} steps ({c.steps / runner_wall:.1f} a second a runner), "
        f"{c.claims / steps:.0f} claims a step; {c.saved:,} versions committed, "
        f"{c.fenced:,} fenced out"
    )
    print(
        f"  a step, in ms: claim {c.claim_s / steps * 1000:.1f} (the quota's included), save "
        f"{c.save_s / steps * 1000:.1f}, the rest "
        f"{rest / steps * 1000:.1f} (the {args.tick * 1000:g} ms tick's sleep, the loop's Python)"
    )
    if c.claims < 0.9 * args.batch * steps:
        print(
            f"  (fewer due than the batch: this figure is limited by --jobs {args.jobs:,} and "
            f"--next-poll {args.next_poll:g}, not by the store)"
        )
    print(
        f"  the polls' own Python: {c.polls_s / steps * 1000:.1f} ms a step "
        f"({c.polls_s / rows * 1e6:.0f} us a poll), run while the loop awaits the claim and save"
    )


async def postgres_answers(dsn: str) -> str | None:
    """The server's version and settings that matter here, or None if it cannot be reached."""
    try:
        conn = await connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        print(f"  PostgreSQL at {dsn} does not answer ({type(exc).__name__}): skipping it")
        return None
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = [
            f"{name} {await conn.fetchval(f'SHOW {name}')}"
            for name in ("synchronous_commit", "fsync", "shared_buffers")
        ]
    finally:
        await conn.close()
    return f"PostgreSQL {version} ({', '.join(settings)})"


Scenario = Callable[[], Awaitable[Outcome]]


async def bench(args: argparse.Namespace, directory: Path) -> None:
    configure_logging("console", "WARNING")
    cpus = os.cpu_count() or 1
    print(
        f"jobgate replicas bench: {args.jobs:,} jobs, all due, polled for {args.seconds:g} s a "
        f"scenario; batch {args.batch}, tick {args.tick * 1000:g} ms, next poll "
        f"{args.next_poll * 1000:g} ms after the last; {cpus} CPUs"
    )
    server = await postgres_answers(args.dsn)
    if server is not None:
        print(f"  {server} at {args.dsn}; pool {args.pool} a replica")
    async with measure(None if server is None else args.dsn) as idle:
        await asyncio.sleep(1.0)
    clients = ", ".join(sorted(idle.strangers)) or "none"
    print(
        f"  before the run, for 1 s: {idle.machine_busy:.2f} of {cpus} cores busy with other work"
        f" (PostgreSQL {idle.postgres:.2f})"
        + ("" if server is None else f"; other clients on the server: {clients}")
    )
    if server is not None:
        why = (
            f"Why processes: the {args.replicas} replicas of scenario 3 are {args.replicas} worker"
            " processes, one Runner and one PostgresStore each, so each has its own interpreter"
            f" and GIL as in a deployment. On this machine they share its {cpus} cores with each"
            " other and with the PostgreSQL server, so every figure comes with the machine's CPU:"
            " near all cores busy, the figure is this machine's limit, not the store's. Scenario"
            f" 3b runs the same {args.replicas} Runners in one process (one event loop: one core"
            " for all their Python) to show the difference."
        )
        print(textwrap.fill(why, width=100, initial_indent="  ", subsequent_indent="  "))
    n = args.replicas
    scenarios: list[tuple[str, str, Scenario]] = [
        (
            "sqlite",
            "1. SQLite, one Runner in one process",
            lambda: sqlite_scenario(args, directory, server is not None),
        ),
        (
            "pg1",
            "2. PostgreSQL, 1 replica (one worker process)",
            lambda: postgres_scenario(
                args,
                "PostgreSQL, 1 replica",
                "one Runner, one PostgresStore",
                processes=1,
                runners=1,
            ),
        ),
        (
            "pgN",
            f"3. PostgreSQL, {n} replicas ({n} worker processes, one schema)",
            lambda: postgres_scenario(
                args,
                f"PostgreSQL, {n} replicas",
                f"{n} processes, a Runner and a PostgresStore each",
                processes=n,
                runners=1,
            ),
        ),
        (
            "pgN-1p",
            f"3b. PostgreSQL, {n} replicas as {n} Runners in one process",
            lambda: postgres_scenario(
                args,
                f"PG, {n} Runners in 1 process",
                f"one process, {n} Runners with a PostgresStore each",
                processes=1,
                runners=n,
            ),
        ),
        (
            "pgN-local",
            f"3c. PostgreSQL, {n} replicas ({n} processes) with local buckets, no shared quota",
            lambda: postgres_scenario(
                args,
                f"PG, {n} replicas, local quota",
                "as 3, each Runner with its own buckets (quota=None)",
                processes=n,
                runners=1,
                shared_quota=False,
            ),
        ),
        ("raw1", "4. Baseline: raw SKIP LOCKED, one connection", lambda: raw_scenario(args, 1)),
        ("rawN", f"4b. Raw SKIP LOCKED, {n} connections at once", lambda: raw_scenario(args, n)),
    ]
    chosen = [
        (title, scenario)
        for key, title, scenario in scenarios
        if (server is not None or key == "sqlite") and (not args.only or key in args.only)
    ]
    outcomes: list[Outcome] = []
    for title, scenario in chosen:
        print()
        print(title, flush=True)
        outcome = await scenario()
        outcomes.append(outcome)
        print_outcome(outcome, args)
        for index, profile in enumerate(outcome.profiles):
            print(f"  cProfile of worker {index} (the window only; sorted by own time):")
            for text in profile.strip().splitlines():
                print(f"    {text}")

    base = next((o.polls for o in outcomes if o.name == "raw SKIP LOCKED, 1 conn"), None)
    print()
    print(
        "Summary: rows per second, and the ratio of polls/s to the raw SKIP LOCKED loop's rows/s"
        " over one connection"
    )
    print(
        f"  {'scenario':<32} {'claims/s':>9} {'polls/s':>9} {'vs raw':>7}  "
        f"{'CPU busy':>8} {'PG':>5} {'Python':>6} {'other':>5}  how"
    )
    for outcome in outcomes:
        print(
            f"  {outcome.name:<32} {outcome.claims:>9,.0f} {outcome.polls:>9,.0f} "
            f"{ratio(outcome.polls, base):>7}  {outcome.cpu.machine_busy:>4.2f}/{cpus:<3}"
            f"{outcome.cpu.postgres:>5.2f} {outcome.python_cores:>6.2f} "
            f"{other_cores(outcome):>5.2f}  {outcome.how}"
        )
    if base is None:
        print("  (no baseline in this run, so no ratios)")
    print("  (CPU in cores over the window: the whole machine busy; of it the PostgreSQL server,")
    print("  the bench's Python (the workers, or the raw loop's process), and the rest: kernel")
    print("  write-back and network, other processes)")


def check_loopback(dsn: str) -> str | None:
    host = urlsplit(dsn).hostname
    if host not in LOOPBACK:
        return f"the bench talks to a server on 127.0.0.1 only, not {host!r}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario (default 10)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs in each store (20,000)")
    parser.add_argument("--batch", type=int, default=500, help="claim batch (the default, 500)")
    parser.add_argument("--tick", type=float, default=0.02, help="runner tick (default 0.02 s)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas in scenario 3 (3)")
    parser.add_argument("--pool", type=int, default=10, help="pool size a replica (default 10)")
    parser.add_argument(
        "--next-poll",
        type=float,
        default=0.001,
        help="seconds from a job's poll to its next (default 0.001)",
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"PostgreSQL (default {DEFAULT_DSN})")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile each worker's window (slows it down)"
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=[],
        help=f"run only these scenarios, comma-separated: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--dir", type=Path, help="where to put the SQLite file (a temp dir)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    if not 1 <= args.seconds <= 600 or args.jobs < 1 or args.batch < 1 or args.replicas < 1:
        parser.error("need 1 <= --seconds <= 600, and --jobs, --batch and --replicas >= 1")
    if not 0 < args.tick <= 1 or args.pool < 1:
        parser.error("need 0 < --tick <= 1 and --pool >= 1")
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    refused = check_loopback(args.dsn)
    if refused is not None:
        parser.error(refused)
    with contextlib.ExitStack() as stack:
        directory: Path = args.dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="jobgate-replicas-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "replicas.db").exists():
            parser.error(f"{directory / 'replicas.db'} exists: use an empty directory")
        asyncio.run(bench(args, directory))


if __name__ == "__main__":
    main()
