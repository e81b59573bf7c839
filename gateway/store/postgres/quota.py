"""A provider's rate limit and concurrency shared by every replica: one token bucket row each.

With one process, buckets in memory are the limit. With several replicas each would spend the
whole configured rate, so the bucket lives in the database: an acquire locks the provider's row,
refills it for the time elapsed, grants what the tokens and the free concurrency allow, and saves
it, all in one transaction. The arithmetic is :func:`grant`, pure, with time passed in.

Concurrency counts the provider's jobs under a lease (claimed and not yet saved). A grant is
turned into claims only after its transaction commits, so two replicas acquiring in the same
instant may both see the same free slots: tokens bound the rate strictly, concurrency to within
one claim batch per replica.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.store.postgres.driver import Pool
from gateway.store.postgres.sql import LOCK_QUOTA, REFUND_QUOTA, SAVE_QUOTA


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

    async def refund(self, provider: str, tokens: int) -> None:
        """Give back tokens acquired but not spent (fewer jobs were due than granted)."""
        if tokens < 1:
            return
        async with self._pool().acquire() as conn:
            await conn.execute(REFUND_QUOTA, provider, float(tokens))
