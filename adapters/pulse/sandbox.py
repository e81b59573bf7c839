"""A stand-in for the Pulse (runpulse.com) poll API, faithful enough for the official SDK.

Paths, relative to the base URL (``https://api.runpulse.com`` in production):

- ``POST /extract``: accepts ``multipart/form-data`` exactly as ``pulse-python-sdk`` sends it (text
  fields ``fileUrl``, ``async``, ``model``, ``pages``, ``schemaPrompt``, ...; an optional ``file``
  part; JSON-valued parts ``schema``, ``structuredOutput``, ``figureProcessing``, ``extensions``,
  ``spreadsheet``, ``storage``), a JSON object, or a url-encoded form. ``fileUrl`` or ``file`` is
  required (400 otherwise); a malformed ``pages`` range or JSON part gets 400; an upload over
  ``MAX_UPLOAD_BYTES`` gets 413.
  With ``async`` true the answer is 200 ``{job_id, status: "pending", message, queuedAt}``.
  Without it the call is synchronous: the extraction inline, or for ``large`` an ``is_url`` pointer
  to a job that is already complete; ``fail`` answers 500.
- ``POST /extract_async`` (deprecated): the same, always asynchronous.
- ``GET /job/{job_id}``: ``{job_id, status, created_at, updated_at, result, error}``. ``result`` is
  the extraction ``{markdown, page_count, extraction_id, extraction_url, plan_info, warnings,
  credits_used}`` when completed, an ``{is_url, url, extraction_id, page_count, plan_info}`` pointer
  for ``large``, a retention stub when ``expired``, else null; ``error`` is a string when failed.
- ``DELETE /job/{job_id}`` and deprecated ``POST /cancel/{job_id}``: ``{job_id, message}``. A
  pending or processing job becomes ``canceled``; a finished one is left as it is (still 200, the
  message says so).
- ``GET /large_results/{job_id}``: the proxy download of a large result. Needs ``x-api-key``.
  Single-use: a second download answers 410 Gone (as the SDK documents). 410 as well once
  ``PROXY_TTL_SECONDS`` (1 h, scaled) have passed since completion; 404 for a job that has no
  large result (unknown, not finished, or inline).
- ``GET /presigned/{job_id}?X-Amz-Date=...&X-Amz-Expires=...&X-Amz-Signature=...`` (and the other
  ``X-Amz-*`` parameters): the stand-in for a presigned S3 URL. No auth header. The signature is
  an HMAC-SHA256, under a per-application secret, of the job id, ``X-Amz-Date`` and
  ``X-Amz-Expires``; a missing or wrong one gets 403 S3 XML ``SignatureDoesNotMatch``; once
  ``X-Amz-Expires`` (86400 s, scaled) have passed since completion, 403 ``AccessDenied``
  "Request has expired". Reusable until then, like S3.

Large downloads stream about 6 MB of JSON (``LARGE_PAGES`` pages of markdown) in chunks, with a
``Content-Length`` computed up front.

- ``POST /webhook``: ``{"link": ...}``, as Pulse answers with a link to its Svix portal; here the
  link names ``/webhook/endpoints``, the sandbox-only stand-in for that portal (``POST`` ``{url,
  secret?}`` adds an endpoint, ``GET`` lists them). Each endpoint receives ``job.processing``,
  ``job.completed``, ``job.failed`` and ``job.cancelled`` events signed per Standard Webhooks, as
  Svix signs Pulse's (``sandbox_webhooks``); ``SandboxSettings.pulse_webhooks`` configures them too.

Auth: ``x-api-key``; any non-empty key unless ``SandboxSettings.api_keys`` is set. A missing key
gets 401 ``MISSING_API_KEY``, a refused one 401 ``INVALID_API_KEY``. Every error body (bar the S3
ones) is ``{"error": {"code", "message", "details"}}``; unmatched paths and methods get that shape
too.

Lifecycle at speed 1: ``pending`` 5 s, ``processing`` 45 s, then ``completed`` (or ``failed``);
every duration is divided by ``settings.speed``. State is computed from the clock on each request.

Scenarios, from the ``X-Sandbox-Scenario`` header or a ``sandbox=<name>`` token in ``fileUrl`` (or
the uploaded file's name):

- ``succeed`` (default): completes with a 3-page extraction inline.
- ``fail``: fails at the end of ``processing``; ``error`` explains that the file could not be read.
- ``slow``: every stage lasts four times as long.
- ``large``: completes with a 120-page, ~6 MB extraction behind an ``is_url`` pointer. The
  pointer is a presigned URL by default; ``sandbox_pointer=proxy`` in ``fileUrl`` (or the header
  ``X-Sandbox-Pointer: proxy``) gives the proxy URL ``{base}/large_results/{job_id}`` instead.
- ``expire``: completes inline, then ``RETENTION_SECONDS`` (60 s, scaled) later reports ``expired``
  with a retention stub as ``result``.
- ``flaky``: status calls misbehave ``FLAKY_RATE`` of the time (see faults).

Faults, on ``GET /job/{job_id}`` only, drawn from ``settings.draw_fault``: ``server_error`` is a 500
``INTERNAL_ERROR`` body, ``rate_limited`` a 429 ``RATE_LIMITED`` body with ``Retry-After: 1``,
``malformed`` a truncated JSON body, ``unknown_status`` a normal body whose status is
``UNKNOWN_STATUS_VALUE``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from adapters.pulse.sandbox_errors import auth_error, error_response, not_found, pulse_errors
from adapters.pulse.sandbox_forms import (
    JSON_FIELDS,
    MAX_FIELD_BYTES,
    MAX_JSON_BODY_BYTES,
    Rejected,
    Submitted,
    bad_request,
    read_submission,
)
from adapters.pulse.sandbox_jobs import (
    INLINE_PAGES,
    JOBS_KEY,
    LARGE_PAGES,
    PRESIGNED_TTL_SECONDS,
    PROXY_TTL_SECONDS,
    RETENTION_SECONDS,
    STAGES,
    Pointer,
    PulseJob,
    PulseJobs,
    inline_extraction,
    iso,
    lookup,
    retention_stub,
)
from adapters.pulse.sandbox_large_results import large_pointer, large_result, presigned
from adapters.pulse.sandbox_webhooks import WEBHOOKS_KEY, WebhookDispatcher, create_dispatcher
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
    "INLINE_PAGES",
    "JOBS_KEY",
    "JSON_FIELDS",
    "LARGE_PAGES",
    "MAX_FIELD_BYTES",
    "MAX_JSON_BODY_BYTES",
    "MAX_UPLOAD_BYTES",
    "PRESIGNED_TTL_SECONDS",
    "PROXY_TTL_SECONDS",
    "RETENTION_SECONDS",
    "STAGES",
    "WEBHOOKS_KEY",
    "Pointer",
    "PulseJob",
    "PulseJobs",
    "Submitted",
    "WebhookDispatcher",
    "create_app",
    "error_response",
    "inline_extraction",
    "large_pointer",
    "large_result",
    "presigned",
    "pulse_errors",
]

JSON = Any

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""The largest ``file`` part accepted; more gets 413. Module-level so tests can lower it."""
POINTER_HEADER: Final = "X-Sandbox-Pointer"
_POINTER_TOKEN: Final = re.compile(r"sandbox_pointer=(presigned|proxy)")
_PAGES_RANGE: Final = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")
DEPRECATED_FIELDS: Final = (
    "schema",
    "schemaPrompt",
    "customPrompt",
    "structuredOutput",
    "chunking",
    "chunkSize",
    "extractFigure",
    "figureDescription",
    "showImages",
    "returnHtml",
    "thinking",
)
FAILURE_MESSAGE: Final = "Failed to process document: the file at fileUrl could not be read"


# --------------------------------------------------------------------------------------------------
# Submission options


def _truthy(value: JSON) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "on"}
    return bool(value)


def pick_pointer(header: str | None, *texts: str | None) -> Pointer:
    """The pointer kind for a large job: header, else a ``sandbox_pointer=`` token; presigned."""
    if header and header.strip().lower() in {p.value for p in Pointer}:
        return Pointer(header.strip().lower())
    for text in texts:
        if text and (match := _POINTER_TOKEN.search(text.lower())):
            return Pointer(match.group(1))
    return Pointer.PRESIGNED


# --------------------------------------------------------------------------------------------------
# Handlers


async def _submit(request: web.Request, *, force_async: bool) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    try:
        submitted = await read_submission(request, max_upload=MAX_UPLOAD_BYTES)
    except Rejected as rejected:
        return rejected.response
    fields = submitted.fields
    file_url = fields.get("fileUrl", fields.get("file_url"))
    if file_url is not None and not isinstance(file_url, str):
        return bad_request("fileUrl must be a string", {"field": "fileUrl"}).response
    if not file_url and submitted.filename is None:
        return bad_request(
            "Either fileUrl or file is required", {"fields": ["fileUrl", "file"]}
        ).response
    pages = fields.get("pages")
    if pages is not None and not (isinstance(pages, str) and _PAGES_RANGE.match(pages)):
        return bad_request("pages must be a range such as 1-2,5", {"field": "pages"}).response

    settings = request.app[SETTINGS_KEY]
    store = request.app[JOBS_KEY]
    header = request.headers.get(SCENARIO_HEADER)
    scenario = pick_scenario(header, file_url, submitted.filename)
    job = PulseJob(
        job_id=str(uuid.uuid4()),
        scenario=scenario,
        pointer=pick_pointer(request.headers.get(POINTER_HEADER), file_url, submitted.filename),
        timeline=stage_durations(settings, scenario, STAGES),
        created_wall=datetime.now(UTC),
        extraction_id=str(uuid.uuid4()),
        source=file_url or submitted.filename or "upload",
        warnings=[
            f"'{name}' is deprecated and will be removed in a future version"
            for name in DEPRECATED_FIELDS
            if name in fields
        ],
        options=fields,
    )
    if force_async or _truthy(fields.get("async")):
        store.add(job)
        body = {
            "job_id": job.job_id,
            "status": "pending",
            "message": "Extraction job accepted for asynchronous processing",
            "queuedAt": iso(job.created_wall),
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")
    return _answer_synchronously(request, store, job)


def _answer_synchronously(request: web.Request, store: PulseJobs, job: PulseJob) -> web.Response:
    if job.scenario is Scenario.FAIL:
        return error_response(500, "EXTRACTION_FAILED", FAILURE_MESSAGE)
    if job.scenario is Scenario.LARGE:
        # Already done: move the job's walk into the past so its large result is ready now.
        total = job.timeline.total()
        job.timeline.started -= total
        job.created_wall -= timedelta(seconds=total)
        job.notify = False
        store.add(job)
        body = large_pointer(request, store, job)
    else:
        body = inline_extraction(job)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def submit(request: web.Request) -> web.Response:
    return await _submit(request, force_async=False)


async def submit_async(request: web.Request) -> web.Response:
    return await _submit(request, force_async=True)


async def get_job(request: web.Request) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    job, job_id = lookup(request)
    if job is None:
        return not_found(job_id)
    settings = request.app[SETTINGS_KEY]
    fault = settings.draw_fault(job.scenario)
    if fault is Fault.SERVER_ERROR:
        return error_response(500, "INTERNAL_ERROR", "Internal server error")
    if fault is Fault.RATE_LIMITED:
        return error_response(
            429, "RATE_LIMITED", "Too many requests", None, headers={"Retry-After": "1"}
        )
    if fault is Fault.MALFORMED:
        return malformed_response()
    now = settings.clock()
    status, since = job.status_at(now, settings)
    result: JSON = None
    error: str | None = None
    if status == "completed":
        store = request.app[JOBS_KEY]
        result = large_pointer(request, store, job) if job.large else inline_extraction(job)
    elif status == "expired":
        result = retention_stub(job, settings)
    elif status == "failed":
        error = FAILURE_MESSAGE
    if fault is Fault.UNKNOWN_STATUS:
        status, result, error = UNKNOWN_STATUS_VALUE, None, None
    body = {
        "job_id": job.job_id,
        "status": status,
        "created_at": iso(job.created_wall),
        "updated_at": iso(job.wall(since)),
        "result": result,
        "error": error,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def cancel_job(request: web.Request) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    job, job_id = lookup(request)
    if job is None:
        return not_found(job_id)
    settings = request.app[SETTINGS_KEY]
    now = settings.clock()
    status, _ = job.status_at(now, settings)
    if status in {"pending", "processing"}:
        job.canceled_at = now
        message = "Job cancelled successfully"
    else:
        message = f"Job is already {status} and was not changed"
    body = {"job_id": job.job_id, "message": message}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def create_app(settings: SandboxSettings) -> web.Application:
    app = web.Application(middlewares=[pulse_errors], client_max_size=MAX_JSON_BODY_BYTES)
    app[SETTINGS_KEY] = settings
    app[JOBS_KEY] = PulseJobs()
    app.router.add_post("/extract", submit)
    app.router.add_post("/extract_async", submit_async)
    app.router.add_get("/job/{job_id}", get_job)
    app.router.add_delete("/job/{job_id}", cancel_job)
    app.router.add_post("/cancel/{job_id}", cancel_job)
    app.router.add_get("/large_results/{job_id}", large_result)
    app.router.add_get("/presigned/{job_id}", presigned)
    create_dispatcher(app)
    return app
