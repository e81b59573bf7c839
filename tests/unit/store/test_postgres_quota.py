"""The shared provider quota: the configured rate and concurrency are the whole deployment's."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

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


async def test_refunds_come_back_capped_at_the_burst(pg_stores: PgStores) -> None:
    store = await pg_stores()
    assert await acquire(store, 9) == 5
    assert await acquire(store, 9) == 0
    await store.quota.refund("pulse", 2)
    assert await acquire(store, 9) == 2
    await store.quota.refund("pulse", 100)
    assert await acquire(store, 9) == 5
    await store.quota.refund("never-asked", 3)  # no bucket yet: nothing to give back to
    assert await acquire(store, 0) == 0


@pytest.mark.parametrize("want", [0, -1])
async def test_wanting_nothing_grants_nothing(pg_stores: PgStores, want: int) -> None:
    store = await pg_stores()
    assert await acquire(store, want) == 0
    assert await acquire(store, 9) == 5  # and spent nothing
