"""One tenant's flood of due jobs does not hold back another tenant's job (issue 9, fairness).

Tenant ``a`` has 2,000 jobs due at once; tenant ``b`` has one job, due after all of them (it was
submitted later). All are jobs of ONE provider, whose quota (20 calls a second, 20 at a time)
lets 20 polls go out per tick, so ``a``'s backlog takes 100 ticks to go round once, and every job
``a`` polls is due again 10 s later: ``a`` stays over its share for the whole run. A claim that
took the soonest due jobs first would poll ``b``'s job only after ``a``'s backlog; a fair claim
(tenants take turns, ``gateway/store/base.py``) polls it in the first claim after it falls due,
every time it falls due.

The real :class:`~gateway.runner.Runner` runs against a real store (memory, a SQLite file, and
PostgreSQL with the runner's local buckets and with the shared quota replicas use), driven tick by
tick on a fake clock (``tests/unit/test_runner.py``): every figure is in poll counts and virtual
seconds, never in wall-clock time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from adapters.base import StatusReport
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.policy import PollPolicy
from gateway.quota import Quota, SharedQuota
from gateway.runner import Runner
from gateway.states import JobState
from gateway.store.base import JobStore, NewEvent
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.conftest import fresh_schema
from tests.unit.store.factories import make_job
from tests.unit.test_runner import T0, FakeClock, ScriptedAdapter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROVIDER = "p"
FLOOD = 2000
"""Tenant ``a``'s jobs, all due at once."""
PER_TICK = 20
"""The provider's rate (per second, one tick) and concurrency: the polls one tick can make."""
INTERVAL = 10.0
"""Every job is due again this long after each poll."""
TICK = 1.0
"""Virtual seconds between ticks: one tick refills the bucket exactly."""
TICKS = 60
POLICY = PollPolicy(
    first_delay=INTERVAL,
    min_interval=INTERVAL,
    max_interval=INTERVAL,
    multiplier=1.0,
    jitter=0.0,
    deadline=86_400.0,
    rate_per_second=PER_TICK / TICK,
    burst=PER_TICK,
    concurrency=PER_TICK,
    eta_aware=False,
)


@dataclass
class Poll:
    at: float
    """Virtual seconds after T0."""
    upstream_id: str

    @property
    def tick(self) -> int:
        return round(self.at / TICK)


class RecordingAdapter(ScriptedAdapter):
    """Every status call, in order, into ``polls`` (shared by the providers), with the virtual
    time it was made; every job stays running."""

    def __init__(self, name: str, clock: FakeClock, polls: list[Poll]) -> None:
        super().__init__(name)
        self.clock = clock
        self.polls = polls

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        self.polls.append(Poll((self.clock.now - T0).total_seconds(), upstream_id))
        return StatusReport(upstream_id, JobState.RUNNING, "running")


def running_job(
    job_id: str, tenant: str, upstream_id: str, due: datetime, provider: str = PROVIDER
) -> Job:
    started = T0 - timedelta(minutes=5)
    return make_job(
        id=job_id,
        provider=provider,
        upstream_id=upstream_id,
        state=JobState.RUNNING,
        created_at=started,
        updated_at=started,
        deadline_at=T0 + timedelta(days=1),
        tenant=tenant,
        native_status="running",
        started_at=started,
        next_poll_at=due,
    )


StoreKind = str


@asynccontextmanager
async def opened_store(
    kind: StoreKind,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    policies: Mapping[str, PollPolicy],
) -> AsyncIterator[tuple[JobStore, Quota | None]]:
    """The store under test, open, and the quota the runner uses with it (``None``: the runner's
    own buckets, as one process has)."""
    if kind == "memory":
        yield MemoryStore(), None
        return
    if kind == "sqlite":
        sqlite = SqliteStore(tmp_path / "fair.db")
        await sqlite.open()
        try:
            yield sqlite, None
        finally:
            await sqlite.close()
        return
    dsn: str = request.getfixturevalue("postgres_dsn")  # skips when no server answers
    async with fresh_schema(dsn) as schema:
        postgres = PostgresStore(dsn, schema=schema)
        await postgres.open()
        try:
            shared = kind == "postgres-shared"
            yield postgres, SharedQuota(postgres.quota, policies) if shared else None
        finally:
            await postgres.close()


async def load(store: JobStore, jobs: list[Job]) -> None:
    """Create the jobs in bulk (each store has ``_create_many``; what the runner sees is the
    same as after one ``create`` each)."""
    items: list[tuple[Job, list[NewEvent]]] = [(job, []) for job in jobs]
    assert isinstance(store, MemoryStore | SqliteStore | PostgresStore)
    await store._create_many(items)


@dataclass
class Run:
    polls: list[Poll]
    claims: list[int]
    b_due_first: float

    def b_polls(self) -> list[Poll]:
        return [poll for poll in self.polls if poll.upstream_id == "b-0"]

    def a_polls(self) -> list[Poll]:
        return [poll for poll in self.polls if poll.upstream_id != "b-0"]


async def run_ticks(
    store: JobStore,
    quota: Quota | None,
    policies: Mapping[str, PollPolicy],
    ticks: int,
) -> tuple[list[Poll], list[int]]:
    """The real runner, one step and drain per tick, the fake clock moved a tick after each:
    every poll made, in order, and the claims of each tick."""
    clock = FakeClock()
    polls: list[Poll] = []
    runner = Runner(
        store,
        {name: RecordingAdapter(name, clock, polls) for name in policies},
        policies,
        EventHub(),
        tick=0.01,
        batch=500,
        clock=clock.wall,
        mono=clock.monotonic,
        rand=lambda: 0.5,
        quota=quota,
    )
    claims: list[int] = []
    for _ in range(ticks):
        claims.append(await runner.step())
        await runner.drain()
        clock.advance(TICK)
    await runner.stop()
    return polls, claims


async def run_flood(
    kind: StoreKind, b_due: float, tmp_path: Path, request: pytest.FixtureRequest
) -> Run:
    policies = {PROVIDER: POLICY}
    async with opened_store(kind, tmp_path, request, policies) as (store, quota):
        # ``a``'s flood, due a second before the run starts; ``b``'s job, made after it and due
        # ``b_due`` s into the run: last of all by due time and by id.
        flood = [
            running_job(f"job_a{n:05d}", "a", f"a-{n}", T0 - timedelta(seconds=1))
            for n in range(FLOOD)
        ]
        await load(store, flood)
        await load(store, [running_job("job_b00000", "b", "b-0", T0 + timedelta(seconds=b_due))])
        polls, claims = await run_ticks(store, quota, policies, TICKS)
    return Run(polls, claims, b_due)


STORES = [
    "memory",
    "sqlite",
    pytest.param("postgres", id="postgres"),
    pytest.param("postgres-shared", id="postgres-shared-quota"),
]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("b_due", [0.0, 30.5], ids=["b-due-at-start", "b-due-mid-backlog"])
async def test_a_flood_of_one_tenant_does_not_delay_another_tenants_polls(
    kind: StoreKind, b_due: float, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    run = await run_flood(kind, b_due, tmp_path, request)
    b_polls = run.b_polls()
    a_polls = run.a_polls()

    # The premise: the quota binds on every tick (20 polls, never more), so ``a``'s 2,000 jobs
    # need 100 ticks to go round once, longer than the whole run.
    assert run.claims == [PER_TICK] * TICKS, run.claims
    assert len(run.polls) == PER_TICK * TICKS

    # ``b``'s first poll is in the first claim after it fell due: the tick at or after its due
    # time, however many of ``a``'s jobs were due before it.
    first_tick = math.ceil(b_due / TICK)
    assert b_polls, f"b was never polled in {TICKS} ticks; a was polled {len(a_polls)} times"
    first = b_polls[0]
    polls_before = run.polls.index(first)
    print(  # the figures (pytest -s)
        f"\n[{kind}] b due at {b_due:.1f} s: first polled at {first.at:.1f} s (lateness "
        f"{first.at - b_due:.1f} s, tick {first.tick}), after {polls_before} of a's polls; "
        f"a still had {FLOOD - len({p.upstream_id for p in a_polls[:polls_before]})} of its "
        f"{FLOOD} jobs never polled"
    )
    assert first.tick == first_tick, (first, b_due)
    assert polls_before < PER_TICK * (first_tick + 1)
    # ... while most of ``a``'s flood was still waiting (so the claim order is what mattered).
    assert PER_TICK * (first_tick + 1) < FLOOD // 2

    # And every time it fell due again: each poll within one tick of INTERVAL after the last.
    expected_polls = math.floor((TICKS - 1 - first_tick) * TICK / INTERVAL) + 1
    assert len(b_polls) == expected_polls, [p.at for p in b_polls]
    pairs = itertools.pairwise(b_polls)
    lateness = [later.at - (earlier.at + INTERVAL) for earlier, later in pairs]
    assert all(0 <= late < TICK for late in lateness), lateness

    # ``a`` lost nothing but ``b``'s turns: every other poll was its, soonest due first (each of
    # its jobs polled once before any was polled twice), so its order within itself stands.
    assert len(a_polls) == PER_TICK * TICKS - len(b_polls)
    ids = [poll.upstream_id for poll in a_polls]
    assert len(set(ids)) == len(ids), "an a job was polled twice while others had waited longer"


SMALL = 4
"""The second provider's polls per tick: a cap the flood alone could fill many times over."""


@pytest.mark.parametrize("kind", STORES)
async def test_each_providers_cap_is_shared_out_by_turns(
    kind: StoreKind, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``a`` floods two providers, ``p`` (20 a tick) and ``q`` (4 a tick); ``b`` has one job on
    each, due after all of ``a``'s. ``q``'s small cap is shared out by turns too: ``b``'s ``q``
    job is among the first 4, not behind ``a``'s 1,000."""
    policies = {
        "p": POLICY,
        "q": replace(POLICY, rate_per_second=SMALL / TICK, burst=SMALL, concurrency=SMALL),
    }
    ticks = 25
    async with opened_store(kind, tmp_path, request, policies) as (store, quota):
        # ``a``'s jobs alternate between the providers in id order, so its ``q`` jobs are in
        # every other turn; ``b``'s come after all of them by due time and by id.
        flood = [
            running_job(
                f"job_a{n:05d}{provider}",
                "a",
                f"a-{provider}-{n}",
                T0 - timedelta(seconds=1),
                provider,
            )
            for provider in ("p", "q")
            for n in range(FLOOD // 2)
        ]
        await load(store, flood)
        await load(
            store,
            [running_job(f"job_b0000{p}", "b", f"b-{p}", T0, p) for p in ("p", "q")],
        )
        polls, claims = await run_ticks(store, quota, policies, ticks)

    # The premise: both caps bind on every tick.
    assert claims == [PER_TICK + SMALL] * ticks, claims
    for provider in ("p", "q"):
        mine = [poll for poll in polls if poll.upstream_id.split("-")[1] == provider]
        b_polls = [poll.at for poll in mine if poll.upstream_id.startswith("b-")]
        cap = PER_TICK if provider == "p" else SMALL
        print(f"\n[{kind}] provider {provider} ({cap} a tick): b polled at {b_polls}")
        # Polled in the first tick, then every INTERVAL, within a tick.
        assert b_polls[:1] == [0.0], (provider, b_polls)
        assert len(b_polls) == math.floor((ticks - 1) * TICK / INTERVAL) + 1, b_polls
        assert all(
            0 <= later - (earlier + INTERVAL) < TICK
            for earlier, later in itertools.pairwise(b_polls)
        ), b_polls
        # ``a`` had the rest of the cap, soonest first, none of its jobs twice.
        a_ids = [poll.upstream_id for poll in mine if poll.upstream_id.startswith("a-")]
        assert len(a_ids) == cap * ticks - len(b_polls)
        assert len(set(a_ids)) == len(a_ids)
