"""What the sandboxes' pushes share: one POST of a delivery, and the dispatcher's life in the app.

Three sandboxes push (extract's ``callbackUrl``, CatchAll's webhooks, Pulse's Svix-signed events),
each with its own bodies, targets and retry state; sending one attempt, and running a dispatcher
with its HTTP session for the application's life, are the same for all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import suppress
from typing import Protocol, TypeVar

import aiohttp
from aiohttp import web
from yarl import URL

from adapters.simulator import SandboxSettings


class Dispatcher(Protocol):
    session: aiohttp.ClientSession | None

    async def run(self) -> None: ...

    async def close(self) -> None: ...


D = TypeVar("D", bound=Dispatcher)


async def send(
    session: aiohttp.ClientSession,
    url: str | URL,
    body: bytes,
    headers: Mapping[str, str],
    *,
    method: str = "POST",
) -> tuple[str, int | None]:
    """One delivery attempt: ``("ok", status)`` for a 2xx, else what went wrong (``"HTTP 503"``,
    an exception's name) and the status if one came."""
    try:
        async with session.request(method, url, data=body, headers=dict(headers)) as response:
            await response.read()
            code = response.status
            return ("ok" if 200 <= code < 300 else f"HTTP {code}"), code
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, None


def retry_at(settings: SandboxSettings, first_delay: float, attempts: int) -> float:
    """When a delivery that failed ``attempts`` times is tried again: ``first_delay`` sandbox
    seconds after the first failure, doubled after each."""
    return settings.clock() + settings.scaled(first_delay * 2 ** (attempts - 1))


async def cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel deliveries in flight and wait for them to end."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def delivery_ctx(
    key: web.AppKey[D], timeout: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` that runs ``app[key]`` with a session of its own while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        dispatcher = app[key]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            dispatcher.session = session
            runner = asyncio.create_task(dispatcher.run())
            yield
            runner.cancel()
            with suppress(asyncio.CancelledError):
                await runner
            await dispatcher.close()
            dispatcher.session = None

    return ctx
