"""The shared provider quota: the configured rate and concurrency are the whole deployment's."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from gateway.jobs import Job
from gateway.store.base import QuotaWant
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.quota import grant
from tests.support import bumped
from tests.unit.store.conftest import PgStores
from tests.unit.store.factories import LEASE, T0, create_all, make_job

SECOND = timedelta(seconds=1)

# -- the arithmetic, pure ----------------------------------------------------------------------


def test_a_grant_refills_for_the_time_elapsed_and_keeps_fractions() -> None:
    taken = grant(0.5, T0, T0 + SECOND / 4, want=5, rate=10, burst=5, concurrency=9, leased=0)
    assert (taken.granted, taken.tokens, taken.stamp) == (3, 0.0, T0 + SECOND / 4)
    taken = grant(0.0, T0, T0 + SECOND / 20, want=5, rate=10, burst=5, concurrency=9, leased=0)
    assert (taken.granted, taken.tokens) == (0, 0.5)


def test_a_grant_never_exceeds_the_burst_the_want_or_the_free_concurrency() -> None:
    full = grant(5.0, T0, T0 + 60 * SECOND, want=99, rate=10, burst=5, concurrency=99, leased=0)
    assert (full.granted, full.tokens) == (5, 0.0)
    wanted = grant(5.0, T0, T0, want=2, rate=10, burst=5, concurrency=99, leased=0)
    assert (wanted.granted, wanted.tokens) == (2, 3.0)
    busy = grant(5.0, T0, T0, want=5, rate=10, burst=5, concurrency=4, leased=3)
    assert (busy.granted, busy.tokens) == (1, 4.0)
    overfull = grant(5.0, T0, T0, want=5, rate=10, burst=5, concurrency=4, leased=6)
    assert (overfull.granted, overfull.tokens) == (0, 5.0)


def test_a_clock_behind_the_stamp_refills_nothing_and_moves_nothing_back() -> None:
    taken = grant(1.0, T0, T0 - 10 * SECOND, want=5, rate=10, burst=5, concurrency=9, leased=0)
    assert (taken.granted, taken.tokens, taken.stamp) == (1, 0.0, T0)


# -- against the database ----------------------------------------------------------------------


async def acquire(
    store: PostgresStore,
    want: int,
    *,
    rate: float = 10.0,
    burst: int = 5,
    concurrency: int = 100,
    now: datetime = T0,
) -> int:
    return await store.quota.acquire(
        "pulse", want, rate=rate, burst=burst, concurrency=concurrency, now=now
    )


async def test_replicas_together_never_exceed_the_configured_rate(pg_stores: PgStores) -> None:
    replicas = [await pg_stores() for _ in range(3)]
    step = timedelta(milliseconds=50)  # each replica asks every 50 ms of virtual time, out of step

    async def ask(store: PostgresStore, offset: timedelta) -> int:
        granted = 0
        for n in range(200):  # 10 virtual seconds
            granted += await acquire(store, 3, now=T0 + offset + n * step)
        return granted

    totals = await asyncio.gather(
        *(ask(store, n * timedelta(milliseconds=17)) for n, store in enumerate(replicas))
    )
    # The burst, plus 10 tokens a second for the (just under) 10 seconds that passed.
    assert sum(totals) <= 5 + 10 * 10
    # And the rate is there to be had, not lost between replicas. (How it splits between them
    # is not fixed: each replica's clock runs at its own pace, and one that runs ahead refills
    # the bucket up to its own time, leaving nothing for the seconds the others are behind.)
    assert sum(totals) >= 95


async def test_leased_jobs_take_up_the_concurrency_until_saved_or_expired(
    pg_stores: PgStores,
) -> None:
    a, b = await pg_stores(), await pg_stores()
    jobs = [make_job(next_poll_at=T0) for _ in range(3)]
    await create_all(a, [*jobs, make_job(provider="catchall", next_poll_at=T0)])
    claimed = await a.claim_due(
        T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 2, "catchall": 1}
    )
    pulse = [job for job in claimed if job.provider == "pulse"]
    assert (len(claimed), len(pulse)) == (3, 2)
    # 3 allowed, 2 in flight (the catchall job, claimed too, is another provider's).
    assert await acquire(b, 10, concurrency=3, burst=100) == 1
    await a.save_many([(bumped(pulse[0], T0, next_poll_at=T0 + SECOND), [])])
    assert await acquire(b, 10, concurrency=3, burst=100) == 2
    # Once its lease has run out, a claim no longer holds a slot (its poll is presumed dead).
    assert await acquire(b, 10, concurrency=3, burst=100, now=T0 + LEASE + SECOND) == 3


@pytest.mark.parametrize("want", [0, -1])
async def test_wanting_nothing_grants_nothing(pg_stores: PgStores, want: int) -> None:
    store = await pg_stores()
    assert await acquire(store, want) == 0
    assert await acquire(store, 9) == 5  # and spent nothing


# -- claims within the quota -------------------------------------------------------------------


async def claim(
    store: PostgresStore,
    want: int,
    *,
    provider: str = "pulse",
    rate: float = 10.0,
    burst: int = 5,
    concurrency: int = 100,
    now: datetime = T0,
) -> list[Job]:
    wants = [QuotaWant(provider, want, rate, burst, concurrency)]
    return await store.quota.claim(now, wants, lease_until=now + LEASE, owner="test")


async def test_a_claim_leases_no_more_jobs_than_tokens_and_charges_only_what_it_leased(
    pg_stores: PgStores,
) -> None:
    store = await pg_stores()
    jobs = [make_job(next_poll_at=T0 - n * SECOND) for n in range(10)]
    await create_all(store, jobs)
    first = await claim(store, 9)
    assert [job.id for job in first] == [job.id for job in reversed(jobs)][:5]  # soonest first
    assert all(job.next_poll_at == T0 + LEASE and job.version == 2 for job in first)
    assert await claim(store, 9) == []  # the burst is spent
    assert len(await claim(store, 9, now=T0 + SECOND)) == 5  # 10/s refilled it
    # Fewer due than tokens: only what was leased is charged.
    assert await claim(store, 9, now=T0 + 2 * SECOND) == []
    assert await acquire(store, 9, now=T0 + 2 * SECOND) == 5


async def test_replicas_claiming_at_once_never_pass_the_concurrency(pg_stores: PgStores) -> None:
    replicas = [await pg_stores() for _ in range(3)]
    await create_all(replicas[0], [make_job(next_poll_at=T0) for _ in range(20)])
    for _ in range(3):
        claimed = await asyncio.gather(
            *(claim(store, 10, burst=100, concurrency=4) for store in replicas)
        )
        assert sum(len(batch) for batch in claimed) == 4  # exactly the free slots, never more
        assert len({job.id for batch in claimed for job in batch}) == 4
        # The polls end: the jobs are saved and their slots free again.
        for batch in claimed:
            await replicas[0].save_many(
                [(bumped(job, T0, next_poll_at=T0 + LEASE), []) for job in batch]
            )


async def test_a_provider_with_nothing_due_costs_no_bucket(pg_stores: PgStores) -> None:
    store = await pg_stores()
    await create_all(store, [make_job(next_poll_at=T0 + SECOND)])
    assert await claim(store, 5) == []
    assert await claim(store, 5, provider="catchall") == []
    # Nothing was due, so no bucket was made or charged: the whole burst is still there.
    assert await acquire(store, 9, now=T0) == 5


async def test_a_claims_grant_is_shared_out_between_tenants_in_turns(pg_stores: PgStores) -> None:
    store = await pg_stores()
    backlog = [make_job(tenant="acme", next_poll_at=T0 - (100 - n) * SECOND) for n in range(50)]
    late = make_job(tenant="globex", next_poll_at=T0 - SECOND)
    await create_all(store, [*backlog, late])
    first = await claim(store, 3)
    # acme's soonest, globex's only one, then acme's second: no tenant waits out another's backlog.
    assert [job.id for job in first] == [backlog[0].id, backlog[1].id, late.id]
    assert await store.get(backlog[2].id, "acme") == backlog[2]  # left due and unchanged


async def test_a_due_job_behind_many_idle_tenants_is_found(pg_stores: PgStores) -> None:
    store = await pg_stores()
    idle = [make_job(tenant=f"t{n:02d}", next_poll_at=T0 + SECOND) for n in range(20)]
    [due] = [make_job(tenant="zz-last", next_poll_at=T0)]
    await create_all(store, [*idle, due])
    assert [job.id for job in await claim(store, 5)] == [due.id]
    # With nothing due now (the idle tenants' jobs come due later), nothing more is charged.
    assert await claim(store, 5) == []
    assert await acquire(store, 9) == 4  # one token went to the job claimed, none since
