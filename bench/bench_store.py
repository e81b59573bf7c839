"""Store throughput: how many jobs one process can create, claim and save per second.

    python bench/bench_store.py [--jobs N] [--tenants N] [--store sqlite|memory] [--dir DIR]

Prints figures; asserts nothing (timings belong here, never in tests). The job shape is a typical
running job: a progress block, two labels, a small request body and one event per state change.
With ``--tenants``, the jobs are spread at random over that many tenants, whose claims take turns.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.base import Progress
from gateway.jobs import Job, new_id
from gateway.states import JobState
from gateway.store.base import JobFilter, NewEvent
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
BATCH = 500
BULK_BATCH = 2000
SINGLE_CREATES = 2000
LEASE = timedelta(seconds=30)
PROVIDERS = ("pulse", "catchall", "platform", "extract")

Store = SqliteStore | MemoryStore


def make_job(rng: random.Random, tenants: int = 1) -> Job:
    return Job(
        id=new_id(),
        tenant="default" if tenants == 1 else f"tenant-{rng.randrange(tenants):04d}",
        provider=rng.choice(PROVIDERS),
        upstream_id=f"up-{rng.getrandbits(64):016x}",
        state=JobState.QUEUED,
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + timedelta(days=1),
        native_status="queued",
        next_poll_at=T0 - timedelta(seconds=rng.uniform(0, 3600)),
        labels={"team": rng.choice(("search", "ingest", "ml")), "env": "prod"},
        request={"query": "companies hiring in Berlin", "limit": 100},
    )


def report(name: str, count: int, seconds: float, unit: str = "jobs/s") -> None:
    rate = count / seconds if seconds else float("inf")
    print(f"{name:<44} {count:>9,} in {seconds:7.2f} s  {rate:>11,.0f} {unit}")


async def bench_create(store: Store, jobs: Sequence[Job]) -> None:
    single, bulk = jobs[:SINGLE_CREATES], jobs[SINGLE_CREATES:]
    created = [NewEvent("created", {})]
    started = time.perf_counter()
    for job in single:
        await store.create(job, created)
    report("create() one at a time (protocol)", len(single), time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(store.create(job, created) for job in bulk[:SINGLE_CREATES]))
    report("create() concurrently (asyncio.gather)", SINGLE_CREATES, time.perf_counter() - started)

    rest = bulk[SINGLE_CREATES:]
    started = time.perf_counter()
    for offset in range(0, len(rest), BULK_BATCH):
        await store._create_many([(job, created) for job in rest[offset : offset + BULK_BATCH]])
    report(f"bulk insert (batches of {BULK_BATCH})", len(rest), time.perf_counter() - started)


async def bench_claim(store: Store) -> list[Job]:
    claimed: list[Job] = []
    started = time.perf_counter()
    while batch := await store.claim_due(T0, limit=BATCH, lease_until=T0 + LEASE):
        claimed.extend(batch)
    report(f"claim_due (batches of {BATCH})", len(claimed), time.perf_counter() - started)
    return claimed


async def bench_capped_claim(store: Store, now: datetime) -> None:
    """The runner's claim: capped per provider (its tokens), here at a whole batch each."""
    caps = dict.fromkeys(PROVIDERS, BATCH)
    claimed = 0
    started = time.perf_counter()
    while batch := await store.claim_due(
        now, limit=BATCH, lease_until=now + LEASE, per_provider=caps
    ):
        claimed += len(batch)
    report(f"claim_due per provider (batches of {BATCH})", claimed, time.perf_counter() - started)


async def bench_save(store: Store, claimed: Sequence[Job], rng: random.Random) -> datetime:
    now = T0 + timedelta(seconds=1)
    later = now + timedelta(minutes=5)
    changes: list[tuple[Job, Sequence[NewEvent]]] = []
    for job in claimed:
        # One poll in five sees a state change and writes an event; the rest only reschedule.
        if rng.random() < 0.2:
            new = replace(
                job,
                updated_at=now,
                version=job.version + 1,
                state=JobState.RUNNING,
                native_status="running",
                started_at=now,
                progress=Progress(fraction=0.1, step="fetching"),
                polls=1,
                next_poll_at=later,
            )
            events: Sequence[NewEvent] = [NewEvent("state", {"state": "running"})]
        else:
            new = replace(
                job,
                updated_at=now,
                version=job.version + 1,
                polls=1,
                unchanged_polls=1,
                next_poll_at=later,
            )
            events = ()
        changes.append((new, events))
    started = time.perf_counter()
    applied = 0
    for offset in range(0, len(changes), BATCH):
        results = await store.save_many(changes[offset : offset + BATCH])
        applied += sum(result is not None for result in results)
    report(f"save_many (batches of {BATCH})", applied, time.perf_counter() - started, "rows/s")

    stale = changes[: min(len(changes), 10 * BATCH)]
    started = time.perf_counter()
    for offset in range(0, len(stale), BATCH):
        await store.save_many(stale[offset : offset + BATCH])
    report("save_many, every row fenced out", len(stale), time.perf_counter() - started, "rows/s")
    return later


async def bench_reads(store: Store, jobs: Sequence[Job], rng: random.Random) -> None:
    sample = rng.sample(list(jobs), min(len(jobs), 2000))
    started = time.perf_counter()
    for job in sample:
        await store.get(job.id)
    report("get()", len(sample), time.perf_counter() - started, "reads/s")

    started = time.perf_counter()
    pages = 0
    cursor: str | None = None
    while pages < 200:
        page = await store.list_jobs(JobFilter(labels={"team": "ml"}), limit=50, cursor=cursor)
        pages += 1
        if (cursor := page.next_cursor) is None:
            break
    report("list_jobs(label filter, 50 per page)", pages, time.perf_counter() - started, "pages/s")

    for name, call in (("count_by_state", store.count_by_state), ("next_due", store.next_due)):
        started = time.perf_counter()
        await call()
        elapsed = time.perf_counter() - started
        print(f"{name + '()':<44} {elapsed * 1000:9.1f} ms")


async def run(kind: str, total: int, tenants: int, directory: Path) -> None:
    rng = random.Random(7)
    path = directory / "bench.db"
    store: Store = SqliteStore(path) if kind == "sqlite" else MemoryStore()
    await store.open()
    jobs = [make_job(rng, tenants) for _ in range(total)]
    spread = f" over {tenants:,} tenants" if tenants > 1 else ""
    print(f"{kind} store, {total:,} jobs{spread}" + (f", {path}" if kind == "sqlite" else ""))
    try:
        await bench_create(store, jobs)
        claimed = await bench_claim(store)
        rescheduled = await bench_save(store, claimed, rng)
        await bench_capped_claim(store, rescheduled)
        await bench_reads(store, jobs, rng)
    finally:
        started = time.perf_counter()
        await store.close()
        if kind == "sqlite":
            print(f"{'close() (checkpoint)':<44} {(time.perf_counter() - started) * 1000:9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a temp dir)")
    args = parser.parse_args()
    if args.jobs < 2 * SINGLE_CREATES:
        parser.error(f"--jobs must be at least {2 * SINGLE_CREATES}")
    with ExitStack() as stack:
        directory: Path = args.dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="jobgate-bench-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args.store, args.jobs, max(1, args.tenants), directory))
        if args.store == "sqlite":
            # After close(): the WAL has been checkpointed into the one file.
            size = (directory / "bench.db").stat().st_size
            per_job = size / args.jobs
            print(f"{'file size':<44} {size / 2**20:9.1f} MiB  {per_job:11,.0f} bytes/job")


if __name__ == "__main__":
    main()
