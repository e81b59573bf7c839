"""A sandbox of the generic platform Jobs API: jobs made elsewhere, then read, listed and rerun.

The real API lives at ``https://<tenant-host>/v1/api``; the combined sandbox mounts this application
at ``/platform/v1/api``, so the paths below are relative to that base.

Documented paths (``Authorization: Bearer <key>``; every body is a ``{"data", "error"}`` envelope):

- ``GET /jobs/{id}`` → ``{"data": {id, type, status, progress, result, createdAt, completedAt},
  "error": null}``. Statuses ``pending``, ``running``, ``completed``, ``failed``, ``cancelled``;
  ``progress`` is an integer 0..100; ``result`` is ``null`` until the job ends; ``completedAt`` is
  set once the job is completed, failed or cancelled.
- ``POST /jobs/{id}/rerun`` → 200 ``{"data": {id: <new id>, type, status: "pending",
  originalJobId, createdAt}}``. Only a ``completed`` or ``failed`` job can be rerun: any other
  gets 409 ``ConflictError`` (the docs say "restart a failed or completed job" and name no error;
  409 says "not in a state that allows this"). The new job keeps the original's type, input and
  duration. Its scenario is the rerun request's ``X-Sandbox-Scenario`` if sent, else the
  original's, except that a ``fail`` job's rerun succeeds: the docs recommend rerun "for transient
  failures", and a rerun that always fails again would exercise nothing.

Sandbox-only paths (the real platform creates jobs elsewhere and documents no cancel):

- ``POST /sandbox/jobs`` ``{type?, scenario?, durationSeconds?, input?}`` → 201
  ``{"data": {id, type, status: "pending", createdAt}}``. ``type`` is one of document_processing
  (the default), web_crawling, batch_embedding, export, import. The scenario is the body's
  ``scenario``, else ``X-Sandbox-Scenario``, else a ``sandbox=<scenario>`` token in any string in
  ``input``. ``durationSeconds`` overrides the type's duration (at speed 1). Ids are
  ``job_`` + 32 hex digits. A bad field gets 400 ``ValidationError`` naming it in ``details``.
- ``POST /sandbox/jobs/{id}/cancel`` → 200 with the job as ``GET`` shows it, now ``cancelled``
  (its progress frozen). A completed or failed job gets 409 ``ConflictError``; cancelling a
  cancelled job is a no-op.

Errors: ``{"data": null, "error": {"name", "message", "details"}}`` with 400 ValidationError,
401 AuthenticationError (missing, non-Bearer or, when ``settings.api_keys`` is set, unknown key),
404 NotFoundError (unknown job or path), 405 MethodNotAllowedError, 409 ConflictError,
429 RateLimitError and 500 InternalServerError.

Timing: a job is ``pending`` for 5 s, then ``running`` with progress rising to 100; whole lives at
speed 1 are document_processing 60 s, web_crawling 120 s, batch_embedding 90 s, export 30 s and
import 45 s, divided by ``settings.speed``. The state is computed from the clock on each request.

Scenarios:

- ``succeed`` (default), ``expire``: run to ``completed`` with a small type-specific inline result
  (``{"documentsProcessed": 50, "errors": 0}`` for document_processing). The platform documents no
  expiry, so ``expire`` behaves like ``succeed``.
- ``fail``: runs to 60 %, then ``failed`` with ``progress`` 60 and ``result``
  ``{..., "errors": 1, "error": {"name": "ProcessingError", "message": "..."}}``.
- ``slow``: every stage lasts four times longer.
- ``large``: completes with a larger inline result (2,000 ``items``, a few hundred kB).
- ``flaky``: ``GET /jobs/{id}`` misbehaves about a third of the time (see faults).

Rate limits: every response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (epoch seconds) for the caller's key. The documented calls (``GET /jobs/{id}``
and ``POST /jobs/{id}/rerun``) consume the quota, ``hourly_limit`` calls (1,000, the standard plan;
premium is 10,000) per key per window of an hour divided by ``settings.speed``; the sandbox-only
calls do not, so test set-up never eats a test's budget. Past the quota: 429 ``RateLimitError``
with ``X-RateLimit-Remaining: 0`` and the window's reset time, and no ``Retry-After`` (the docs
name none).

Faults, drawn with ``settings.draw_fault`` on ``GET /jobs/{id}`` of an existing job only:
``server_error`` → 500 ``InternalServerError`` envelope; ``rate_limited`` → 429 ``RateLimitError``
with ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset`` one second ahead; ``malformed`` →
a truncated JSON body; ``unknown_status`` → the normal body with status
``reticulating_splines``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson
from aiohttp import web

from adapters.base import JSON
from adapters.simulator import (
    SCENARIO_HEADER,
    SETTINGS_KEY,
    UNKNOWN_STATUS_VALUE,
    Fault,
    MonoClock,
    SandboxSettings,
    Scenario,
    Stage,
    Timeline,
    malformed_response,
    pick_scenario,
    stage_durations,
)

JOB_TYPES: Final[tuple[str, ...]] = (
    "document_processing",
    "web_crawling",
    "batch_embedding",
    "export",
    "import",
)
DEFAULT_TYPE: Final = "document_processing"
TYPE_SECONDS: Final[dict[str, float]] = {
    "document_processing": 60.0,
    "web_crawling": 120.0,
    "batch_embedding": 90.0,
    "export": 30.0,
    "import": 45.0,
}
"""A whole job life at speed 1, pending included."""
PENDING_SECONDS: Final = 5.0
FAIL_AT: Final = 0.6
"""How far a ``fail`` job gets before it fails."""
LARGE_ITEMS: Final = 2000
DEFAULT_HOURLY_LIMIT: Final = 1000
HOUR: Final = 3600.0
RERUNNABLE: Final = frozenset({"completed", "failed"})

_ERROR_NAMES: Final[dict[int, str]] = {
    400: "ValidationError",
    401: "AuthenticationError",
    403: "AuthorizationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    429: "RateLimitError",
    500: "InternalServerError",
}

_BASE_RESULTS: Final[dict[str, dict[str, JSON]]] = {
    "document_processing": {"documentsProcessed": 50, "errors": 0},
    "web_crawling": {"pagesCrawled": 120, "errors": 0},
    "batch_embedding": {"embeddingsGenerated": 1000, "dimensions": 1536, "errors": 0},
    "export": {"recordsExported": 2500, "format": "csv", "errors": 0},
    "import": {"recordsImported": 2500, "recordsSkipped": 0, "errors": 0},
}
_FAILURES: Final[dict[str, str]] = {
    "document_processing": "Document parser failed on an unreadable page",
    "web_crawling": "Crawl aborted: the site stopped answering",
    "batch_embedding": "Embedding model returned an error for a batch",
    "export": "Export aborted: the destination rejected the upload",
    "import": "Import aborted: a row did not match the schema",
}


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as of one instant: what ``GET /jobs/{id}`` shows."""

    status: str
    progress: int
    ended: float | None
    """When the job finished, on the sandbox's monotonic clock (``None`` while it runs)."""


@dataclass
class Job:
    id: str
    type: str
    scenario: Scenario
    timeline: Timeline
    created: float
    created_wall: datetime
    input: JSON = None
    duration: float | None = None
    original_id: str | None = None
    cancelled_at: float | None = None

    @property
    def reach(self) -> float:
        """The fraction of the work the job gets through before it ends."""
        return FAIL_AT if self.scenario is Scenario.FAIL else 1.0

    def _progress(self, at: float) -> int:
        index, _ = self.timeline.position(at)
        if index == 0:
            return 0
        if index >= len(self.timeline.stages):
            return math.floor(100 * self.reach)
        pending = self.timeline.stages[0].seconds * self.timeline.scale
        running = self.timeline.stages[1].seconds * self.timeline.scale
        done = (at - self.timeline.started - pending) / running if running > 0 else 1.0
        return min(99, math.floor(100 * self.reach * min(1.0, max(0.0, done))))

    def view(self, now: float) -> JobView:
        if self.cancelled_at is not None:
            return JobView("cancelled", self._progress(self.cancelled_at), self.cancelled_at)
        index, _ = self.timeline.position(now)
        if index == 0:
            return JobView("pending", 0, None)
        if index < len(self.timeline.stages):
            return JobView("running", self._progress(now), None)
        status = "failed" if self.scenario is Scenario.FAIL else "completed"
        return JobView(status, self._progress(now), self.timeline.finished_at())

    def result(self, status: str) -> JSON:
        if status == "completed":
            result = dict(_BASE_RESULTS[self.type])
            if self.scenario is Scenario.LARGE:
                result["items"] = [
                    {
                        "index": i,
                        "status": "ok",
                        "checksum": f"{i * 2654435761 % 2**32:08x}",
                        "summary": f"item {i} of job {self.id}: processed without warnings",
                    }
                    for i in range(LARGE_ITEMS)
                ]
            return result
        if status == "failed":
            result = {
                key: (math.floor(value * FAIL_AT) if isinstance(value, int) else value)
                for key, value in _BASE_RESULTS[self.type].items()
            }
            result["errors"] = 1
            result["error"] = {"name": "ProcessingError", "message": _FAILURES[self.type]}
            return result
        return None

    def render(self, now: float) -> dict[str, JSON]:
        view = self.view(now)
        completed_at = (
            _iso(self.created_wall + timedelta(seconds=view.ended - self.created))
            if view.ended is not None
            else None
        )
        return {
            "id": self.id,
            "type": self.type,
            "status": view.status,
            "progress": view.progress,
            "result": self.result(view.status),
            "createdAt": _iso(self.created_wall),
            "completedAt": completed_at,
        }


@dataclass
class JobBook:
    """Every job the sandbox knows, by id. ``len(book)`` counts upstream jobs for tests."""

    settings: SandboxSettings
    jobs: dict[str, Job] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.jobs)

    def create(
        self,
        job_type: str,
        scenario: Scenario,
        *,
        input_: JSON = None,
        duration: float | None = None,
        original_id: str | None = None,
    ) -> Job:
        total = duration if duration is not None else TYPE_SECONDS[job_type]
        pending = min(PENDING_SECONDS, total * 0.1)
        running = (total - pending) * (FAIL_AT if scenario is Scenario.FAIL else 1.0)
        stages = (Stage("pending", pending), Stage("running", running))
        job = Job(
            id=f"job_{uuid.uuid4().hex}",
            type=job_type,
            scenario=scenario,
            timeline=stage_durations(self.settings, scenario, stages),
            created=self.settings.clock(),
            created_wall=datetime.now(UTC),
            input=input_,
            duration=duration,
            original_id=original_id,
        )
        self.jobs[job.id] = job
        return job


JOBS_KEY = web.AppKey("platform_jobs", JobBook)


# --------------------------------------------------------------------------------------------------
# Rate limits


@dataclass
class _Window:
    started: float
    used: int = 0


@dataclass
class RateLimiter:
    """A fixed window per key: ``limit`` calls per ``window`` seconds of the sandbox clock."""

    limit: int
    window: float
    clock: MonoClock
    windows: dict[str, _Window] = field(default_factory=dict)

    def _current(self, key: str) -> _Window:
        now = self.clock()
        window = self.windows.get(key)
        if window is None or now >= window.started + self.window:
            window = _Window(started=now)
            self.windows[key] = window
        return window

    def consume(self, key: str) -> bool:
        window = self._current(key)
        if window.used >= self.limit:
            return False
        window.used += 1
        return True

    def headers(self, key: str) -> dict[str, str]:
        window = self._current(key)
        left = max(0.0, window.started + self.window - self.clock())
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - window.used)),
            "X-RateLimit-Reset": str(math.ceil(time.time() + left)),
        }


LIMITER_KEY = web.AppKey("platform_rate_limiter", RateLimiter)
_METERED: Final = frozenset({"platform_get_job", "platform_rerun_job"})
_ANONYMOUS: Final = ""


# --------------------------------------------------------------------------------------------------
# Bodies


def _json(body: JSON, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _ok(data: JSON, status: int = 200) -> web.Response:
    return _json({"data": data, "error": None}, status)


def _error(status: int, message: str, details: dict[str, JSON] | None = None) -> web.Response:
    name = _ERROR_NAMES.get(status, "InternalServerError" if status >= 500 else "ClientError")
    error = {"name": name, "message": message, "details": details or {}}
    return _json({"data": None, "error": error}, status)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _strings(value: JSON) -> Iterator[str]:
    """Every string inside a JSON value, where a ``sandbox=<scenario>`` token may hide."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# --------------------------------------------------------------------------------------------------
# Middleware: auth, quota and the rate-limit headers on every response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    limiter = request.app[LIMITER_KEY]
    key = bearer_token(request.headers.get("Authorization"))
    if key is None or not settings.key_ok(key):
        response: web.StreamResponse = _error(401, "Missing or invalid API key")
        response.headers.update(limiter.headers(_ANONYMOUS))
        return response
    if request.match_info.route.name in _METERED and not limiter.consume(key):
        response = _error(
            429,
            f"Rate limit exceeded: {limiter.limit} requests per hour",
            {"limit": limiter.limit},
        )
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _error(exc.status, exc.reason)
    if "X-RateLimit-Reset" not in response.headers:
        response.headers.update(limiter.headers(key))
    return response


# --------------------------------------------------------------------------------------------------
# Handlers


def _job_or_404(request: web.Request) -> Job | web.Response:
    job_id = request.match_info["id"]
    job = request.app[JOBS_KEY].jobs.get(job_id)
    if job is None:
        return _error(404, f"Job {job_id[:100]} not found", {"id": job_id[:100]})
    return job


async def get_job(request: web.Request) -> web.Response:
    found = _job_or_404(request)
    if isinstance(found, web.Response):
        return found
    settings = request.app[SETTINGS_KEY]
    fault = settings.draw_fault(found.scenario)
    if fault is Fault.SERVER_ERROR:
        return _error(500, "An unexpected error occurred")
    if fault is Fault.RATE_LIMITED:
        response = _error(429, "Rate limit exceeded", {"limit": request.app[LIMITER_KEY].limit})
        response.headers["X-RateLimit-Limit"] = str(request.app[LIMITER_KEY].limit)
        response.headers["X-RateLimit-Remaining"] = "0"
        response.headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + 1.0))
        return response
    if fault is Fault.MALFORMED:
        return malformed_response()
    data = found.render(settings.clock())
    if fault is Fault.UNKNOWN_STATUS:
        data["status"] = UNKNOWN_STATUS_VALUE
    return _ok(data)


async def rerun_job(request: web.Request) -> web.Response:
    found = _job_or_404(request)
    if isinstance(found, web.Response):
        return found
    settings = request.app[SETTINGS_KEY]
    status = found.view(settings.clock()).status
    if status not in RERUNNABLE:
        return _error(
            409,
            f"Only a completed or failed job can be rerun; this job is {status}",
            {"status": status},
        )
    header = request.headers.get(SCENARIO_HEADER)
    if header:
        scenario = pick_scenario(header)
    else:
        scenario = Scenario.SUCCEED if found.scenario is Scenario.FAIL else found.scenario
    job = request.app[JOBS_KEY].create(
        found.type,
        scenario,
        input_=found.input,
        duration=found.duration,
        original_id=found.id,
    )
    return _ok(
        {
            "id": job.id,
            "type": job.type,
            "status": "pending",
            "originalJobId": found.id,
            "createdAt": _iso(job.created_wall),
        }
    )


async def create_job(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body: JSON = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return _error(400, "Request body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "Request body must be a JSON object")
    job_type = body.get("type", DEFAULT_TYPE)
    if job_type not in JOB_TYPES:
        return _error(400, "Unknown job type", {"field": "type", "allowed": list(JOB_TYPES)})
    named = body.get("scenario")
    if named is not None and named not in {s.value for s in Scenario}:
        return _error(
            400, "Unknown scenario", {"field": "scenario", "allowed": [s.value for s in Scenario]}
        )
    duration = body.get("durationSeconds")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0
    ):
        return _error(
            400, "durationSeconds must be a positive number", {"field": "durationSeconds"}
        )
    input_ = body.get("input")
    if named is not None:
        scenario = Scenario(named)
    else:
        scenario = pick_scenario(request.headers.get(SCENARIO_HEADER), *_strings(input_))
    job = request.app[JOBS_KEY].create(
        job_type,
        scenario,
        input_=input_,
        duration=float(duration) if duration is not None else None,
    )
    return _ok(
        {"id": job.id, "type": job.type, "status": "pending", "createdAt": _iso(job.created_wall)},
        status=201,
    )


async def cancel_job(request: web.Request) -> web.Response:
    found = _job_or_404(request)
    if isinstance(found, web.Response):
        return found
    now = request.app[SETTINGS_KEY].clock()
    status = found.view(now).status
    if status in RERUNNABLE:
        return _error(409, f"A {status} job cannot be cancelled", {"status": status})
    if status != "cancelled":
        found.cancelled_at = now
    return _ok(found.render(now))


def create_app(
    settings: SandboxSettings, hourly_limit: int = DEFAULT_HOURLY_LIMIT
) -> web.Application:
    """The platform sandbox; ``hourly_limit`` is the per-key quota (standard 1,000)."""
    if hourly_limit < 1:
        raise ValueError("hourly_limit must be at least 1")
    app = web.Application(middlewares=[_gate])
    app[SETTINGS_KEY] = settings
    app[JOBS_KEY] = JobBook(settings)
    app[LIMITER_KEY] = RateLimiter(
        limit=hourly_limit, window=settings.scaled(HOUR), clock=settings.clock
    )
    app.router.add_get("/jobs/{id}", get_job, name="platform_get_job")
    app.router.add_post("/jobs/{id}/rerun", rerun_job, name="platform_rerun_job")
    app.router.add_post("/sandbox/jobs", create_job, name="platform_sandbox_create")
    app.router.add_post("/sandbox/jobs/{id}/cancel", cancel_job, name="platform_sandbox_cancel")
    return app
