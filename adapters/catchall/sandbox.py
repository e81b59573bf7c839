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
  ``connected_dataset_ids`` (the sandbox has no datasets) or a ``webhook_ids`` entry that is not
  one of this key's webhooks. 429 ``{"detail"}`` with ``Retry-After`` when the
  key already has 20 unfinished jobs (``Jobs_Concurrency``). A job's webhooks receive its end (see
  ``sandbox_webhooks``), again after each continue completes.
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
- ``/catchAll/webhooks`` and ``/catchAll/webhooks/{id}``: webhook CRUD and deliveries
  (``adapters.catchall.sandbox_webhooks``).

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
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from adapters.catchall.sandbox_jobs import (
    CONTINUE_STAGES,
    FAIL_STAGES,
    JOBS_KEY,
    STAGES,
    STEP_NAMES,
    Job,
    JobStore,
    View,
    iso,
)
from adapters.catchall.sandbox_records import (
    make_record,
    suggested_enrichments,
    suggested_validators,
)
from adapters.catchall.sandbox_validation import Checker, error, json_body, json_errors, query_int
from adapters.catchall.sandbox_webhooks import WEBHOOKS_KEY, check_job_webhooks
from adapters.catchall.sandbox_webhooks import add_routes as add_webhook_routes
from adapters.simulator import (
    SCENARIO_HEADER,
    SETTINGS_KEY,
    UNKNOWN_STATUS_VALUE,
    Fault,
    SandboxSettings,
    Scenario,
    malformed_response,
    pick_scenario,
    stage_durations,
)

__all__ = [
    "CONTINUE_STAGES",
    "FAIL_STAGES",
    "JOBS_KEY",
    "LARGE_POOL",
    "STAGES",
    "STEP_NAMES",
    "WEBHOOKS_KEY",
    "Job",
    "JobStore",
    "View",
    "create_app",
    "make_record",
    "suggested_enrichments",
    "suggested_validators",
]

API_VERSION: Final = "1.6.3"
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
# Request helpers


def _settings(request: web.Request) -> SandboxSettings:
    return request.app[SETTINGS_KEY]


def _store(request: web.Request) -> JobStore:
    return request.app[JOBS_KEY]


def _owner(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key is None or not _settings(request).key_ok(key):
        raise error(403, "Invalid API key")
    return key


def _job(request: web.Request, owner: str, job_id: str) -> Job:
    job = _store(request).owned(job_id, owner)
    if job is None:
        raise error(404, f"Job {job_id} not found")
    return job


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
    body = await json_body(request)
    check = Checker(body)
    query = check.string("query", required=True)
    context = check.string("context")
    if check.issues or query is None:
        raise error(422, check.issues)
    start, end = _default_window(datetime.now(UTC))
    return web.json_response(
        {
            "query": query,
            "context": context,
            "validators": suggested_validators(query),
            "enrichments": suggested_enrichments(),
            "start_date": iso(start),
            "end_date": iso(end),
            "date_modification_message": [],
        }
    )


async def submit(request: web.Request) -> web.Response:
    owner = _owner(request)
    settings = _settings(request)
    store = _store(request)
    body = await json_body(request)
    check = Checker(body)
    query = check.string("query", required=True)
    context = check.string("context")
    limit = check.integer("limit", MIN_LIMIT)
    start = check.moment("start_date")
    end = check.moment("end_date")
    validators = check.schemas("validators", ("boolean",), "boolean")
    enrichments = check.schemas("enrichments", ENRICHMENT_TYPES, None)
    mode = check.choice("mode", ("base", "lite"), "base") or "base"
    datasets = check.strings("connected_dataset_ids")
    webhook_ids = check.strings("webhook_ids", MAX_WEBHOOKS)
    check.string("project_id")
    if check.issues or query is None:
        raise error(422, check.issues)

    wall = datetime.now(UTC)
    default_start, default_end = _default_window(wall)
    start = start or default_start
    end = end or default_end
    if end <= start:
        raise error(400, "end_date must be after start_date")
    if start < wall - timedelta(days=PLAN_LOOKBACK_DAYS):
        raise error(
            400, f"start_date exceeds your plan's search depth of {PLAN_LOOKBACK_DAYS} days"
        )
    if datasets:
        raise error(400, f"Dataset not found or not accessible: {datasets[0]}")
    hooks = check_job_webhooks(request, owner, webhook_ids)

    now = settings.clock()
    running = store.unfinished(owner, now)
    if len(running) >= JOBS_CONCURRENCY:
        wait = min(j.finishes_at() for j in running) - now
        raise error(
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
        webhook_ids=hooks,
    )
    store.jobs[job_id] = job
    if hooks:
        request.app[WEBHOOKS_KEY].pending.add(job_id)
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
        raise error(500, "Internal Server Error")
    if fault is Fault.RATE_LIMITED:
        raise error(429, "Rate limit exceeded", headers={"Retry-After": "1"})
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
    page = query_int(request, "page", 1, 1)
    page_size = query_int(request, "page_size", PULL_PAGE_SIZE, 1, PULL_MAX_PAGE_SIZE)
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
            "date_range": {"start_date": iso(job.start_date), "end_date": iso(job.end_date)},
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
    body = await json_body(request)
    check = Checker(body)
    job_id = check.string("job_id", required=True)
    new_limit = check.integer("new_limit", 1)
    if check.issues or job_id is None:
        raise error(422, check.issues)
    job = _job(request, owner, job_id)
    if not job.limit_given:
        raise error(400, "Job was submitted without a limit; there is nothing to continue")
    if job.view(now).status != "completed":
        raise error(400, "Only completed jobs can be continued")
    target = new_limit if new_limit is not None else PLAN_LIMIT
    if target <= job.limit:
        raise error(400, f"new_limit must be greater than the previous limit ({job.limit})")
    previous = job.limit
    job.continue_to(target, now)
    if job.webhook_ids:
        request.app[WEBHOOKS_KEY].pending.add(job.job_id)
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
    page = query_int(request, "page", 1, 1)
    page_size = query_int(request, "page_size", LIST_PAGE_SIZE, 1, LIST_MAX_PAGE_SIZE)
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
                    "created_at": iso(j.created_at),
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
    app = web.Application(middlewares=[json_errors])
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
    add_webhook_routes(app)
    return app
