"""Bringing a schema up to date, safely when several replicas start at once.

Every step runs under one transaction-scoped advisory lock named after the schema: a replica that
arrives second waits, then finds the work done. Each migration is its own transaction, so a
failure leaves the schema at the last whole migration and the next start resumes from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.migrations import Migration, pending
from gateway.store.postgres.driver import Connection
from gateway.store.postgres.sql import (
    CREATE_SCHEMA,
    CREATE_SCHEMA_MIGRATIONS,
    LOCK_MIGRATIONS,
    MIGRATIONS,
    RECORD_MIGRATION,
    SELECT_APPLIED_MIGRATIONS,
)


async def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Create the connection's schema if missing and apply what it lacks; the answer is the
    numbers applied by this call (empty when another replica, or an earlier start, did it)."""
    async with conn.transaction():
        await conn.execute(LOCK_MIGRATIONS)
        await conn.execute(CREATE_SCHEMA)
        await conn.execute(CREATE_SCHEMA_MIGRATIONS)
    applied: list[int] = []
    while True:
        async with conn.transaction():
            await conn.execute(LOCK_MIGRATIONS)
            done = [int(row[0]) for row in await conn.fetch(SELECT_APPLIED_MIGRATIONS)]
            todo = pending(migrations, done)
            if not todo:
                return applied
            migration = todo[0]
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(RECORD_MIGRATION, migration.number, migration.name)
        applied.append(migration.number)
