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

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import BodyPartReader, web

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
    self_url,
    stage_durations,
)

JSON = Any

STAGES: Final[tuple[Stage, ...]] = (Stage("pending", 5.0), Stage("processing", 45.0))
RETENTION_SECONDS: Final = 60.0
"""How long after completion an ``expire`` job's output is purged (scaled)."""
PROXY_TTL_SECONDS: Final = 3600.0
"""How long after completion the proxy URL answers (scaled); 410 Gone after."""
PRESIGNED_TTL_SECONDS: Final = 86400
"""``X-Amz-Expires`` of presigned URLs (scaled when checked)."""
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""The largest ``file`` part accepted; more gets 413. Module-level so tests can lower it."""
MAX_FIELD_BYTES: Final = 1024 * 1024
MAX_JSON_BODY_BYTES: Final = 8 * 1024 * 1024
INLINE_PAGES: Final = 3
LARGE_PAGES: Final = 120
POINTER_HEADER: Final = "X-Sandbox-Pointer"
_POINTER_TOKEN: Final = re.compile(r"sandbox_pointer=(presigned|proxy)")
_PAGES_RANGE: Final = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")
JSON_FIELDS: Final = frozenset(
    {"schema", "structuredOutput", "figureProcessing", "extensions", "spreadsheet", "storage"}
)
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


class Pointer(StrEnum):
    """Which kind of ``is_url`` pointer a large job reports."""

    PRESIGNED = "presigned"
    PROXY = "proxy"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass
class PulseJob:
    job_id: str
    scenario: Scenario
    pointer: Pointer
    timeline: Timeline
    created_wall: datetime
    extraction_id: str
    source: str
    warnings: list[str] = field(default_factory=list)
    options: dict[str, JSON] = field(default_factory=dict)
    """The submitted fields as parsed (JSON-valued parts decoded); kept for inspection."""
    canceled_at: float | None = None
    downloads: int = 0

    @property
    def large(self) -> bool:
        return self.scenario is Scenario.LARGE

    @property
    def page_count(self) -> int:
        return LARGE_PAGES if self.large else INLINE_PAGES

    def wall(self, mono: float) -> datetime:
        """The wall-clock time of a moment on the sandbox's monotonic clock."""
        return self.created_wall + timedelta(seconds=mono - self.timeline.started)

    def finished_at(self) -> float:
        return self.timeline.finished_at()

    def expires_at(self, settings: SandboxSettings) -> float | None:
        if self.scenario is not Scenario.EXPIRE:
            return None
        return self.finished_at() + settings.scaled(RETENTION_SECONDS)

    def status_at(self, now: float, settings: SandboxSettings) -> tuple[str, float]:
        """The native status and the monotonic time it began."""
        if self.canceled_at is not None:
            return "canceled", self.canceled_at
        index, _ = self.timeline.position(now)
        if index < len(self.timeline.stages):
            before = self.timeline.stages[:index]
            started = self.timeline.started + sum(s.seconds for s in before) * self.timeline.scale
            return self.timeline.stages[index].name, started
        finished = self.finished_at()
        if self.scenario is Scenario.FAIL:
            return "failed", finished
        expires = self.expires_at(settings)
        if expires is not None and now >= expires:
            return "expired", expires
        return "completed", finished


@dataclass
class PulseJobs:
    """Every job this sandbox accepted, and the secret that signs its presigned URLs."""

    jobs: dict[str, PulseJob] = field(default_factory=dict)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: PulseJob) -> None:
        self.jobs[job.job_id] = job

    def get(self, job_id: str) -> PulseJob | None:
        return self.jobs.get(job_id)

    def sign(self, job_id: str, amz_date: str, expires: str) -> str:
        message = f"{job_id}\n{amz_date}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


JOBS_KEY = web.AppKey("pulse_jobs", PulseJobs)


# --------------------------------------------------------------------------------------------------
# Bodies


def error_response(
    status: int,
    code: str,
    message: str,
    details: JSON = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def s3_error(status: int, code: str, message: str) -> web.Response:
    request_id = secrets.token_hex(8).upper()
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(status=status, text=text, content_type="application/xml")


def _plan_info(pages: int) -> dict[str, JSON]:
    return {"tier": "sandbox", "total_credits_used": float(pages), "pages_used": pages}


def _extraction_meta(job: PulseJob) -> dict[str, JSON]:
    return {
        "page_count": job.page_count,
        "extraction_id": job.extraction_id,
        "extraction_url": f"https://platform.runpulse.com/extractions/{job.extraction_id}",
        "plan_info": _plan_info(job.page_count),
        "warnings": list(job.warnings),
        "credits_used": float(job.page_count),
    }


def inline_extraction(job: PulseJob) -> dict[str, JSON]:
    pages = [
        f"## Page {n}\n\nSandbox extraction of {job.source}, page {n} of {job.page_count}.\n"
        for n in range(1, job.page_count + 1)
    ]
    return {"markdown": "\n".join(pages), **_extraction_meta(job)}


_LARGE_LINE: Final = (
    "| Row | Account | Description of the line item as printed | Amount |\n"
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor.\n"
)
_LARGE_PAGE_BODY: Final = _LARGE_LINE * 340


def _large_page(number: int) -> bytes:
    """One page of the large markdown, JSON-escaped without its quotes."""
    text = f"## Page {number}\n\n{_LARGE_PAGE_BODY}\n"
    return orjson.dumps(text)[1:-1]


def _large_chunks(job: PulseJob) -> Iterator[bytes]:
    yield b'{"markdown":"'
    for number in range(1, LARGE_PAGES + 1):
        yield _large_page(number)
    yield b'",' + orjson.dumps(_extraction_meta(job))[1:]


@cache
def _large_pages_length() -> int:
    return sum(len(_large_page(n)) for n in range(1, LARGE_PAGES + 1))


def _large_length(job: PulseJob) -> int:
    head = len(b'{"markdown":"')
    # The closing quote and comma replace the metadata object's opening brace: one byte more.
    return head + _large_pages_length() + 1 + len(orjson.dumps(_extraction_meta(job)))


async def _stream_large(request: web.Request, job: PulseJob) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = _large_length(job)
    await response.prepare(request)
    for chunk in _large_chunks(job):
        await response.write(chunk)
    await response.write_eof()
    return response


def _presigned_url(request: web.Request, store: PulseJobs, job: PulseJob) -> str:
    amz_date = job.wall(job.finished_at()).strftime("%Y%m%dT%H%M%SZ")
    expires = str(PRESIGNED_TTL_SECONDS)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"SANDBOXKEY/{amz_date[:8]}/us-east-1/s3/aws4_request",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": expires,
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": store.sign(job.job_id, amz_date, expires),
    }
    return self_url(request, f"presigned/{job.job_id}") + "?" + urlencode(query)


def large_pointer(request: web.Request, store: PulseJobs, job: PulseJob) -> dict[str, JSON]:
    if job.pointer is Pointer.PROXY:
        url = self_url(request, f"large_results/{job.job_id}")
    else:
        url = _presigned_url(request, store, job)
    return {
        "is_url": True,
        "url": url,
        "extraction_id": job.extraction_id,
        "page_count": job.page_count,
        "plan_info": _plan_info(job.page_count),
    }


def _retention_stub(job: PulseJob, settings: SandboxSettings) -> dict[str, JSON]:
    expires = job.expires_at(settings)
    return {
        "extraction_id": job.extraction_id,
        "page_count": job.page_count,
        "purged_at": _iso(job.wall(expires)) if expires is not None else None,
        "message": "The retention window for this job has passed and its stored output was "
        "purged. Run a new extraction to regenerate it.",
    }


# --------------------------------------------------------------------------------------------------
# Request parsing


class _Rejected(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(message: str, details: JSON = None) -> _Rejected:
    return _Rejected(error_response(400, "INVALID_REQUEST", message, details))


def _too_large(what: str, limit: int) -> _Rejected:
    return _Rejected(
        error_response(413, "PAYLOAD_TOO_LARGE", f"{what} exceeds {limit} bytes", {"limit": limit})
    )


@dataclass
class Submitted:
    fields: dict[str, JSON]
    filename: str | None = None
    file_bytes: int | None = None


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise _too_large(what, limit)
        chunks.append(chunk)
    return part.decode(b"".join(chunks))


async def _drain_part(part: BodyPartReader, limit: int) -> int:
    """Read an uploaded file to its end without keeping it; its size in bytes."""
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise _too_large("file", limit)
    return size


def _parse_json_field(name: str, value: JSON) -> JSON:
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _bad_request(f"{name} must be valid JSON", {"field": name}) from exc


async def _read_multipart(request: web.Request) -> Submitted:
    submitted = Submitted(fields={})
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise _bad_request("every multipart part must be a named form field")
            if part.name == "file":
                submitted.filename = part.filename or "upload"
                submitted.file_bytes = await _drain_part(part, MAX_UPLOAD_BYTES)
                continue
            raw = await _read_part(part, MAX_FIELD_BYTES, part.name)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _bad_request(f"{part.name} is not UTF-8", {"field": part.name}) from exc
            is_json = part.headers.get("Content-Type", "").startswith("application/json")
            if part.name in JSON_FIELDS or is_json:
                submitted.fields[part.name] = _parse_json_field(part.name, text)
            else:
                submitted.fields[part.name] = text
    except ValueError as exc:
        raise _bad_request("malformed multipart body") from exc
    return submitted


async def _read_submission(request: web.Request) -> Submitted:
    kind = request.content_type
    if kind == "multipart/form-data":
        return await _read_multipart(request)
    if kind == "application/x-www-form-urlencoded":
        form = await request.post()
        fields: dict[str, JSON] = {k: v for k, v in form.items() if isinstance(v, str)}
        for name in JSON_FIELDS & fields.keys():
            fields[name] = _parse_json_field(name, fields[name])
        return Submitted(fields=fields)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large("request body", MAX_JSON_BODY_BYTES) from exc
    if not raw.strip():
        return Submitted(fields={})
    if kind != "application/json":
        raise _bad_request("Content-Type must be multipart/form-data or application/json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_request("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise _bad_request("request body must be a JSON object")
    for name in JSON_FIELDS & body.keys():
        body[name] = _parse_json_field(name, body[name])
    return Submitted(fields=body)


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


def _auth_error(request: web.Request) -> web.Response | None:
    key = request.headers.get("x-api-key")
    if request.app[SETTINGS_KEY].key_ok(key):
        return None
    if not key:
        return error_response(
            401, "MISSING_API_KEY", "Missing API key: send it in the x-api-key header", None
        )
    return error_response(401, "INVALID_API_KEY", "Invalid API key", None)


def _not_found(job_id: str) -> web.Response:
    return error_response(404, "JOB_NOT_FOUND", f"Job {job_id} not found", {"job_id": job_id})


def _lookup(request: web.Request) -> tuple[PulseJob | None, str]:
    job_id = request.match_info["job_id"]
    return request.app[JOBS_KEY].get(job_id), job_id


async def _submit(request: web.Request, *, force_async: bool) -> web.Response:
    if (denied := _auth_error(request)) is not None:
        return denied
    try:
        submitted = await _read_submission(request)
    except _Rejected as rejected:
        return rejected.response
    fields = submitted.fields
    file_url = fields.get("fileUrl", fields.get("file_url"))
    if file_url is not None and not isinstance(file_url, str):
        return _bad_request("fileUrl must be a string", {"field": "fileUrl"}).response
    if not file_url and submitted.filename is None:
        return _bad_request(
            "Either fileUrl or file is required", {"fields": ["fileUrl", "file"]}
        ).response
    pages = fields.get("pages")
    if pages is not None and not (isinstance(pages, str) and _PAGES_RANGE.match(pages)):
        return _bad_request("pages must be a range such as 1-2,5", {"field": "pages"}).response

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
            "queuedAt": _iso(job.created_wall),
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
    if (denied := _auth_error(request)) is not None:
        return denied
    job, job_id = _lookup(request)
    if job is None:
        return _not_found(job_id)
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
        result = _retention_stub(job, settings)
    elif status == "failed":
        error = FAILURE_MESSAGE
    if fault is Fault.UNKNOWN_STATUS:
        status, result, error = UNKNOWN_STATUS_VALUE, None, None
    body = {
        "job_id": job.job_id,
        "status": status,
        "created_at": _iso(job.created_wall),
        "updated_at": _iso(job.wall(since)),
        "result": result,
        "error": error,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def cancel_job(request: web.Request) -> web.Response:
    if (denied := _auth_error(request)) is not None:
        return denied
    job, job_id = _lookup(request)
    if job is None:
        return _not_found(job_id)
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


async def large_result(request: web.Request) -> web.StreamResponse:
    if (denied := _auth_error(request)) is not None:
        return denied
    job, job_id = _lookup(request)
    if job is None:
        return _not_found(job_id)
    settings = request.app[SETTINGS_KEY]
    now = settings.clock()
    status, _ = job.status_at(now, settings)
    if not job.large or status != "completed":
        return error_response(
            404, "NOT_FOUND", f"No large result for job {job_id}", {"status": status}
        )
    if now >= job.finished_at() + settings.scaled(PROXY_TTL_SECONDS):
        return error_response(410, "GONE", "The large-result URL has expired", {"job_id": job_id})
    if job.downloads > 0:
        return error_response(
            410, "GONE", "The large result was already downloaded (single-use)", {"job_id": job_id}
        )
    job.downloads += 1
    return await _stream_large(request, job)


async def presigned(request: web.Request) -> web.StreamResponse:
    """The presigned S3 stand-in: no auth header, only the signature in the query."""
    job_id = request.match_info["job_id"]
    query = request.query
    amz_date = query.get("X-Amz-Date", "")
    expires = query.get("X-Amz-Expires", "")
    signature = query.get("X-Amz-Signature", "")
    if not (amz_date and expires and signature):
        return s3_error(403, "AccessDenied", "Query-string authentication parameters are missing")
    store = request.app[JOBS_KEY]
    expected = store.sign(job_id, amz_date, expires)
    if not hmac.compare_digest(expected, signature):
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    job = store.get(job_id)
    if job is None or not job.large:
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    settings = request.app[SETTINGS_KEY]
    if not expires.isdigit() or settings.clock() >= job.finished_at() + settings.scaled(
        int(expires)
    ):
        return s3_error(403, "AccessDenied", "Request has expired")
    return await _stream_large(request, job)


_CODES: Final[dict[int, str]] = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def pulse_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unmatched paths and methods answer in Pulse's error shape rather than aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "HTTP_ERROR")
        return error_response(exc.status, code, exc.reason)


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
    return app
