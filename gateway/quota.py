"""A provider's upstream budget, spent when jobs are claimed: its rate (token bucket) and its
concurrency.

A claim takes a token for every job it claims, so a claimed job can be polled at once and never
waits for a token past its lease (a wait that let the lease run out made another claim, and the
first poll's answer was then fenced away: a wasted upstream call).

:class:`LocalQuota` is one process's buckets. With several replicas the store keeps the buckets
(:class:`SharedQuota` over PostgreSQL: a row per provider), so the configured rate and
concurrency are the whole deployment's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from gateway.jobs import Job
from gateway.policy import Bucket, PollPolicy, give_back, take_tokens
from gateway.store.base import JobRows, QuotaWant


class Quota(Protocol):
    async def claim(
        self,
        store: JobRows,
        now: datetime,
        wants: Mapping[str, int],
        *,
        lease_until: datetime,
        owner: str,
    ) -> list[Job]:
        """Claim due jobs, at most ``wants[p]`` of provider ``p``, and no more than its tokens
        (and, where shared, its free concurrency) let go out now."""
        ...

    async def acquire(self, provider: str, want: int, *, now: datetime) -> int:
        """Up to ``want`` extra calls that may go out now (never waits); at least 0."""
        ...


class LocalQuota:
    """Token buckets in this process (the embedded store: one process owns the file). The
    runner's own count of polls in flight is the concurrency."""

    def __init__(
        self, policies: Mapping[str, PollPolicy], mono: Callable[[], float] = time.monotonic
    ) -> None:
        self.policies = policies
        self.mono = mono
        start = mono()
        self.buckets = {name: Bucket(float(p.burst), start) for name, p in policies.items()}

    async def claim(
        self,
        store: JobRows,
        now: datetime,
        wants: Mapping[str, int],
        *,
        lease_until: datetime,
        owner: str,
    ) -> list[Job]:
        granted = {name: self._take(name, want) for name, want in wants.items()}
        granted = {name: tokens for name, tokens in granted.items() if tokens > 0}
        if not granted:
            return []
        claimed = await store.claim_due(
            now,
            limit=sum(granted.values()),
            lease_until=lease_until,
            per_provider=granted,
            owner=owner,
        )
        for job in claimed:
            granted[job.provider] -= 1
        for name, unspent in granted.items():  # fewer jobs were due than tokens taken
            if unspent > 0:
                policy = self.policies[name]
                self.buckets[name] = give_back(policy, self.buckets[name], unspent)
        return claimed

    async def acquire(self, provider: str, want: int, *, now: datetime) -> int:
        return self._take(provider, want)

    def _take(self, provider: str, want: int) -> int:
        policy = self.policies[provider]
        self.buckets[provider], granted = take_tokens(
            policy, self.buckets[provider], want, self.mono()
        )
        return granted


class QuotaRows(Protocol):
    """A store's shared buckets (PostgreSQL: a row per provider, locked while it is spent)."""

    async def claim(
        self, now: datetime, wants: Sequence[QuotaWant], *, lease_until: datetime, owner: str
    ) -> list[Job]: ...

    async def acquire(
        self,
        provider: str,
        want: int,
        *,
        rate: float,
        burst: int,
        concurrency: int,
        now: datetime,
    ) -> int: ...


class SharedQuota:
    """The deployment's quota, kept in the store: every replica spends from the same buckets, so
    a provider sees the configured rate and concurrency however many replicas run."""

    def __init__(self, rows: QuotaRows, policies: Mapping[str, PollPolicy]) -> None:
        self.rows = rows
        self.policies = policies

    async def claim(
        self,
        store: JobRows,
        now: datetime,
        wants: Mapping[str, int],
        *,
        lease_until: datetime,
        owner: str,
    ) -> list[Job]:
        # ``store`` is the database the rows live in: the claim and the charge are one transaction.
        limits = [
            QuotaWant(
                name,
                want,
                self.policies[name].rate_per_second,
                self.policies[name].burst,
                self.policies[name].concurrency,
            )
            for name, want in wants.items()
        ]
        return await self.rows.claim(now, limits, lease_until=lease_until, owner=owner)

    async def acquire(self, provider: str, want: int, *, now: datetime) -> int:
        policy = self.policies[provider]
        return await self.rows.acquire(
            provider,
            want,
            rate=policy.rate_per_second,
            burst=policy.burst,
            concurrency=policy.concurrency,
            now=now,
        )
