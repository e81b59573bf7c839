"""A CatchAll sandbox: the NewsCatcher CatchAll API 1.6.3 as its official SDK expects it.

Paths (relative to the base URL, as in production):

- ``GET /health`` ``{"healthy": true}`` and ``GET /version`` ``{"version": "1.6.3"}``: no key
  needed.
- ``POST /catchAll/initialize`` ``{query, context?}``: suggested validators, enrichments and a date
  range; creates no job.
- ``POST /catchAll/submit``: ``{"job_id": uuid}``. The body is validated as FastAPI does
  (``query`` required, ``limit`` >= 10, ISO 8601 dates, validator type ``boolean``, enrichment types
  text|number|date|option|url|company, ``mode`` base|lite, at most 5 ``webhook_ids``); a bad body
  gets 422 ``{"detail": [{loc, msg, type}]}``. 400 ``{"detail"}`` for ``end_date`` before
  ``start_date``, a ``start_date`` beyond the plan's 60-day search depth, or any
  ``connected_dataset_ids`` (the sandbox has no datasets). 429 ``{"detail"}`` with ``Retry-After``
  when the key already has 20 unfinished jobs (``Jobs_Concurrency``).
- ``GET /catchAll/status/{job_id}``: ``{job_id, status, steps}`` with all seven steps.
- ``GET /catchAll/pull/{job_id}?page=&page_size=`` (page_size default 100, max 1000): the job's
  settings, counters and one page of ``all_records``. Records exist from ``enriching`` on and grow
  with time; each record is generated from the job id and its index, so pages are stable.
- ``POST /catchAll/continue`` ``{job_id, new_limit?}``: for a completed job submitted with a
  ``limit``; ``new_limit`` (default: the plan maximum) must exceed it, else 400. Answers
  ``{job_id, previous_limit, new_limit, status: "processing"}``; the job re-enters ``enriching``
  and completes again with more records (as many as its pool holds).
- ``GET /catchAll/jobs/user?page=&page_size=``: the key's jobs, newest first.
- ``DELETE /catchAll/jobs/{job_id}``: a soft delete (hidden from the list; status and pull still
  work).

Every other path needs ``x-api-key``; a missing or rejected key gets 403
``{"detail": "Invalid API key"}``. A job of another key, or an unknown id, gets 404 ``{"detail"}``.

Stages and their durations at speed 1 (about 12 minutes): submitted 30 s, analyzing 90 s,
fetching 240 s, clustering 150 s, enriching 210 s, then ``completed``. A continue re-enters
``enriching`` for 180 s.

Scenarios (``X-Sandbox-Scenario`` or a ``sandbox=<name>`` token in the query or context):

- ``succeed`` (default): 120-199 valid records in the pool (capped by ``limit``).
- ``fail``: ends ``failed`` after clustering; pull's ``error`` says why, no records.
- ``slow``: every stage lasts four times longer.
- ``large``: 2,500 valid records, several pages even at ``page_size=1000``.
- ``expire``: CatchAll results do not expire; behaves like ``succeed``.
- ``flaky``: status calls misbehave at ``FLAKY_RATE`` (see below).

Faults (status calls only, drawn by ``SandboxSettings.draw_fault``): ``server_error`` is 500
``{"detail": "Internal Server Error"}``; ``rate_limited`` is 429 ``{"detail"}`` with
``Retry-After: 1``; ``malformed`` is a truncated JSON body; ``unknown_status`` is a normal status
body whose status is ``UNKNOWN_STATUS_VALUE``.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from adapters.http import parse_time
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

API_VERSION: Final = "1.6.3"
STAGES: Final[tuple[Stage, ...]] = (
    Stage("submitted", 30.0),
    Stage("analyzing", 90.0),
    Stage("fetching", 240.0),
    Stage("clustering", 150.0),
    Stage("enriching", 210.0),
)
FAIL_STAGES: Final[tuple[Stage, ...]] = STAGES[:4]
"""A failing job stops after clustering."""
CONTINUE_STAGES: Final[tuple[Stage, ...]] = (Stage("enriching", 180.0),)
STEP_NAMES: Final[tuple[str, ...]] = (*(s.name for s in STAGES), "completed", "failed")
"""The seven ``steps`` of a status body, in ``order`` 1..7."""
MIN_LIMIT: Final = 10
PLAN_LIMIT: Final = 5000
"""The limit a job gets when submitted without one, and the default ``new_limit`` of continue."""
PLAN_LOOKBACK_DAYS: Final = 60
DEFAULT_WINDOW_DAYS: Final = 5
JOBS_CONCURRENCY: Final = 20
MAX_WEBHOOKS: Final = 5
PULL_PAGE_SIZE: Final = 100
PULL_MAX_PAGE_SIZE: Final = 1000
LIST_PAGE_SIZE: Final = 10
LIST_MAX_PAGE_SIZE: Final = 100
LARGE_POOL: Final = 2500
ENRICHMENT_TYPES: Final = ("text", "number", "date", "option", "url", "company")
FAILURE_MESSAGE: Final = (
    "Job failed during clustering: no event clusters passed the quality threshold"
)

# --------------------------------------------------------------------------------------------------
# Jobs


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class View:
    """A job as the clock sees it now."""

    status: str
    valid: int
    validated: int
    candidates: int

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass
class Job:
    job_id: str
    owner: str
    seq: int
    created_at: datetime
    submitted: float
    scenario: Scenario
    query: str
    context: str | None
    mode: str
    limit: int
    limit_given: bool
    validators: list[dict[str, Any]]
    enrichments: list[dict[str, Any]]
    start_date: datetime
    end_date: datetime
    pool: int
    candidates: int
    timeline: Timeline
    base_valid: int = 0
    base_validated: int = 0
    deleted: bool = False

    def target_valid(self) -> int:
        return 0 if self.scenario is Scenario.FAIL else min(self.limit, self.pool)

    def target_validated(self) -> int:
        target = self.target_valid()
        if target >= self.pool:
            return self.candidates
        return min(self.candidates, math.ceil(target * self.candidates / self.pool))

    def view(self, now: float) -> View:
        index, _ = self.timeline.position(now)
        stages = self.timeline.stages
        if index >= len(stages):
            if self.scenario is Scenario.FAIL:
                return View("failed", 0, 0, 0)
            return View("completed", self.target_valid(), self.target_validated(), self.candidates)
        stage = stages[index]
        if stage.name != "enriching":
            return View(stage.name, 0, 0, 0)
        elapsed = now - self.timeline.started
        elapsed -= sum(s.seconds for s in stages[:index]) * self.timeline.scale
        share = min(1.0, max(0.0, elapsed / (stage.seconds * self.timeline.scale)))
        valid = self.base_valid + math.floor(share * (self.target_valid() - self.base_valid))
        validated = self.base_validated + math.floor(
            share * (self.target_validated() - self.base_validated)
        )
        return View("enriching", valid, validated, self.candidates)

    def finishes_at(self) -> float:
        return self.timeline.finished_at()

    def continue_to(self, new_limit: int, now: float) -> None:
        """Raise the limit and walk ``enriching`` again from what the job already holds."""
        self.base_valid = self.target_valid()
        self.base_validated = self.target_validated()
        self.limit = new_limit
        self.timeline = Timeline(stages=CONTINUE_STAGES, started=now, scale=self.timeline.scale)


@dataclass
class JobStore:
    """Every job the sandbox has accepted, deleted ones included (a soft delete keeps the data)."""

    seed: int | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __len__(self) -> int:
        return len(self.jobs)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def owned(self, job_id: str, owner: str) -> Job | None:
        job = self.jobs.get(job_id.lower())
        return job if job is not None and job.owner == owner else None

    def unfinished(self, owner: str, now: float) -> list[Job]:
        return [j for j in self.jobs.values() if j.owner == owner and not j.view(now).finished]


JOBS_KEY = web.AppKey("catchall_jobs", JobStore)

# --------------------------------------------------------------------------------------------------
# Generated content: suggestions and records, deterministic per job


_COMPANIES: Final = (
    "Northwind Robotics",
    "Helios Grid",
    "Aster Bio",
    "Quill Payments",
    "Lumen Freight",
    "Corvid Security",
    "Tessellate AI",
    "Bramble Foods",
)
_EVENTS: Final = (
    "raises Series B funding",
    "announces acquisition of a rival",
    "opens a new European headquarters",
    "files for an initial public offering",
    "names a new chief executive",
    "expands into Latin America",
)
_CONFIDENCE: Final = ("high", "medium", "low")


def suggested_validators(query: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "is_relevant_event",
            "description": f"The page reports a real event matching: {query[:120]}",
            "type": "boolean",
        },
        {
            "name": "is_recent",
            "description": "The event happened inside the requested date range",
            "type": "boolean",
        },
    ]


def suggested_enrichments() -> list[dict[str, Any]]:
    return [
        {"name": "event_summary", "description": "One-sentence summary", "type": "text"},
        {"name": "event_date", "description": "When the event happened", "type": "date"},
        {"name": "company", "description": "The main company involved", "type": "company"},
        {"name": "amount_usd", "description": "Money involved, in USD", "type": "number"},
        {"name": "source_url", "description": "The primary source", "type": "url"},
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _enrichment_value(
    spec: dict[str, Any], rng: random.Random, company: str, title: str, day: datetime
) -> Any:
    kind = spec.get("type")
    if kind == "number":
        return rng.randint(1, 500) * 1_000_000
    if kind == "date":
        return day.strftime("%Y-%m-%d")
    if kind == "url":
        return f"https://{_slug(company)}.example.com/news/{rng.randint(1000, 9999)}"
    if kind == "option":
        options = spec.get("options")
        choices = [str(o) for o in options] if isinstance(options, list) and options else None
        return rng.choice(choices or ["yes", "no", "unclear"])
    if kind == "company":
        return {
            "source_text": company,
            "confidence": round(rng.uniform(0.6, 0.99), 2),
            "metadata": {
                "name": company,
                "domain_url": f"{_slug(company)}.example.com",
                "domain_url_confidence": rng.choice(_CONFIDENCE),
            },
        }
    return title


def make_record(job: Job, index: int) -> dict[str, Any]:
    """Record ``index`` of ``job``: the same on every call."""
    rng = random.Random(f"{job.job_id}:{index}")
    record_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    company = rng.choice(_COMPANIES)
    title = f"{company} {rng.choice(_EVENTS)}"
    span = max(1.0, (job.end_date - job.start_date).total_seconds())
    day = job.start_date + timedelta(seconds=rng.uniform(0, span))
    enrichment: dict[str, Any] = {
        spec["name"]: _enrichment_value(spec, rng, company, title, day) for spec in job.enrichments
    }
    enrichment["enrichment_confidence"] = rng.choice(_CONFIDENCE)
    citations = [
        {
            "title": f"{title} ({source})",
            "link": f"https://{source}.example.com/{_slug(title)}-{record_id[:8]}",
            "published_date": _iso(day + timedelta(hours=rng.randint(0, 48))),
        }
        for source in rng.sample(["wire", "daily", "ledger", "herald"], rng.randint(1, 3))
    ]
    return {
        "record_id": record_id,
        "record_title": title,
        "enrichment": enrichment,
        "citations": citations,
    }


# --------------------------------------------------------------------------------------------------
# HTTP plumbing: FastAPI-shaped errors


_ERRORS: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    422: web.HTTPUnprocessableEntity,
    429: web.HTTPTooManyRequests,
    500: web.HTTPInternalServerError,
}


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.HTTPException:
    return _ERRORS[status](
        text=orjson.dumps({"detail": detail}).decode(),
        content_type="application/json",
        headers=headers,
    )


def _issue(kind: str, loc: Sequence[str | int], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's own 404/405 answer in FastAPI's ``{"detail": ...}`` shape too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=headers)


def _settings(request: web.Request) -> SandboxSettings:
    return request.app[SETTINGS_KEY]


def _store(request: web.Request) -> JobStore:
    return request.app[JOBS_KEY]


def _owner(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key is None or not _settings(request).key_ok(key):
        raise _error(403, "Invalid API key")
    return key


def _job(request: web.Request, owner: str, job_id: str) -> Job:
    job = _store(request).owned(job_id, owner)
    if job is None:
        raise _error(404, f"Job {job_id} not found")
    return job


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise _error(422, [_issue("json_invalid", ["body", 0], "JSON decode error")]) from exc
    if body is None:
        raise _error(422, [_issue("missing", ["body"], "Field required")])
    if not isinstance(body, dict):
        raise _error(
            422,
            [
                _issue(
                    "model_attributes_type",
                    ["body"],
                    "Input should be a valid dictionary or object to extract fields from",
                    body,
                )
            ],
        )
    return body


def _query_int(
    request: web.Request, name: str, default: int, low: int, high: int | None = None
) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    loc = ["query", name]
    try:
        value = int(raw)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise _error(422, [_issue("int_parsing", loc, msg, raw)]) from None
    if value < low:
        msg = f"Input should be greater than or equal to {low}"
        raise _error(422, [_issue("greater_than_equal", loc, msg, raw)])
    if high is not None and value > high:
        msg = f"Input should be less than or equal to {high}"
        raise _error(422, [_issue("less_than_equal", loc, msg, raw)])
    return value


# --------------------------------------------------------------------------------------------------
# Request validation (the submit body), FastAPI style


class _Checker:
    """Collects FastAPI-style issues for one object of the body (``loc`` is where it sits)."""

    def __init__(
        self,
        body: dict[str, Any],
        loc: Sequence[str | int] = ("body",),
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        self.body = body
        self.loc = list(loc)
        self.issues: list[dict[str, Any]] = [] if issues is None else issues

    def fail(self, kind: str, where: Sequence[str | int], msg: str, value: Any) -> None:
        self.issues.append(_issue(kind, [*self.loc, *where], msg, value))

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                self.fail("missing", [name], "Field required", self.body)
        elif not isinstance(value, str):
            self.fail("string_type", [name], "Input should be a valid string", value)
        elif required and not value.strip():
            self.fail("string_too_short", [name], "String should have at least 1 character", value)
        else:
            return value
        return None

    def integer(self, name: str, low: int) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail("int_type", [name], "Input should be a valid integer", value)
        elif value < low:
            msg = f"Input should be greater than or equal to {low}"
            self.fail("greater_than_equal", [name], msg, value)
        else:
            return value
        return None

    def moment(self, name: str) -> datetime | None:
        value = self.body.get(name)
        if value is None:
            return None
        parsed = parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            msg = "Input should be a valid datetime or date, invalid character in year"
            self.fail("datetime_from_date_parsing", [name], msg, value)
        return parsed

    def choice(self, name: str, options: Sequence[str], default: str | None) -> str | None:
        """One of ``options``; absent means ``default``, and is an issue when that is ``None``."""
        value = self.body.get(name, default)
        if value is None:
            self.fail("missing", [name], "Field required", self.body)
        elif value not in options:
            allowed = " or ".join(f"'{o}'" for o in options)
            self.fail("literal_error", [name], f"Input should be {allowed}", value)
        else:
            return str(value)
        return None

    def items(self, name: str, most: int | None = None) -> list[Any]:
        value = self.body.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail("list_type", [name], "Input should be a valid list", value)
            return []
        if most is not None and len(value) > most:
            msg = f"List should have at most {most} items after validation, not {len(value)}"
            self.fail("too_long", [name], msg, value)
        return value

    def strings(self, name: str, most: int | None = None) -> list[str]:
        value = self.items(name, most)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail("string_type", [name, i], "Input should be a valid string", item)
        return [item for item in value if isinstance(item, str)]

    def schemas(self, name: str, types: Sequence[str], default: str | None) -> list[dict[str, Any]]:
        """A list of ``{name, description, type}``; ``type`` must be one of ``types``."""
        out: list[dict[str, Any]] = []
        for i, item in enumerate(self.items(name)):
            if not isinstance(item, dict):
                msg = "Input should be a valid dictionary or object to extract fields from"
                self.fail("model_attributes_type", [name, i], msg, item)
                continue
            before = len(self.issues)
            inner = _Checker(item, [*self.loc, name, i], self.issues)
            inner.string("name", required=True)
            inner.string("description", required=True)
            kind = inner.choice("type", types, default)
            if len(self.issues) == before:
                out.append({**item, "type": kind})
        return out


# --------------------------------------------------------------------------------------------------
# Handlers


async def health(request: web.Request) -> web.Response:
    return web.json_response({"healthy": True})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": API_VERSION})


def _default_window(now: datetime) -> tuple[datetime, datetime]:
    end = now.replace(microsecond=0)
    return end - timedelta(days=DEFAULT_WINDOW_DAYS), end


async def initialize(request: web.Request) -> web.Response:
    _owner(request)
    body = await _json_body(request)
    check = _Checker(body)
    query = check.string("query", required=True)
    context = check.string("context")
    if check.issues or query is None:
        raise _error(422, check.issues)
    start, end = _default_window(datetime.now(UTC))
    return web.json_response(
        {
            "query": query,
            "context": context,
            "validators": suggested_validators(query),
            "enrichments": suggested_enrichments(),
            "start_date": _iso(start),
            "end_date": _iso(end),
            "date_modification_message": [],
        }
    )


async def submit(request: web.Request) -> web.Response:
    owner = _owner(request)
    settings = _settings(request)
    store = _store(request)
    body = await _json_body(request)
    check = _Checker(body)
    query = check.string("query", required=True)
    context = check.string("context")
    limit = check.integer("limit", MIN_LIMIT)
    start = check.moment("start_date")
    end = check.moment("end_date")
    validators = check.schemas("validators", ("boolean",), "boolean")
    enrichments = check.schemas("enrichments", ENRICHMENT_TYPES, None)
    mode = check.choice("mode", ("base", "lite"), "base") or "base"
    datasets = check.strings("connected_dataset_ids")
    check.strings("webhook_ids", MAX_WEBHOOKS)  # accepted; the sandbox sends no webhooks
    check.string("project_id")
    if check.issues or query is None:
        raise _error(422, check.issues)

    wall = datetime.now(UTC)
    default_start, default_end = _default_window(wall)
    start = start or default_start
    end = end or default_end
    if end <= start:
        raise _error(400, "end_date must be after start_date")
    if start < wall - timedelta(days=PLAN_LOOKBACK_DAYS):
        raise _error(
            400, f"start_date exceeds your plan's search depth of {PLAN_LOOKBACK_DAYS} days"
        )
    if datasets:
        raise _error(400, f"Dataset not found or not accessible: {datasets[0]}")

    now = settings.clock()
    running = store.unfinished(owner, now)
    if len(running) >= JOBS_CONCURRENCY:
        wait = min(j.finishes_at() for j in running) - now
        raise _error(
            429,
            f"Concurrent job limit reached ({JOBS_CONCURRENCY}). "
            "Wait for a running job to finish before submitting another.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    scenario = pick_scenario(request.headers.get(SCENARIO_HEADER), query, context)
    job_id = store.new_id()
    sizer = random.Random(job_id)
    pool = LARGE_POOL if scenario is Scenario.LARGE else sizer.randint(120, 199)
    stages = FAIL_STAGES if scenario is Scenario.FAIL else STAGES
    job = Job(
        job_id=job_id,
        owner=owner,
        seq=len(store.jobs),
        created_at=wall,
        submitted=now,
        scenario=scenario,
        query=query,
        context=context,
        mode=mode,
        limit=limit if limit is not None else PLAN_LIMIT,
        limit_given=limit is not None,
        validators=validators or suggested_validators(query),
        enrichments=enrichments or suggested_enrichments(),
        start_date=start,
        end_date=end,
        pool=pool,
        candidates=math.ceil(pool * sizer.uniform(2.0, 3.0)),
        timeline=stage_durations(settings, scenario, stages),
    )
    store.jobs[job_id] = job
    return web.json_response({"job_id": job_id})


def _steps(status: str) -> list[dict[str, Any]]:
    """All seven steps: those before ``status`` completed, and the outcome itself once reached."""
    if status == "completed":
        done = set(STEP_NAMES) - {"failed"}
    elif status == "failed":
        done = {stage.name for stage in FAIL_STAGES} | {"failed"}
    else:
        done = set(STEP_NAMES[: STEP_NAMES.index(status)])
    return [
        {"status": name, "order": order, "completed": name in done}
        for order, name in enumerate(STEP_NAMES, start=1)
    ]


async def status(request: web.Request) -> web.Response:
    owner = _owner(request)
    settings = _settings(request)
    job = _job(request, owner, request.match_info["job_id"])
    fault = settings.draw_fault(job.scenario)
    if fault is Fault.SERVER_ERROR:
        raise _error(500, "Internal Server Error")
    if fault is Fault.RATE_LIMITED:
        raise _error(429, "Rate limit exceeded", headers={"Retry-After": "1"})
    if fault is Fault.MALFORMED:
        return malformed_response()
    view = job.view(settings.clock())
    shown = UNKNOWN_STATUS_VALUE if fault is Fault.UNKNOWN_STATUS else view.status
    return web.json_response({"job_id": job.job_id, "status": shown, "steps": _steps(view.status)})


def _duration(job: Job, now: float) -> str:
    seconds = max(0, round(min(now, job.finishes_at()) - job.submitted))
    return f"{seconds // 60}m {seconds % 60}s"


async def pull(request: web.Request) -> web.Response:
    owner = _owner(request)
    now = _settings(request).clock()
    job = _job(request, owner, request.match_info["job_id"])
    page = _query_int(request, "page", 1, 1)
    page_size = _query_int(request, "page_size", PULL_PAGE_SIZE, 1, PULL_MAX_PAGE_SIZE)
    view = job.view(now)
    first = (page - 1) * page_size
    last = min(view.valid, first + page_size)
    return web.json_response(
        {
            "job_id": job.job_id,
            "query": job.query,
            "context": job.context,
            "validators": job.validators,
            "enrichments": job.enrichments,
            "status": view.status,
            "error": FAILURE_MESSAGE if view.status == "failed" else None,
            "limit": job.limit,
            "duration": _duration(job, now),
            "candidate_records": view.candidates,
            "valid_records": view.valid,
            "progress_validated": view.validated,
            "date_range": {"start_date": _iso(job.start_date), "end_date": _iso(job.end_date)},
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, math.ceil(view.valid / page_size)),
            "mode": job.mode,
            "all_records": [make_record(job, i) for i in range(first, last)],
        }
    )


async def continue_job(request: web.Request) -> web.Response:
    owner = _owner(request)
    now = _settings(request).clock()
    body = await _json_body(request)
    check = _Checker(body)
    job_id = check.string("job_id", required=True)
    new_limit = check.integer("new_limit", 1)
    if check.issues or job_id is None:
        raise _error(422, check.issues)
    job = _job(request, owner, job_id)
    if not job.limit_given:
        raise _error(400, "Job was submitted without a limit; there is nothing to continue")
    if job.view(now).status != "completed":
        raise _error(400, "Only completed jobs can be continued")
    target = new_limit if new_limit is not None else PLAN_LIMIT
    if target <= job.limit:
        raise _error(400, f"new_limit must be greater than the previous limit ({job.limit})")
    previous = job.limit
    job.continue_to(target, now)
    return web.json_response(
        {
            "job_id": job.job_id,
            "previous_limit": previous,
            "new_limit": target,
            "status": "processing",
        }
    )


async def list_jobs(request: web.Request) -> web.Response:
    owner = _owner(request)
    now = _settings(request).clock()
    page = _query_int(request, "page", 1, 1)
    page_size = _query_int(request, "page_size", LIST_PAGE_SIZE, 1, LIST_MAX_PAGE_SIZE)
    mine = sorted(
        (j for j in _store(request).jobs.values() if j.owner == owner and not j.deleted),
        key=lambda j: j.seq,
        reverse=True,
    )
    chosen = mine[(page - 1) * page_size : page * page_size]
    return web.json_response(
        {
            "total": len(mine),
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, math.ceil(len(mine) / page_size)),
            "jobs": [
                {
                    "job_id": j.job_id,
                    "query": j.query,
                    "created_at": _iso(j.created_at),
                    "status": j.view(now).status,
                    "mode": j.mode,
                }
                for j in chosen
            ],
        }
    )


async def delete_job(request: web.Request) -> web.Response:
    owner = _owner(request)
    job = _job(request, owner, request.match_info["job_id"])
    job.deleted = True
    return web.json_response(
        {"success": True, "message": "Job deleted successfully", "job_id": job.job_id}
    )


def create_app(settings: SandboxSettings) -> web.Application:
    """The CatchAll sandbox; mount it at the root or under a prefix (paths follow unchanged)."""
    app = web.Application(middlewares=[_json_errors])
    app[SETTINGS_KEY] = settings
    app[JOBS_KEY] = JobStore(seed=settings.seed)
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_post("/catchAll/initialize", initialize)
    app.router.add_post("/catchAll/submit", submit)
    app.router.add_get("/catchAll/status/{job_id}", status)
    app.router.add_get("/catchAll/pull/{job_id}", pull)
    app.router.add_post("/catchAll/continue", continue_job)
    app.router.add_get("/catchAll/jobs/user", list_jobs)
    app.router.add_delete("/catchAll/jobs/{job_id}", delete_job)
    return app
