"""The extract sandbox's callback dispatcher: a background task that POSTs finished jobs.

When a job submitted with ``callbackUrl`` ends, ``CallbackDispatcher`` POSTs ``{jobId, status,
result}`` to that URL. One task per application (started and stopped by ``callbacks_ctx``) wakes
up every ``CALLBACK_TICK`` sandbox seconds and delivers the callbacks that are due; a failed
delivery (connection error, timeout, non-2xx) is logged and retried with a doubling delay, at most
``CALLBACK_ATTEMPTS`` times in all. ``CallbackState`` is each job's record of its deliveries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.sandbox_delivery import cancel_all, delivery_ctx, retry_at, send
from adapters.simulator import SandboxSettings

if TYPE_CHECKING:
    from adapters.extract.sandbox_jobs import ExtractJob, JobStore

log = structlog.get_logger(__name__)

CALLBACK_TICK: Final = 0.05
"""Sandbox seconds between two wake-ups of the callback dispatcher (never under 10 ms real)."""
CALLBACK_ATTEMPTS: Final = 3
CALLBACK_RETRY_DELAY: Final = 5.0
"""Sandbox seconds before the first retry of a failed callback; doubled at each retry."""
CALLBACK_TIMEOUT: Final = 10.0
"""Real seconds a callback receiver has to answer."""
MIN_TICK: Final = 0.01


@dataclass
class CallbackState:
    attempts: int = 0
    delivered: bool = False
    in_flight: bool = False
    next_at: float = 0.0

    @property
    def gave_up(self) -> bool:
        return not self.delivered and self.attempts >= CALLBACK_ATTEMPTS


class CallbackDispatcher:
    """Delivers ``{jobId, status, result}`` to each finished job's ``callbackUrl``."""

    def __init__(self, store: JobStore, settings: SandboxSettings) -> None:
        self.store = store
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.deliveries: set[asyncio.Task[None]] = set()

    @property
    def tick(self) -> float:
        return max(MIN_TICK, self.settings.scaled(CALLBACK_TICK))

    async def run(self) -> None:
        while True:
            self.dispatch_due(self.settings.clock())
            await asyncio.sleep(self.tick)

    def dispatch_due(self, now: float) -> None:
        for job_id in list(self.store.awaiting_callback):
            job = self.store.jobs[job_id]
            state = job.callback
            if state.delivered or state.gave_up:
                self.store.awaiting_callback.discard(job_id)
                continue
            if state.in_flight or now < job.finished_at() or now < state.next_at:
                continue
            state.in_flight = True
            task = asyncio.create_task(self.deliver(job))
            self.deliveries.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.deliveries.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("extract_callback_crashed", error=repr(exc))

    async def deliver(self, job: ExtractJob) -> None:
        state = job.callback
        url = job.request.callback_url
        if url is None or self.session is None:
            state.in_flight = False
            return
        state.attempts += 1
        body = orjson.dumps(job.callback_body(self.settings.clock()))
        try:
            outcome, _ = await send(self.session, url, body, {"Content-Type": "application/json"})
        finally:
            state.in_flight = False
        if outcome == "ok":
            state.delivered = True
            log.info("extract_callback_delivered", job_id=job.id, attempts=state.attempts)
            return
        state.next_at = retry_at(self.settings, CALLBACK_RETRY_DELAY, state.attempts)
        log.warning(
            "extract_callback_failed",
            job_id=job.id,
            attempt=state.attempts,
            outcome=outcome,
            gave_up=state.gave_up,
        )

    async def close(self) -> None:
        await cancel_all(self.deliveries)


DISPATCHER_KEY: Final = web.AppKey("extract_callbacks", CallbackDispatcher)


callbacks_ctx: Final = delivery_ctx(DISPATCHER_KEY, CALLBACK_TIMEOUT)
