"""The slice of asyncpg this package uses, with types.

asyncpg ships no type information, so everything it returns is ``Any``. These protocols name the
few methods the store calls, so the rest of the package type-checks against them; values read from
a row are still ``Any`` and are converted where rows are decoded (``rows.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import asyncpg  # type: ignore[import-untyped]


class Record(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...


class Transaction(Protocol):
    async def __aenter__(self) -> Transaction: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def start(self) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


NotifyCallback = Callable[[Any, int, str, str], None]
"""asyncpg calls it with (connection, sender's backend pid, channel, payload)."""


class Connection(Protocol):
    async def execute(self, query: str, *args: Any) -> str:
        """Runs ``query``; the answer is the command tag, e.g. ``DELETE 3``."""
        ...

    async def fetch(self, query: str, *args: Any) -> list[Record]: ...

    async def fetchrow(self, query: str, *args: Any) -> Record | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> Transaction: ...

    def get_server_pid(self) -> int: ...

    async def add_listener(self, channel: str, callback: NotifyCallback) -> None: ...

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None: ...

    def is_closed(self) -> bool: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class Pool(Protocol):
    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


UniqueViolation: Final[type[Exception]] = asyncpg.UniqueViolationError

CONNECT_ERRORS: Final[tuple[type[Exception], ...]] = (
    OSError,  # refused, unreachable, no such host
    TimeoutError,
    asyncpg.PostgresError,  # refused by the server: password, database, permissions
    asyncpg.InterfaceError,  # includes a malformed DSN (ClientConfigurationError)
    ValueError,  # a DSN asyncpg cannot even parse (a port that is not a number)
)
"""What reaching a server can raise, for ``open()`` to report as the store being unavailable."""

CONNECTION_LOST: Final[tuple[type[Exception], ...]] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)
"""What a call on an established connection raises once the connection is gone."""

APPLICATION_NAME: Final = "jobgate"
"""Shown in ``pg_stat_activity``, so operators can tell the gateway's sessions apart."""


async def create_pool(
    dsn: str, *, schema: str, min_size: int, max_size: int, connect_timeout: float
) -> Pool:
    """A pool whose every connection resolves unqualified names in ``schema`` alone."""
    pool: Pool = await asyncpg.create_pool(
        dsn=dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        server_settings={
            "search_path": schema,
            "application_name": APPLICATION_NAME,
            # Every statement here is short and runs thousands of times a minute; JIT compiling
            # one costs tens of milliseconds, and the planner's overestimate of a claim's walk
            # through the tenants (a recursive CTE) is enough to cross jit_above_cost.
            "jit": "off",
        },
    )
    return pool


async def connect(dsn: str, *, connect_timeout: float) -> Connection:
    """One connection of its own, outside any pool (the listener's: it must stay put)."""
    conn: Connection = await asyncpg.connect(
        dsn=dsn,
        timeout=connect_timeout,
        server_settings={"application_name": APPLICATION_NAME + "-listen"},
    )
    return conn
