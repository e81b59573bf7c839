"""A provider's rate limit and concurrency shared by every replica: one token bucket row each.

With one process, buckets in memory are the limit. With several replicas each would spend the
whole configured rate, so the bucket lives in the database.

:meth:`PostgresQuota.claim` is how the runner claims: in one transaction it locks the buckets of
the providers that have due jobs, refills them for the time elapsed, and leases no more due jobs
than their tokens and the deployment's free concurrency allow (concurrency counts the provider's
jobs under a lease, read after the locks, so two replicas cannot both take the same free slot),
charging the buckets for exactly the jobs leased. Providers with nothing due cost one read.

:meth:`PostgresQuota.acquire` takes single tokens for the extra calls a poll may make (partial
records). Its arithmetic is :func:`grant`, pure, with time passed in; the claim does the same
arithmetic in SQL (``sql.CLAIM_WITHIN_QUOTA``), inside the statement that leases the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.jobs import Job
from gateway.store.base import QuotaWant
from gateway.store.postgres import rows
from gateway.store.postgres.driver import Pool
from gateway.store.postgres.listen import notify_jobs
from gateway.store.postgres.sql import (
    ASYNC_COMMIT,
    CLAIM_WITHIN_QUOTA,
    DUE_PROVIDERS,
    LOCK_QUOTA,
    LOCK_QUOTAS,
    SAVE_QUOTA,
)


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    tokens: float
    """What the bucket holds after the grant."""
    stamp: datetime
    """The time the bucket is refilled up to: never moves back, so a replica whose clock lags
    cannot refill the same seconds twice."""


def grant(
    tokens: float,
    stamp: datetime,
    now: datetime,
    *,
    want: int,
    rate: float,
    burst: int,
    concurrency: int,
    leased: int,
) -> Grant:
    """Refill a bucket holding ``tokens`` as of ``stamp`` up to ``now`` and take up to ``want``
    whole tokens, no more than the ``concurrency`` not already ``leased``."""
    elapsed = max(0.0, (now - stamp).total_seconds())
    refilled = min(float(burst), tokens + elapsed * rate)
    granted = max(0, min(want, math.floor(refilled), concurrency - leased))
    return Grant(granted=granted, tokens=refilled - granted, stamp=max(stamp, now))


class PostgresQuota:
    """The shared buckets, on the store's pool (``PostgresStore.quota``)."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self._pool = pool

    async def acquire(
        self,
        provider: str,
        want: int,
        *,
        rate: float,
        burst: int,
        concurrency: int,
        now: datetime,
    ) -> int:
        """Up to ``want`` calls to ``provider`` that may go out now, deployment-wide; never waits
        for tokens (only, briefly, for another replica's acquire of the same provider)."""
        if want < 1:
            return 0
        async with self._pool().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_QUOTA, provider, float(burst), now, now)
            if row is None:  # an upsert with RETURNING always answers one row
                raise RuntimeError(f"no quota row for {provider}")
            taken = grant(
                float(row[0]),
                row[1],
                now,
                want=want,
                rate=rate,
                burst=burst,
                concurrency=concurrency,
                leased=int(row[2]),
            )
            await conn.execute(SAVE_QUOTA, provider, taken.tokens, taken.stamp)
        return taken.granted

    async def claim(
        self, now: datetime, wants: Sequence[QuotaWant], *, lease_until: datetime, owner: str
    ) -> list[Job]:
        """Lease due jobs, soonest first, no more of each provider than its ``want``, its tokens
        and its free concurrency allow now (see the module's docstring)."""
        wanted = [w for w in wants if w.want > 0]
        if not wanted:
            return []
        async with self._pool().acquire() as conn:
            names = [w.provider for w in wanted]
            due = {str(row[0]) for row in await conn.fetch(DUE_PROVIDERS, names, now)}
            wanted = [w for w in wanted if w.provider in due]
            if not wanted:
                return []
            names = [w.provider for w in wanted]
            async with conn.transaction():
                await conn.execute(ASYNC_COMMIT)
                await conn.execute(LOCK_QUOTAS, names, [float(w.burst) for w in wanted], now)
                claimed = await conn.fetch(
                    CLAIM_WITHIN_QUOTA,
                    now,
                    lease_until,
                    owner,
                    names,
                    [w.want for w in wanted],
                    [float(w.rate) for w in wanted],
                    [float(w.burst) for w in wanted],
                    [w.concurrency for w in wanted],
                )
                jobs = [rows.job(row) for row in claimed]
                await notify_jobs(conn, [job.id for job in jobs])
        return jobs
