"""The numbered-migrations mechanism, apart from any database."""

from __future__ import annotations

import pytest

from gateway.store.migrations import Migration, SchemaTooNew, check_numbering, pending
from gateway.store.postgres.sql import MIGRATIONS as POSTGRES_MIGRATIONS
from gateway.store.sqlite_sql import MIGRATIONS as SQLITE_MIGRATIONS

ONE = Migration(1, "first", ("CREATE TABLE a (x int)",))
TWO = Migration(2, "second", ("CREATE TABLE b (x int)", "CREATE INDEX b_x ON b (x)"))
THREE = Migration(3, "third", ("DROP TABLE a",))


def test_pending_is_what_the_database_lacks_in_order() -> None:
    assert pending([ONE, TWO, THREE], []) == [ONE, TWO, THREE]
    assert pending([ONE, TWO, THREE], [1]) == [TWO, THREE]
    assert pending([ONE, TWO, THREE], {3, 1}) == [TWO]
    assert pending([ONE, TWO, THREE], (1, 2, 3)) == []
    assert pending([], []) == []


def test_a_database_migrated_by_newer_code_is_refused() -> None:
    with pytest.raises(SchemaTooNew, match=r"\[4\].*1\.\.3"):
        pending([ONE, TWO, THREE], [1, 2, 3, 4])


@pytest.mark.parametrize(
    "migrations",
    [[TWO], [ONE, THREE], [ONE, ONE], [TWO, ONE], [Migration(0, "zero", ())]],
)
def test_numbering_must_be_one_to_n(migrations: list[Migration]) -> None:
    with pytest.raises(ValueError, match="numbered"):
        check_numbering(migrations)
    with pytest.raises(ValueError, match="numbered"):
        pending(migrations, [])


@pytest.mark.parametrize(
    "migrations", [POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS], ids=["postgres", "sqlite"]
)
def test_each_store_schema_is_numbered_and_every_migration_does_something(
    migrations: tuple[Migration, ...],
) -> None:
    check_numbering(migrations)
    assert all(m.statements and m.name for m in migrations)
