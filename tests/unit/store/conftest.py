"""The ``store`` fixture: every contract suite here runs against memory, SQLite and PostgreSQL.

SQLite runs twice: opened exclusively (``sqlite``, as the gateway opens it: claims are held in the
store's memory) and shared (``sqlite-shared``, as ``jobgate keys`` opens it: claims are written to
the rows), since the two keep claims differently and must keep the same contract.

PostgreSQL tests each get a schema of their own (``t_<uuid>``), dropped with everything in it
afterwards, so they share one database without seeing each other's rows. Without a server they
are skipped, not failed: the embedded stores need nothing but this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, get_args

import pytest

from gateway.store.base import JobStore, Signal
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.conftest import POSTGRES_DSN, fresh_schema

STORE_KINDS = ("memory", "sqlite", "sqlite-shared", "postgres")

PgStores = Callable[..., Awaitable[PostgresStore]]


class Heard:
    """A subscriber that records the signals it is given and lets a test wait for one."""

    def __init__(self, accept: Callable[[], bool] = lambda: True) -> None:
        self.signals: list[Signal] = []
        self._accept = accept
        self._arrived = {signal: asyncio.Event() for signal in get_args(Signal)}

    def __call__(self, signal: Signal) -> None:
        if self._accept():
            self.signals.append(signal)
            self._arrived[signal].set()

    async def wait_for(self, signal: Signal) -> None:
        await asyncio.wait_for(self._arrived[signal].wait(), timeout=5)


@pytest.fixture
async def pg_stores(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PgStores]:
    """Opens PostgresStores on this test's schema (several of them are replicas sharing one
    database); every one is closed afterwards, before the schema is dropped."""
    opened: list[PostgresStore] = []

    async def make(**options: Any) -> PostgresStore:
        store = PostgresStore(postgres_dsn, schema=pg_schema, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.close()


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgres":
        request.getfixturevalue("postgres_dsn")  # skips when there is no server
    return kind


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[JobStore]:
    if store_kind == "postgres":
        async with fresh_schema(POSTGRES_DSN) as schema:
            postgres = PostgresStore(POSTGRES_DSN, schema=schema)
            await postgres.open()
            try:
                yield postgres
            finally:
                await postgres.close()
        return
    impl: JobStore = (
        MemoryStore()
        if store_kind == "memory"
        else SqliteStore(tmp_path / "j.db", exclusive=store_kind == "sqlite")
    )
    await impl.open()
    yield impl
    await impl.close()
