"""A provider's upstream budget: tokens of its rate limit, spent when a job is claimed.

A claim takes a token for every job it claims, so a claimed job can be polled at once and never
waits for a token past its lease (a wait that let the lease run out made another claim, and the
first poll's answer was then fenced away: a wasted upstream call).

:class:`LocalQuota` is one process's buckets. With several replicas the store provides a shared
quota (PostgreSQL: a row per provider), so the configured rate is the whole deployment's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from gateway.policy import Bucket, PollPolicy, give_back, take_tokens


class Quota(Protocol):
    async def acquire(self, provider: str, want: int, *, now: datetime) -> int:
        """Up to ``want`` calls that may go out now (never waits); at least 0."""
        ...

    async def refund(self, provider: str, tokens: int) -> None:
        """Give back tokens acquired but not spent."""
        ...


class LocalQuota:
    """Token buckets in this process (the embedded store: one process owns the file)."""

    def __init__(
        self, policies: Mapping[str, PollPolicy], mono: Callable[[], float] = time.monotonic
    ) -> None:
        self.policies = policies
        self.mono = mono
        start = mono()
        self.buckets = {name: Bucket(float(p.burst), start) for name, p in policies.items()}

    async def acquire(self, provider: str, want: int, *, now: datetime) -> int:
        return self.take(provider, want)

    async def refund(self, provider: str, tokens: int) -> None:
        if tokens > 0:
            policy = self.policies[provider]
            self.buckets[provider] = give_back(policy, self.buckets[provider], tokens)

    def take(self, provider: str, want: int) -> int:
        """Synchronous :meth:`acquire`: for the extra calls a poll may make (partial records)."""
        policy = self.policies[provider]
        self.buckets[provider], granted = take_tokens(
            policy, self.buckets[provider], want, self.mono()
        )
        return granted


class QuotaRows(Protocol):
    """A store's shared buckets (PostgreSQL: a row per provider, locked while it is spent)."""

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

    async def refund(self, provider: str, tokens: int) -> None: ...


class SharedQuota:
    """The deployment's quota, kept in the store: every replica spends from the same buckets, so
    a provider sees the configured rate and concurrency however many replicas run."""

    def __init__(self, rows: QuotaRows, policies: Mapping[str, PollPolicy]) -> None:
        self.rows = rows
        self.policies = policies

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

    async def refund(self, provider: str, tokens: int) -> None:
        if tokens > 0:
            await self.rows.refund(provider, tokens)
