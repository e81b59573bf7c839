"""Numbered schema migrations, for any store that keeps its schema in a database.

A store declares its schema as a tuple of :class:`Migration` numbered 1, 2, 3, ... and records
which numbers a database has applied (PostgreSQL: a ``schema_migrations`` table; SQLite could read
``PRAGMA user_version`` as "1..n applied"). :func:`pending` decides what is left to run; each store
applies one migration per transaction, under whatever lock keeps two processes from racing.

Append new migrations; never edit or renumber one that has shipped: a database that already ran
it would never see the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    number: int
    """1 for the first; each next one is one more (checked by :func:`check_numbering`)."""
    name: str
    """For operators reading the migrations table, not for the code."""
    statements: tuple[str, ...]
    """Run in order, in one transaction: a migration is applied whole or not at all."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer jobgate: running older code on it could corrupt it."""


def check_numbering(migrations: Sequence[Migration]) -> None:
    """Refuse a list with gaps, repeats or disorder: numbers are what databases record."""
    numbers = [migration.number for migration in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migrations must be numbered 1..{len(numbers)} in order, got {numbers}")


def pending(migrations: Sequence[Migration], applied: Iterable[int]) -> list[Migration]:
    """The migrations a database with ``applied`` still needs, in order.

    Raises :class:`SchemaTooNew` when the database has applied a number this code does not know.
    """
    check_numbering(migrations)
    done = set(applied)
    unknown = sorted(done - {migration.number for migration in migrations})
    if unknown:
        raise SchemaTooNew(
            f"the database has applied schema migrations {unknown}, but this jobgate knows only "
            f"1..{len(migrations)}: upgrade jobgate before pointing it at this database"
        )
    return [migration for migration in migrations if migration.number not in done]
