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
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.simulator import (
    SCENARIO_HEADER,
    SETTINGS_KEY,
    UNKNOWN_STATUS_VALUE,
    Fault,
    SandboxSettings,
    Scenario,
    Stage,
    Timeline,
    malformed_response,
    pick_scenario,
    stage_durations,
)

log = structlog.get_logger(__name__)

API_KEY_HEADER: Final = "x-api-key"
DEFAULT_MAX_PAGES: Final = 10
MAX_PAGES: Final = 20
LARGE_ITEMS: Final = 400
"""How many knowledge items a ``large`` job's result holds."""
FAIL_MESSAGE: Final = "Failed to scrape URL: Connection timeout after 30s"

QUEUE: Final = Stage("Queued", 3.0)
CLASSIFY: Final = Stage("Classifying business", 6.0)
PLAN: Final = Stage("Planning pages", 4.0)
PAGE_SECONDS: Final = 3.5
TIMEOUT_SECONDS: Final = 12.0
"""How long the page that fails in the ``fail`` scenario hangs before the job gives up."""
TRIAGE: Final = Stage("Triaging URLs", 5.0)
EXTRACT: Final = Stage("Extracting knowledge", 10.0)
FIRST_PAGE: Final = 3
"""The index of the first page's stage: after queue, classify and plan."""

CALLBACK_TICK: Final = 0.05
"""Sandbox seconds between two wake-ups of the callback dispatcher (never under 10 ms real)."""
CALLBACK_ATTEMPTS: Final = 3
CALLBACK_RETRY_DELAY: Final = 5.0
"""Sandbox seconds before the first retry of a failed callback; doubled at each retry."""
CALLBACK_TIMEOUT: Final = 10.0
"""Real seconds a callback receiver has to answer."""
MIN_TICK: Final = 0.01

_SLUGS: Final = (
    "features",
    "pricing",
    "about",
    "customers",
    "integrations",
    "docs",
    "blog",
    "changelog",
    "security",
    "careers",
    "contact",
    "enterprise",
    "faq",
    "partners",
    "api",
    "status",
    "press",
    "legal/terms",
    "legal/privacy",
)
"""The pages a job plans after the URL it was given (so at most ``MAX_PAGES`` in all)."""
_CATEGORIES: Final = ("Project Management", "Developer Tools", "Analytics", "Customer Support")
_ITEM_KINDS: Final = ("FEATURE", "PRICING", "FAQ", "INTEGRATION", "USE_CASE", "COMPANY")


# --------------------------------------------------------------------------------------------------
# Boom bodies


_REASONS: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def boom(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An error in hapi's Boom shape: ``{statusCode, error, message}``."""
    body: dict[str, Any] = {
        "statusCode": status,
        "error": _REASONS.get(status, "Error"),
        "message": message,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


class InvalidRequest(Exception):
    """A request body that breaks a rule; rendered as a 400 Boom body naming the field."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message

    def response(self) -> web.Response:
        if self.key is None:
            return boom(400, self.message)
        return boom(
            400, self.message, extra={"validation": {"source": "payload", "keys": [self.key]}}
        )


# --------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class ExtractRequest:
    url: str
    max_pages: int
    single_page: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    callback_url: str | None = None


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _patterns(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(key, f'"{key}" must be an array of strings')
    return tuple(value)


def parse_request(body: object) -> ExtractRequest:
    """Validate an extract body the way the provider's Joi schema does; raise ``InvalidRequest``."""
    if not isinstance(body, dict):
        raise InvalidRequest("value", '"value" must be of type object')
    url = body.get("url")
    if url is None:
        raise InvalidRequest("url", '"url" is required')
    if not isinstance(url, str) or not _is_http_url(url):
        raise InvalidRequest(
            "url", '"url" must be a valid uri with a scheme matching the http|https'
        )
    max_pages = body.get("maxPages", DEFAULT_MAX_PAGES)
    if isinstance(max_pages, bool) or not isinstance(max_pages, int):
        raise InvalidRequest("maxPages", '"maxPages" must be an integer')
    if max_pages < 1:
        raise InvalidRequest("maxPages", '"maxPages" must be greater than or equal to 1')
    if max_pages > MAX_PAGES:
        raise InvalidRequest("maxPages", f'"maxPages" must be less than or equal to {MAX_PAGES}')
    single_page = body.get("singlePage", False)
    if not isinstance(single_page, bool):
        raise InvalidRequest("singlePage", '"singlePage" must be a boolean')
    callback = body.get("callbackUrl")
    if callback is not None and (not isinstance(callback, str) or not _is_http_url(callback)):
        raise InvalidRequest(
            "callbackUrl", '"callbackUrl" must be a valid uri with a scheme matching the http|https'
        )
    return ExtractRequest(
        url=url,
        max_pages=max_pages,
        single_page=single_page,
        include_patterns=_patterns(body, "includePatterns"),
        exclude_patterns=_patterns(body, "excludePatterns"),
        callback_url=callback,
    )


# --------------------------------------------------------------------------------------------------
# Jobs


def iso(moment: datetime) -> str:
    """``2026-03-20T10:00:00.000Z``, as the provider writes times."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job as it is at one moment."""

    status: str
    stage: int
    pages_scraped: int
    current_step: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


@dataclass
class CallbackState:
    attempts: int = 0
    delivered: bool = False
    in_flight: bool = False
    next_at: float = 0.0

    @property
    def gave_up(self) -> bool:
        return not self.delivered and self.attempts >= CALLBACK_ATTEMPTS


@dataclass
class ExtractJob:
    """One extraction. Its state is computed from the clock on every read."""

    id: str
    request: ExtractRequest
    scenario: Scenario
    pages: tuple[str, ...]
    timeline: Timeline
    created_wall: datetime
    fail_after: int | None
    """Pages scraped before the job fails (``fail`` scenario); ``None`` when it completes."""
    business: dict[str, Any]
    knowledge_items: list[dict[str, Any]]
    urls_discovered: int
    callback: CallbackState = field(default_factory=CallbackState)

    @property
    def total_pages(self) -> int:
        return len(self.pages)

    def wall(self, mono: float) -> datetime:
        return self.created_wall + timedelta(seconds=mono - self.timeline.started)

    def stage_start(self, index: int) -> float:
        seconds = sum(stage.seconds for stage in self.timeline.stages[:index])
        return self.timeline.started + seconds * self.timeline.scale

    def finished_at(self) -> float:
        return self.timeline.finished_at()

    def snapshot(self, now: float) -> Snapshot:
        index, _ = self.timeline.position(now)
        stages = self.timeline.stages
        started = self.wall(self.stage_start(1)) if index >= 1 else None
        if index == 0:
            return Snapshot("pending", 0, 0, None, None, None, None, None)
        if index < len(stages):
            scraped = min(max(0, index - FIRST_PAGE), self.total_pages)
            return Snapshot(
                "processing", index, scraped, stages[index].name, started, None, None, None
            )
        finished = self.wall(self.finished_at())
        if self.fail_after is not None:
            return Snapshot(
                "failed", index, self.fail_after, "Failed", started, finished, None, FAIL_MESSAGE
            )
        assert started is not None
        result = self.result(started, finished)
        return Snapshot(
            "completed", index, self.total_pages, "Complete", started, finished, result, None
        )

    def result(self, started: datetime, finished: datetime) -> dict[str, Any]:
        return {
            "business": self.business,
            "knowledgeItems": self.knowledge_items,
            "pagesScraped": self.total_pages,
            "urlsDiscovered": self.urls_discovered,
            "durationMs": _millis(started, finished),
            "startedAt": iso(started),
            "finishedAt": iso(finished),
        }

    def status_body(self, now: float, *, status: str | None = None) -> dict[str, Any]:
        """The ``GET /v1/jobs/{jobId}`` body, shaped like the provider's examples."""
        snap = self.snapshot(now)
        progress = None
        if snap.status != "pending":
            progress = {
                "pagesScraped": snap.pages_scraped,
                "totalPages": self.total_pages,
                "currentStep": snap.current_step,
            }
        duration = (
            _millis(snap.started_at, snap.finished_at)
            if snap.started_at and snap.finished_at
            else None
        )
        return {
            "id": self.id,
            "status": status or snap.status,
            "progress": progress,
            "result": snap.result,
            "error": snap.error,
            "startedAt": iso(snap.started_at) if snap.started_at else None,
            "finishedAt": iso(snap.finished_at) if snap.finished_at else None,
            "durationMs": duration,
        }

    def callback_body(self, now: float) -> dict[str, Any]:
        snap = self.snapshot(now)
        return {"jobId": self.id, "status": snap.status, "result": snap.result}

    def events_entering(self, index: int, now: float) -> list[tuple[str, dict[str, Any]]]:
        """The stream events a run emits as it enters stage ``index`` (``len(stages)``: the end).

        Stages: 0 queued, 1 classifying, 2 planning, ``FIRST_PAGE + n`` scraping page ``n``, then
        triaging and extracting (or, for a failing run, the page that times out, then the end).
        """
        stages = self.timeline.stages
        end = len(stages)
        triage = FIRST_PAGE + self.total_pages
        if index == end and self.fail_after is not None:
            return [self._page_event(self.fail_after, "failed"), ("error", {"error": FAIL_MESSAGE})]
        events: list[tuple[str, dict[str, Any]]] = []
        if FIRST_PAGE < index <= triage:
            events.append(self._page_event(index - FIRST_PAGE - 1, "success"))
        if index == end:
            events.append(("complete", {"result": self.snapshot(now).result}))
            return events
        if index == FIRST_PAGE - 1:
            events.append(("business_classified", {"business": self.business}))
        elif index == FIRST_PAGE:
            events.append(("pages_planned", {"total": self.total_pages, "urls": list(self.pages)}))
        elif index == triage:
            events.append(
                (
                    "urls_triaged",
                    {"urlsDiscovered": self.urls_discovered, "selected": self.total_pages},
                )
            )
        if index > 0:
            events.append(
                (
                    "progress",
                    {
                        "pagesScraped": min(max(0, index - FIRST_PAGE), self.total_pages),
                        "totalPages": self.total_pages,
                        "currentStep": stages[index].name,
                    },
                )
            )
        return events

    def _page_event(self, page: int, status: str) -> tuple[str, dict[str, Any]]:
        return (
            "page_scraped",
            {"url": self.pages[page], "index": page, "total": self.total_pages, "status": status},
        )


def _millis(start: datetime, end: datetime) -> int:
    return round((end - start).total_seconds() * 1000)


class JobStore:
    """Every job this sandbox holds, by id; ``len()`` counts them."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.jobs: dict[str, ExtractJob] = {}
        self.rng = random.Random(settings.seed)
        self.awaiting_callback: set[str] = set()

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> ExtractJob | None:
        return self.jobs.get(job_id)

    def new_id(self) -> str:
        while True:
            job_id = f"job_{self.rng.getrandbits(48):012x}"
            if job_id not in self.jobs:
                return job_id

    def build(self, request: ExtractRequest, scenario: Scenario) -> ExtractJob:
        """A job that starts now, not yet registered (a streamed run is never registered)."""
        large = scenario is Scenario.LARGE
        count = MAX_PAGES if large else 1 if request.single_page else request.max_pages
        parts = urlsplit(request.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pages = (request.url, *(f"{origin}/{slug}" for slug in _SLUGS))[:count]
        fail_after = count // 4 if scenario is Scenario.FAIL else None
        stages: list[Stage] = [QUEUE, CLASSIFY, PLAN]
        if fail_after is None:
            stages += [Stage(f"Scraping {page}", PAGE_SECONDS) for page in pages]
            stages += [TRIAGE, EXTRACT]
        else:
            stages += [Stage(f"Scraping {page}", PAGE_SECONDS) for page in pages[:fail_after]]
            stages.append(Stage(f"Scraping {pages[fail_after]}", TIMEOUT_SECONDS))
        timeline = stage_durations(self.settings, scenario, stages)
        host = parts.hostname or "example.com"
        return ExtractJob(
            id=self.new_id(),
            request=request,
            scenario=scenario,
            pages=pages,
            timeline=timeline,
            created_wall=datetime.now(UTC),
            fail_after=fail_after,
            business=_business(self.rng, host),
            knowledge_items=_items(self.rng, pages, LARGE_ITEMS if large else 2 * count),
            urls_discovered=count * 3 + self.rng.randint(2, 9),
        )

    def add(self, job: ExtractJob) -> None:
        self.jobs[job.id] = job
        if job.request.callback_url:
            self.awaiting_callback.add(job.id)


def _business(rng: random.Random, host: str) -> dict[str, Any]:
    label = host.removeprefix("www.").split(".")[0] or "example"
    name = label.replace("-", " ").title()
    return {
        "name": name,
        "domain": host.removeprefix("www."),
        "category": rng.choice(_CATEGORIES),
        "description": f"{name} helps teams do their best work.",
    }


def _items(rng: random.Random, pages: Sequence[str], count: int) -> list[dict[str, Any]]:
    items = []
    for number in range(count):
        kind = rng.choice(_ITEM_KINDS)
        source = pages[number % len(pages)]
        items.append(
            {
                "title": f"{kind.replace('_', ' ').title()} #{number + 1}",
                "description": f"What the page {source} says about {kind.lower()}.",
                "content": " ".join(f"Fact {number}.{n} from {source}." for n in range(8)),
                "category": kind,
                "source": source,
            }
        )
    return items


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


# --------------------------------------------------------------------------------------------------
# Callbacks


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
        outcome: str
        try:
            async with self.session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                outcome = "ok" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        finally:
            state.in_flight = False
        if outcome == "ok":
            state.delivered = True
            log.info("extract_callback_delivered", job_id=job.id, attempts=state.attempts)
            return
        delay = self.settings.scaled(CALLBACK_RETRY_DELAY * 2 ** (state.attempts - 1))
        state.next_at = self.settings.clock() + delay
        log.warning(
            "extract_callback_failed",
            job_id=job.id,
            attempt=state.attempts,
            outcome=outcome,
            gave_up=state.gave_up,
        )

    async def close(self) -> None:
        tasks = list(self.deliveries)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


DISPATCHER_KEY: Final = web.AppKey("extract_callbacks", CallbackDispatcher)
JOBS_KEY: Final = web.AppKey("extract_jobs", JobStore)
LIMITER_KEY: Final = web.AppKey("extract_rate_limiter", RateLimiter)


async def _callbacks_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
    dispatcher = app[DISPATCHER_KEY]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        dispatcher.session = session
        runner = asyncio.create_task(dispatcher.run())
        yield
        runner.cancel()
        with suppress(asyncio.CancelledError):
            await runner
        await dispatcher.close()
        dispatcher.session = None


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
    app.cleanup_ctx.append(_callbacks_ctx)
    for base in ("/v1/extract", "/v1/business"):
        app.router.add_post(f"{base}/async", submit)
        app.router.add_post(f"{base}/stream", stream)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    return app
