"""DSNs in messages: the password never appears, whatever form the DSN takes. No server needed."""

from __future__ import annotations

import traceback

import pytest

from gateway.store.base import StoreUnavailable
from gateway.store.postgres import PostgresStore, redact_dsn
from gateway.store.postgres.dsn import check_schema, unavailable


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("postgresql://jobgate:hunter2@db:5432/jobs", "postgresql://jobgate:***@db:5432/jobs"),
        ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        # A raw password holding the characters that end a userinfo elsewhere.
        ("postgresql://u:a@b/c:d@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:@host/db", "postgresql://u:***@host/db"),
        (
            "postgresql://h1:5432,h2:5433/db?user=u&password=hunter2&sslpassword=x",
            "postgresql://h1:5432,h2:5433/db?user=u&password=***&sslpassword=***",
        ),
        ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db password='hunter 2' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql:///test", "postgresql:///test"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


def test_a_reason_quoting_the_password_is_scrubbed_and_made_one_line() -> None:
    dsn = "postgresql://u:hunter%232@db/x"
    error = unavailable(dsn, ValueError("bad value 'hunter#2'\nsecond line hunter%232"))
    message = str(error)
    assert isinstance(error, StoreUnavailable)
    assert "hunter" not in message
    assert "\n" not in message
    assert message.startswith("PostgreSQL at postgresql://u:***@db/x is unavailable: ValueError")


async def test_a_closed_port_is_unavailable_in_one_line_without_the_password() -> None:
    store = PostgresStore("postgresql://jobgate:hunter2@127.0.0.1:1/test", connect_timeout=5)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    message = str(caught.value)
    assert "\n" not in message
    assert "postgresql://jobgate:***@127.0.0.1:1/test" in message
    assert "hunter2" not in "".join(traceback.format_exception(caught.value))
    assert await store.ping() is False
    await store.close()  # closing a store that never opened is harmless


async def test_a_dsn_the_driver_cannot_parse_is_unavailable_too() -> None:
    store = PostgresStore("postgresql://jobgate:hunter2@127.0.0.1:port/test", connect_timeout=5)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", 'x"; DROP TABLE jobs; --', "a" * 64])
def test_a_schema_must_be_a_plain_identifier(schema: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        PostgresStore("postgresql://h/db", schema=schema)


def test_a_schema_name_is_folded_as_postgresql_folds_unquoted_names() -> None:
    assert check_schema("Jobgate_Prod") == "jobgate_prod"
    assert PostgresStore("postgresql://h/db", schema="Tenant_A").schema == "tenant_a"
