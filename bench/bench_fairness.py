"""Fairness: how late a tenant's one job is polled while another tenant's flood is being polled.

    python bench/bench_fairness.py [--flood 2000] [--rate 200] [--concurrency 20] [--latency 0.02]
                                   [--b-due 0.5] [--tick 0.02] [--batch 500] [--timeout 60]
                                   [--store sqlite|memory|postgres] [--dir DIR]
                                   [--dsn postgresql://postgres@127.0.0.1:5432/test]

Issue 9: tenant ``a`` has ``--flood`` jobs due at once; tenant ``b`` submits one job, due
``--b-due`` seconds later (after every one of ``a``'s). All are jobs of one provider whose quota
(``--rate`` calls a second, ``--concurrency`` at once, each call ``--latency`` long upstream) takes
``flood / rate`` seconds to poll the flood once. The real :class:`~gateway.runner.Runner` runs on
the real clock (its clock reads T0 when the run starts) against a real store and an in-process
adapter, until every job has been polled once (each job's next poll is an hour away) or
``--timeout``.

Two runs of the same setup:

- ``fair``: ``b``'s job belongs to tenant ``b``. The claim lets tenants take turns, so ``b``'s job
  goes out in the first claim after it falls due.
- ``baseline``: the same job belongs to tenant ``a``, which then holds all ``flood + 1`` jobs; it
  is due last, so it waits for the whole flood, which is what any tenant waited for before claims
  were fair.

It prints ``b``'s lateness (seconds from its due time to its status call) in both, their ratio,
and ``a``'s throughput (polls a second while its flood drains) in both: fairness should cost ``a``
nothing but ``b``'s one turn. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from fake_upstream import IDLE, PROVIDER, InstantAdapter  # bench/ is sys.path[0]

from adapters.base import StatusReport
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.logs import configure_logging
from gateway.policy import PollPolicy
from gateway.quota import Quota, SharedQuota
from gateway.runner import Runner
from gateway.states import JobState
from gateway.store.base import JobStore, NewEvent
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

T0: Final = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
B_JOB: Final = "b-0"
NEXT_POLL: Final = 3600.0
"""Every job's next poll after the one measured: outside any run."""


class Clock:
    """T0 at :meth:`start`, then the monotonic clock: the runner's ``clock``."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def start(self) -> None:
        self._origin = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._origin

    def __call__(self) -> datetime:
        return T0 + timedelta(seconds=self.elapsed())


class SlowAdapter(InstantAdapter):
    """The benches' provider, each status call taking ``latency`` s, recording when each job was
    polled (seconds after T0)."""

    def __init__(self, clock: Clock, latency: float, expected: int) -> None:
        self.clock = clock
        self.latency = latency
        self.expected = expected
        self.polled: dict[str, float] = {}
        self.calls = 0
        self.all_polled = asyncio.Event()

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        self.polled.setdefault(upstream_id, self.clock.elapsed())
        self.calls += 1
        if len(self.polled) >= self.expected:
            self.all_polled.set()
        await asyncio.sleep(self.latency)
        return StatusReport(upstream_id, JobState.RUNNING, "running", progress=IDLE)


def running_job(job_id: str, tenant: str, upstream_id: str, due: float) -> Job:
    started = T0 - timedelta(minutes=5)
    return Job(
        id=job_id,
        provider=PROVIDER,
        upstream_id=upstream_id,
        state=JobState.RUNNING,
        created_at=started,
        updated_at=started,
        deadline_at=T0 + timedelta(days=1),
        tenant=tenant,
        native_status="running",
        progress=IDLE,
        started_at=started,
        next_poll_at=T0 + timedelta(seconds=due),
    )


@dataclass
class Result:
    name: str
    b_lateness: float | None
    """Seconds from ``b``'s due time to its status call; ``None``: never polled."""
    a_polled: int
    a_first: float
    a_last: float
    steps: int
    wall: float
    timed_out: bool
    polled_before_b: int = 0
    """``a``'s jobs polled before ``b``'s job."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def a_rate(self) -> float:
        span = self.a_last - self.a_first
        return self.a_polled / span if span > 0 else float("nan")


@asynccontextmanager
async def open_store(kind: str, directory: Path, name: str, dsn: str) -> AsyncIterator[JobStore]:
    """A fresh, empty store (PostgreSQL: in a schema of its own, dropped at the end)."""
    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "sqlite":
        sqlite = SqliteStore(directory / f"{name}.db")
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    postgres = PostgresStore(dsn, schema=schema)
    await postgres.open()
    try:
        yield postgres
    finally:
        await postgres.close()
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def one_run(args: argparse.Namespace, directory: Path, name: str, b_tenant: str) -> Result:
    policy = PollPolicy(
        first_delay=NEXT_POLL,
        min_interval=NEXT_POLL,
        max_interval=NEXT_POLL,
        multiplier=1.0,
        jitter=0.0,
        rate_per_second=args.rate,
        burst=args.concurrency,
        concurrency=args.concurrency,
        eta_aware=False,
    )
    clock = Clock()
    adapter = SlowAdapter(clock, args.latency, args.flood + 1)
    async with open_store(args.store, directory, name, args.dsn) as store:
        flood = [running_job(f"job_a{n:06d}", "a", f"a-{n}", 0.0) for n in range(args.flood)]
        late = running_job("job_b000000", b_tenant, B_JOB, args.b_due)
        items: list[tuple[Job, list[NewEvent]]] = [(job, []) for job in [*flood, late]]
        assert isinstance(store, MemoryStore | SqliteStore | PostgresStore)
        await store._create_many(items)
        quota: Quota | None = None  # one process: the runner's own buckets
        if isinstance(store, PostgresStore):  # the replicas' path: the buckets in the store
            quota = SharedQuota(store.quota, {PROVIDER: policy})
        runner = Runner(
            store,
            {PROVIDER: adapter},
            {PROVIDER: policy},
            EventHub(),
            tick=args.tick,
            batch=args.batch,
            clock=clock,
            quota=quota,
        )
        clock.start()
        task = asyncio.create_task(runner.run())
        timed_out = False
        try:
            async with asyncio.timeout(args.timeout):
                await adapter.all_polled.wait()
        except TimeoutError:
            timed_out = True
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        wall = clock.elapsed()
        steps = runner.loop.steps
    a_times = sorted(at for upstream_id, at in adapter.polled.items() if upstream_id != B_JOB)
    b_at = adapter.polled.get(B_JOB)
    return Result(
        name=name,
        b_lateness=None if b_at is None else b_at - args.b_due,
        a_polled=len(a_times),
        a_first=a_times[0] if a_times else 0.0,
        a_last=a_times[-1] if a_times else 0.0,
        steps=steps,
        wall=wall,
        timed_out=timed_out,
        polled_before_b=sum(1 for at in a_times if b_at is not None and at < b_at),
    )


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:8.3f} s"


def report(args: argparse.Namespace, fair: Result, baseline: Result) -> None:
    print()
    print(f"  {'':<34} {'fair':>14} {'baseline':>14}")
    rows = [
        (
            "b's lateness (due -> status call)",
            seconds(fair.b_lateness),
            seconds(baseline.b_lateness),
        ),
        (
            "a's jobs polled before b's",
            f"{fair.polled_before_b:,}",
            f"{baseline.polled_before_b:,}",
        ),
        ("a's jobs polled", f"{fair.a_polled:,}", f"{baseline.a_polled:,}"),
        ("a's throughput (polls/s)", f"{fair.a_rate:,.1f}", f"{baseline.a_rate:,.1f}"),
        (
            "a's flood drained in",
            seconds(fair.a_last - fair.a_first),
            seconds(baseline.a_last - baseline.a_first),
        ),
        ("runner steps", f"{fair.steps:,}", f"{baseline.steps:,}"),
        ("run wall time", seconds(fair.wall), seconds(baseline.wall)),
    ]
    for name, left, right in rows:
        print(f"  {name:<34} {left:>14} {right:>14}")
    for result in (fair, baseline):
        if result.timed_out:
            print(
                f"  ({result.name} stopped at --timeout {args.timeout:g} s, "
                "before every job was polled)"
            )
    print()
    if fair.b_lateness is not None and baseline.b_lateness is not None:
        ratio = baseline.b_lateness / fair.b_lateness if fair.b_lateness > 0 else float("inf")
        print(
            f"  b's lateness: {fair.b_lateness * 1000:.1f} ms with fair claims, "
            f"{baseline.b_lateness:.2f} s as one more job of a's backlog: {ratio:,.0f}x sooner; "
            f"{fair.b_lateness / args.tick:.1f} ticks of {args.tick * 1000:g} ms"
        )
    if fair.a_rate == fair.a_rate and baseline.a_rate == baseline.a_rate:
        print(
            f"  a's throughput: {fair.a_rate:,.1f} polls/s fair vs {baseline.a_rate:,.1f} baseline "
            f"({fair.a_rate / baseline.a_rate:.3f}x; the quota allows {args.rate:g}/s)"
        )


async def bench(args: argparse.Namespace, directory: Path) -> None:
    configure_logging("console", "WARNING")
    print(
        f"jobgate fairness bench: tenant a {args.flood:,} jobs due at once, tenant b 1 job due "
        f"{args.b_due:g} s later; one provider at {args.rate:g} calls/s, {args.concurrency} at "
        f"once, {args.latency * 1000:g} ms a call; tick {args.tick * 1000:g} ms, batch "
        f"{args.batch}; store {args.store}; {os.cpu_count()} CPUs"
    )
    fair = await one_run(args, directory, "fair", "b")
    baseline = await one_run(args, directory, "baseline", "a")
    report(args, fair, baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=2000, help="tenant a's due jobs")
    parser.add_argument("--rate", type=float, default=200.0, help="the provider's calls/s")
    parser.add_argument("--concurrency", type=int, default=20, help="calls in flight at once")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds a status call takes")
    parser.add_argument(
        "--b-due", type=float, default=0.5, help="b's job is due this long after a's"
    )
    parser.add_argument("--tick", type=float, default=0.02, help="Runner tick (default 0.02 s)")
    parser.add_argument("--batch", type=int, default=500, help="Runner claim batch (default 500)")
    parser.add_argument("--timeout", type=float, default=60.0, help="each run stops after this")
    parser.add_argument("--store", choices=("sqlite", "memory", "postgres"), default="sqlite")
    parser.add_argument("--dir", type=Path, help="where to put the SQLite files (default: temp)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "JOBGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="the PostgreSQL server for --store postgres",
    )
    args = parser.parse_args()
    if args.flood < 1 or args.rate <= 0 or args.concurrency < 1 or args.latency < 0:
        parser.error("need --flood >= 1, --rate > 0, --concurrency >= 1 and --latency >= 0")
    if not 0 < args.timeout <= 600 or args.b_due < 0:
        parser.error("need 0 < --timeout <= 600 and --b-due >= 0")
    with ExitStack() as stack:
        directory: Path = args.dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="jobgate-fairness-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("fair", "baseline"):
            if (directory / f"{name}.db").exists():
                parser.error(f"{directory / name}.db exists: use an empty directory")
        asyncio.run(bench(args, directory))


if __name__ == "__main__":
    main()
