"""A sandbox of the KnowledgeSDK extract-jobs API (``https://api.knowledgesdk.com``).

Paths, relative to the base URL, all behind the ``x-api-key`` header:

- ``POST /v1/extract/async`` ``{url, maxPages 1..20, singlePage?, includePatterns?,
  excludePatterns?, callbackUrl?}`` answers ``{"jobId": "job_..."}``. ``url`` is required and
  must be http(s); ``maxPages`` defaults to 10; ``singlePage`` plans one page. A body that breaks
  these rules gets a 400 Boom body naming the field (Joi style), with ``validation.keys``.
- ``GET /v1/jobs/{jobId}`` answers ``{id, status, progress{pagesScraped,totalPages,currentStep},
  result, error, startedAt, finishedAt, durationMs}`` exactly like the provider's examples:
  ``progress`` is ``null`` while ``pending``; ``result`` is set once ``completed``; ``error`` is a
  string once ``failed``. An unknown id gets a 404 Boom body.
- ``POST /v1/extract/stream`` takes the same body and answers Server-Sent Events as the run goes:
  ``connected``, ``progress``, ``business_classified``, ``pages_planned``, ``page_scraped``
  ``{url,index,total,status}`` (``index`` counts from 0), ``urls_triaged``, then ``complete``
  ``{result}`` or ``error`` ``{error}``. A streamed run is not a pollable job.
- ``POST /v1/business/async`` and ``POST /v1/business/stream``: the newer names of the same two
  operations.

Statuses: ``pending`` (queued, 3 s) -> ``processing`` (classifying the business, planning pages,
scraping each page 3.5 s, triaging URLs, extracting knowledge) -> ``completed`` or ``failed``.
A 10-page job takes about 63 s at speed 1; every duration is divided by ``settings.speed``.
Timestamps are the sandbox's wall clock (so ``durationMs`` is the scaled, real duration).

Scenarios (header ``X-Sandbox-Scenario`` or a ``sandbox=<name>`` token in ``url``):

- ``succeed`` (default) and ``expire``: the job completes (this provider has no expiry).
- ``fail``: the job fails a quarter of the way through scraping, on a page that times out, with
  ``"Failed to scrape URL: Connection timeout after 30s"``.
- ``slow``: every stage lasts ``SLOW_FACTOR`` times longer.
- ``large``: 20 pages whatever ``maxPages`` says, and a result with hundreds of knowledge items.
- ``flaky``: status calls misbehave at ``FLAKY_RATE`` (see faults); the job itself completes.

Faults, drawn on ``GET /v1/jobs/{jobId}`` only (``settings.draw_fault``): ``server_error`` is a
500 Boom body, ``rate_limited`` a 429 Boom body with ``Retry-After: 1``, ``malformed`` a truncated
JSON body, ``unknown_status`` a normal body whose status is ``UNKNOWN_STATUS_VALUE``.

Auth and limits: a missing key or (when ``settings.api_keys`` is set) an unknown one gets a 401 Boom
body. Every accepted request counts against a per-key limit (``RateLimit``, by default 60
requests a sandbox minute, measured over at least one real second so that a burst at high speed is
not refused); past it the answer is 429 with ``Retry-After`` in whole seconds and a Boom body.
``create_app(settings, rate_limit=...)`` changes the limit; ``rate_limit=None`` lifts it.

Callbacks: when a job with ``callbackUrl`` ends, the sandbox POSTs ``{jobId, status, result}`` to
that URL. One background task per application wakes up every ``CALLBACK_TICK`` sandbox seconds
and delivers the callbacks that are due; a failed delivery (connection error, timeout, non-2xx) is
logged and retried, at most ``CALLBACK_ATTEMPTS`` times in all.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from adapters.extract.sandbox_callbacks import (
    CALLBACK_ATTEMPTS,
    CALLBACK_RETRY_DELAY,
    CALLBACK_TICK,
    CALLBACK_TIMEOUT,
    DISPATCHER_KEY,
    MIN_TICK,
    CallbackDispatcher,
    CallbackState,
    callbacks_ctx,
)
from adapters.extract.sandbox_jobs import (
    FAIL_MESSAGE,
    JOBS_KEY,
    LARGE_ITEMS,
    ExtractJob,
    JobStore,
    Snapshot,
    iso,
)
from adapters.extract.sandbox_requests import (
    DEFAULT_MAX_PAGES,
    MAX_PAGES,
    ExtractRequest,
    InvalidRequest,
    boom,
    parse_request,
)
from adapters.simulator import (
    SCENARIO_HEADER,
    SETTINGS_KEY,
    UNKNOWN_STATUS_VALUE,
    Fault,
    SandboxSettings,
    Scenario,
    malformed_response,
    pick_scenario,
)

__all__ = [
    "CALLBACK_ATTEMPTS",
    "CALLBACK_RETRY_DELAY",
    "CALLBACK_TICK",
    "CALLBACK_TIMEOUT",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_RATE_LIMIT",
    "DISPATCHER_KEY",
    "FAIL_MESSAGE",
    "JOBS_KEY",
    "LARGE_ITEMS",
    "LIMITER_KEY",
    "MAX_PAGES",
    "CallbackDispatcher",
    "CallbackState",
    "ExtractJob",
    "ExtractRequest",
    "InvalidRequest",
    "JobStore",
    "RateLimit",
    "RateLimiter",
    "Snapshot",
    "boom",
    "create_app",
    "iso",
    "parse_request",
]

log = structlog.get_logger(__name__)

API_KEY_HEADER: Final = "x-api-key"


# --------------------------------------------------------------------------------------------------
# Rate limit


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``requests`` per ``per`` sandbox seconds for each key.

    The window is ``per / speed`` real seconds, but never shorter than ``min_window``: below that,
    the count grows in proportion, so the rate stays the same and a burst at high speed still fits.
    """

    requests: int = 60
    per: float = 60.0
    min_window: float = 1.0

    def effective(self, speed: float) -> tuple[int, float]:
        window = self.per / speed
        if window >= self.min_window:
            return self.requests, window
        return math.ceil(self.requests * self.min_window / window), self.min_window


DEFAULT_RATE_LIMIT: Final = RateLimit()


class RateLimiter:
    """A sliding window per key; only accepted requests count."""

    def __init__(self, limit: RateLimit, settings: SandboxSettings) -> None:
        self.requests, self.window = limit.effective(settings.speed)
        self.seen: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> float | None:
        """``None`` if the request may go on, else the seconds until it may."""
        times = self.seen.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.requests:
            return max(0.0, times[0] + self.window - now)
        times.append(now)
        return None


LIMITER_KEY: Final = web.AppKey("extract_rate_limiter", RateLimiter)


# --------------------------------------------------------------------------------------------------
# HTTP


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, then the rate limit, then the handler; routing errors answer in Boom's shape."""
    settings = request.app[SETTINGS_KEY]
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        return boom(401, "Missing API key")
    if not settings.key_ok(key):
        return boom(401, "Invalid API key")
    limiter = request.app.get(LIMITER_KEY)
    if limiter is not None:
        wait = limiter.admit(key, settings.clock())
        if wait is not None:
            return boom(
                429,
                "Rate limit exceeded, please retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return boom(exc.status, exc.reason)


async def _read_request(request: web.Request) -> ExtractRequest:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(None, "Invalid request payload JSON format") from exc
    return parse_request(body)


def _scenario(request: web.Request, extract: ExtractRequest) -> Scenario:
    return pick_scenario(request.headers.get(SCENARIO_HEADER), extract.url)


async def submit(request: web.Request) -> web.Response:
    try:
        extract = await _read_request(request)
    except InvalidRequest as exc:
        return exc.response()
    store = request.app[JOBS_KEY]
    job = store.build(extract, _scenario(request, extract))
    store.add(job)
    return web.json_response({"jobId": job.id}, dumps=_dumps)


async def get_job(request: web.Request) -> web.Response:
    store = request.app[JOBS_KEY]
    settings = request.app[SETTINGS_KEY]
    job = store.get(request.match_info["job_id"])
    if job is None:
        return boom(404, "Job not found")
    fault = settings.draw_fault(job.scenario)
    if fault is Fault.SERVER_ERROR:
        return boom(500, "An internal server error occurred")
    if fault is Fault.RATE_LIMITED:
        return boom(429, "Rate limit exceeded, please retry later", headers={"Retry-After": "1"})
    if fault is Fault.MALFORMED:
        return malformed_response()
    status = UNKNOWN_STATUS_VALUE if fault is Fault.UNKNOWN_STATUS else None
    return web.json_response(job.status_body(settings.clock(), status=status), dumps=_dumps)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def stream(request: web.Request) -> web.StreamResponse:
    try:
        extract = await _read_request(request)
    except InvalidRequest as exc:
        return exc.response()
    settings = request.app[SETTINGS_KEY]
    job = request.app[JOBS_KEY].build(extract, _scenario(request, extract))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    tick = max(MIN_TICK, settings.scaled(CALLBACK_TICK))
    end = len(job.timeline.stages)
    try:
        await response.write(_sse("connected", {"jobId": job.id, "url": extract.url}))
        entered = 0
        while entered < end:
            now = settings.clock()
            index, _ = job.timeline.position(now)
            for stage in range(entered + 1, index + 1):
                for event, data in job.events_entering(stage, now):
                    await response.write(_sse(event, data))
            entered = max(entered, index)
            if entered < end:
                await asyncio.sleep(tick)
        await response.write_eof()
    except ConnectionResetError:
        log.info("extract_stream_client_gone", job_id=job.id)
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_app(
    settings: SandboxSettings, *, rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT
) -> web.Application:
    """The sandbox application; ``rate_limit=None`` serves without a rate limit."""
    app = web.Application(middlewares=[_gate])
    app[SETTINGS_KEY] = settings
    store = JobStore(settings)
    app[JOBS_KEY] = store
    app[DISPATCHER_KEY] = CallbackDispatcher(store, settings)
    if rate_limit is not None:
        app[LIMITER_KEY] = RateLimiter(rate_limit, settings)
    app.cleanup_ctx.append(callbacks_ctx)
    for base in ("/v1/extract", "/v1/business"):
        app.router.add_post(f"{base}/async", submit)
        app.router.add_post(f"{base}/stream", stream)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    return app
