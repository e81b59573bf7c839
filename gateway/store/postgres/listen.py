"""LISTEN/NOTIFY: one dedicated connection that hears what other replicas commit.

A notification reaches only the sessions listening when it is sent, so the listener keeps its own
connection outside the pool (a pooled connection is handed to other work and its LISTENs would go
with it). If that connection is lost, signals sent until it is back are lost for good: after a
reconnect every subscriber is told every kind at once, so it re-reads rather than waits for a
timer. A keepalive query finds connections that died without a word (a half-open TCP session
after a network partition), which no termination callback would report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, get_args

import structlog

from gateway.store.base import Signal
from gateway.store.postgres import driver
from gateway.store.postgres.driver import CONNECT_ERRORS, CONNECTION_LOST, Connection
from gateway.store.postgres.dsn import redact_dsn, unavailable
from gateway.store.postgres.sql import (
    DUE_CHANNEL,
    EVENTS_CHANNEL,
    JOBS_CHANNEL,
    KEYS_CHANNEL,
    NOTIFY_JOBS,
    NOTIFY_PAYLOAD_BYTES,
    PING,
    channel,
)

log = structlog.get_logger("jobgate.store")

_EVERY_SIGNAL: tuple[Signal, ...] = get_args(Signal)
_JITTER = random.Random()
"""Reconnect jitter, from a generator of its own (the random module's is everyone's)."""


class Listener:
    """Calls ``on_signal`` for each notification on the store's channels, and with every kind
    after any gap in listening."""

    def __init__(
        self,
        dsn: str,
        on_signal: Callable[[Signal], None],
        *,
        timeout: float,
        schema: str,
        backoff: tuple[float, float] = (0.1, 10.0),
        keepalive: float = 30.0,
        on_jobs: Callable[[Sequence[str] | None], None] = lambda job_ids: None,
    ) -> None:
        self._dsn = dsn
        self._on_signal = on_signal
        # Job ids travel in the payload (the other channels' payloads are only hints).
        self._on_jobs = on_jobs
        self._jobs_channel = channel(JOBS_CHANNEL, schema)
        # Only this schema's channels: other deployments in the database are not our business.
        self._signals: dict[str, Signal] = {
            channel(EVENTS_CHANNEL, schema): "events",
            channel(DUE_CHANNEL, schema): "due",
            channel(KEYS_CHANNEL, schema): "keys",
        }
        self._timeout = timeout
        self._backoff = backoff
        self._keepalive = keepalive
        self._conn: Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def server_pid(self) -> int | None:
        """The listening session's backend pid (operators and tests can find it by this)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def start(self) -> None:
        """Connect and LISTEN; errors propagate, so a store that cannot listen does not open."""
        if self._task is not None:
            return
        self._conn, self._lost = await self._listen()
        self._task = asyncio.create_task(self._watch(), name="jobgate-postgres-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.close()
            except CONNECTION_LOST:
                conn.terminate()

    async def _listen(self) -> tuple[Connection, asyncio.Event]:
        conn = await driver.connect(self._dsn, connect_timeout=self._timeout)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            for name in self._signals:
                await conn.add_listener(name, self._notified)
            await conn.add_listener(self._jobs_channel, self._jobs_notified)
        except BaseException:
            conn.terminate()
            raise
        return conn, lost

    def _notified(self, _conn: Any, _pid: int, name: str, _payload: str) -> None:
        signal = self._signals.get(name)
        if signal is not None:
            self._on_signal(signal)

    def _jobs_notified(self, _conn: Any, _pid: int, _name: str, payload: str) -> None:
        self._on_jobs(payload.split(",") if payload else [])

    async def _watch(self) -> None:
        while True:
            await self._until_lost()
            if self._conn is not None:
                self._conn.terminate()
            log.warning("store.listener_lost", dsn=redact_dsn(self._dsn))
            self._conn, self._lost = await self._reconnect()
            # Whatever was signalled during the gap is gone: have everyone re-read everything.
            for signal in _EVERY_SIGNAL:
                self._on_signal(signal)
            self._on_jobs(None)

    async def _until_lost(self) -> None:
        conn = self._conn
        if conn is None:
            return
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._keepalive)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.wait_for(conn.fetchval(PING), self._keepalive)
            except CONNECTION_LOST:
                return

    async def _reconnect(self) -> tuple[Connection, asyncio.Event]:
        delay, ceiling = self._backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                listening = await self._listen()
            except CONNECT_ERRORS as exc:
                # Jittered, so replicas that lost the server together do not return in lockstep.
                wait = delay * _JITTER.uniform(0.8, 1.2)
                log.warning(
                    "store.listener_reconnect_failed",
                    attempt=attempt,
                    retry_in=round(wait, 3),
                    reason=str(unavailable(self._dsn, exc)),
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, ceiling)
                continue
            log.info("store.listener_reconnected", dsn=redact_dsn(self._dsn), attempts=attempt)
            return listening


async def notify_jobs(conn: Connection, job_ids: Iterable[str]) -> None:
    """Tell every replica (this one too) that these jobs' rows changed, in payloads that fit."""
    chunk: list[str] = []
    size = 0
    for job_id in job_ids:
        if size + len(job_id) + 1 > NOTIFY_PAYLOAD_BYTES:
            await conn.execute(NOTIFY_JOBS, ",".join(chunk))
            chunk, size = [], 0
        chunk.append(job_id)
        size += len(job_id) + 1
    if chunk:
        await conn.execute(NOTIFY_JOBS, ",".join(chunk))
