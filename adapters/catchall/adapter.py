"""The CatchAll adapter: NewsCatcher CatchAll API 1.6.3 (``https://catchall.newscatcherapi.com``).

- ``POST /catchAll/submit`` creates a job (``{"job_id": uuid}``).
- ``GET /catchAll/status/{job_id}`` gives the stage and seven ``steps``; progress is the share of
  the five working stages (submitted .. enriching) marked completed.
- ``GET /catchAll/pull/{job_id}?page=&page_size=`` gives paged records, partial from ``enriching``.
- ``POST /catchAll/continue`` raises a finished job's limit; the job goes back to ``enriching``.
- ``GET /catchAll/webhooks``, ``POST /catchAll/webhooks``, ``PATCH /catchAll/webhooks/{id}``: the
  organisation's webhooks, which a job names in ``webhook_ids`` at submit to be pushed its end.
  One call per method, as everywhere here; finding or creating jobgate's own webhook is the
  gateway's (``gateway/catchall_push.py``). CatchAll never answers an auth secret in full, so a
  :class:`Webhook` keeps only the auth's type and header name.

Errors are FastAPI bodies: ``{"detail": "..."}``, ``{"detail": [{loc, msg, type}]}`` (422) and the
nested ``{"detail": {"detail": "..."}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import quote

from adapters.base import (
    JSON,
    Candidates,
    Capabilities,
    JobError,
    MalformedResponse,
    Progress,
    ResultKind,
    ResultLocator,
    ResultPage,
    StatusReport,
    Submission,
    Timestamps,
)
from adapters.http import HttpAdapter, lookup_status, parse_time, require_mapping, require_str
from gateway.states import JobState

STATUS_TABLE: Final[dict[str, JobState]] = {
    "submitted": JobState.QUEUED,
    "analyzing": JobState.RUNNING,
    "fetching": JobState.RUNNING,
    "clustering": JobState.RUNNING,
    "enriching": JobState.RUNNING,
    "completed": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
}

STAGES: Final[tuple[str, ...]] = ("submitted", "analyzing", "fetching", "clustering", "enriching")
"""The working stages, steps 1..5 of the status body; steps 6 and 7 are the outcomes."""

PARTIAL_STATUSES: Final[frozenset[str]] = frozenset({"enriching"})
"""Statuses in which ``pull`` already holds some records."""

MAX_PAGE_SIZE: Final[int] = 1000
"""The largest ``page_size`` that ``pull`` accepts (its default is 100)."""

_ERROR_MESSAGE_LIMIT: Final[int] = 500


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _detail_text(detail: JSON) -> str | None:
    """The message inside a FastAPI ``detail``: a string, a list of ``{loc, msg}``, or nested."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts: list[str] = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = item.get("msg")
                text = msg if isinstance(msg, str) else str(item.get("type", "invalid"))
                parts.append(f"{where}: {text}" if where else text)
            elif isinstance(item, str):
                parts.append(item)
        return "; ".join(parts) if parts else None
    if isinstance(detail, Mapping):
        for key in ("detail", "message", "msg", "error"):
            inner = _detail_text(detail.get(key))
            if inner:
                return inner
    return None


def _completed_stages(steps: JSON) -> set[str]:
    """Which of the five working stages the ``steps`` list marks completed (by name or order)."""
    done: set[str] = set()
    if not isinstance(steps, list):
        return done
    for step in steps:
        if not isinstance(step, Mapping) or step.get("completed") is not True:
            continue
        name = step.get("status")
        order = _int(step.get("order"))
        if isinstance(name, str) and name.strip().lower() in STAGES:
            done.add(name.strip().lower())
        elif order is not None and 1 <= order <= len(STAGES):
            done.add(STAGES[order - 1])
    return done


def _progress(native: str, body: Mapping[str, JSON]) -> Progress:
    """Steps 1..5 as ``step_index``; the fraction is the share of them completed, refined during
    ``enriching`` by ``progress_validated / candidate_records`` when the body carries them."""
    status = native.strip().lower()
    count = len(STAGES)
    if status == "completed":
        return Progress(fraction=1.0, step="completed", step_index=count, step_count=count)
    steps = body.get("steps")
    done = _completed_stages(steps)
    index: int | None = None
    if status in STAGES:
        index = STAGES.index(status)
    elif status == "failed":
        index = next((i for i, name in enumerate(STAGES) if name not in done), count - 1)
    if isinstance(steps, list) and steps:
        fraction: float | None = len(done) / count
    else:
        fraction = index / count if index is not None else None
    if status == "enriching" and fraction is not None:
        validated = _int(body.get("progress_validated"))
        candidates = _int(body.get("candidate_records"))
        if validated is not None and candidates:
            fraction = (STAGES.index("enriching") + min(1.0, validated / candidates)) / count
    if fraction is not None:
        fraction = min(1.0, max(0.0, fraction))
    return Progress(
        fraction=fraction,
        step=STAGES[index] if index is not None else None,
        step_index=index + 1 if index is not None else None,
        step_count=count,
    )


def _times(body: Mapping[str, JSON]) -> Timestamps:
    return Timestamps(
        created_at=parse_time(body.get("created_at")),
        started_at=parse_time(body.get("started_at")),
        updated_at=parse_time(body.get("updated_at")),
        finished_at=parse_time(body.get("finished_at") or body.get("completed_at")),
    )


_LIST_PAGE_SIZE: Final = 100
"""The most ``jobs/user`` gives in one page."""

WEBHOOK_PAGE_SIZE: Final = 100
"""Webhooks asked for per page of ``GET /catchAll/webhooks`` (the sandbox's maximum too)."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """A CatchAll webhook as answered, minus the auth's secret part (which comes back masked)."""

    id: str
    name: str
    url: str
    method: str | None
    delivery_mode: str | None
    headers: Mapping[str, str]
    auth_type: str | None
    auth_header: str | None
    is_active: bool


@dataclass(frozen=True, slots=True)
class WebhookPage:
    webhooks: tuple[Webhook, ...]
    page: int
    total_pages: int


def _webhook(body: JSON, what: str) -> Webhook:
    """A webhook from ``{success, message, webhook}`` or from a bare webhook object."""
    data = require_mapping(body, what)
    inner = data.get("webhook")
    if isinstance(inner, Mapping):
        data = dict(inner)
    elif "id" not in data:
        raise MalformedResponse(f"{what}: no webhook in the answer")
    headers = data.get("headers")
    auth = data.get("auth")
    auth_map = auth if isinstance(auth, Mapping) else {}
    auth_type = auth_map.get("type")
    auth_header = auth_map.get("header")
    method = data.get("method")
    mode = data.get("delivery_mode")
    url = data.get("url")
    name = data.get("name")
    return Webhook(
        id=require_str(data, "id", what=what),
        name=name if isinstance(name, str) else "",
        url=url if isinstance(url, str) else "",
        method=method if isinstance(method, str) else None,
        delivery_mode=mode if isinstance(mode, str) else None,
        headers=(
            {k: v for k, v in headers.items() if isinstance(v, str)}
            if isinstance(headers, Mapping)
            else {}
        ),
        auth_type=auth_type if isinstance(auth_type, str) else None,
        auth_header=auth_header if isinstance(auth_header, str) else None,
        # Absent means active: only an explicit false pauses deliveries.
        is_active=data.get("is_active") is not False,
    )


class CatchAllAdapter(HttpAdapter):
    """One call per method against the CatchAll API; ``x-api-key`` auth (the base class default)."""

    name = "catchall"
    capabilities = Capabilities(
        submit=True,
        continue_=True,
        partial_results=True,
        push=True,
        result_kind=ResultKind.PAGED,
    )
    status_table = STATUS_TABLE

    def error_message(self, body: JSON) -> tuple[str, JSON]:
        if isinstance(body, Mapping):
            detail = body.get("detail")
            text = _detail_text(detail) or _detail_text(body)
            if text:
                return text[:_ERROR_MESSAGE_LIMIT], detail if detail is not None else dict(body)
            return str(body)[:_ERROR_MESSAGE_LIMIT], dict(body)
        if body is None:
            return "(empty body)", None
        return str(body)[:_ERROR_MESSAGE_LIMIT], None

    @staticmethod
    def _job_path(prefix: str, upstream_id: str) -> str:
        return f"catchAll/{prefix}/{quote(upstream_id, safe='')}"

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        reply = await self.call("POST", "catchAll/submit", operation="submit", json=dict(request))
        body = require_mapping(reply.body, "catchall submit")
        job_id = require_str(body, "job_id", what="catchall submit")
        native = body.get("status")
        native_status = native if isinstance(native, str) else None
        return Submission(
            upstream_id=job_id,
            native_status=native_status,
            state=lookup_status(STATUS_TABLE, native) if native_status else JobState.QUEUED,
            hints=reply.hints,
            extra={k: v for k, v in body.items() if k != "job_id"},
        )

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        reply = await self.call("GET", self._job_path("status", upstream_id), operation="status")
        body = require_mapping(reply.body, "catchall status")
        native = require_str(body, "status", what="catchall status")
        state = lookup_status(STATUS_TABLE, native)
        lowered = native.strip().lower()
        job_id = body.get("job_id")
        error: JobError | None = None
        if state is JobState.FAILED:
            message = _detail_text(body.get("error")) or "CatchAll job failed"
            error = JobError(code="job_failed", message=message[:_ERROR_MESSAGE_LIMIT])
        result: ResultLocator | None = None
        if state is JobState.SUCCEEDED:
            result = ResultLocator(kind=ResultKind.PAGED, partial=False)
        elif lowered in PARTIAL_STATUSES:
            result = ResultLocator(kind=ResultKind.PAGED, partial=True)
        return StatusReport(
            upstream_id=job_id if isinstance(job_id, str) and job_id else upstream_id,
            state=state,
            native_status=native,
            progress=_progress(native, body),
            error=error,
            result=result,
            times=_times(body),
            hints=reply.hints,
        )

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPage:
        params: dict[str, str | int] = {"page": max(1, page)}
        if page_size is not None:
            params["page_size"] = min(MAX_PAGE_SIZE, max(1, page_size))
        reply = await self.call(
            "GET", self._job_path("pull", upstream_id), operation="result", params=params
        )
        body = require_mapping(reply.body, "catchall pull")
        records = body.get("all_records")
        if records is None:
            records = []
        if not isinstance(records, list):
            raise MalformedResponse("catchall pull: all_records is not a list")
        got_page = _int(body.get("page")) or max(1, page)
        got_size = _int(body.get("page_size")) or _int(params.get("page_size")) or len(records)
        total_records = _int(body.get("valid_records"))
        total_pages = _int(body.get("total_pages"))
        if total_pages is None:
            # Not in the body: derive it from the record count, or at least cover this page.
            total_pages = -(-total_records // got_size) if total_records and got_size else got_page
        status = body.get("status")
        return ResultPage(
            records=records,
            page=got_page,
            page_size=got_size,
            total_pages=total_pages,
            total_records=total_records,
            partial=not (isinstance(status, str) and status.strip().lower() == "completed"),
            meta={k: v for k, v in body.items() if k != "all_records"},
        )

    async def find_submitted(
        self, request: Mapping[str, JSON], *, since: datetime, until: datetime, page: int = 1
    ) -> Candidates:
        """Jobs of this key with the same query created in the window: ``jobs/user`` lists them
        newest first, so paging stops at the first one older than ``since``."""
        reply = await self.call(
            "GET",
            "catchAll/jobs/user",
            operation="list",
            params={"page": page, "page_size": _LIST_PAGE_SIZE},
        )
        body = require_mapping(reply.body, "catchall jobs/user")
        jobs = body.get("jobs")
        if not isinstance(jobs, list):
            raise MalformedResponse("catchall jobs/user: no jobs list")
        query = request.get("query")
        found: list[str] = []
        older = False
        for item in jobs:
            if not isinstance(item, Mapping):
                continue
            created = parse_time(item.get("created_at"))
            job_id = item.get("job_id")
            if created is None or not isinstance(job_id, str):
                continue
            if created < since:
                older = True
            elif created <= until and item.get("query") == query:
                found.append(job_id)
        total_pages = body.get("total_pages")
        last = not isinstance(total_pages, int) or page >= total_pages or not jobs
        return Candidates(tuple(found), None if older or last else page + 1)

    async def continue_(self, upstream_id: str, params: Mapping[str, JSON]) -> Submission:
        payload = {**params, "job_id": upstream_id}
        reply = await self.call("POST", "catchAll/continue", operation="continue", json=payload)
        body = require_mapping(reply.body, "catchall continue")
        job_id = body.get("job_id")
        native = body.get("status")
        return Submission(
            upstream_id=job_id if isinstance(job_id, str) and job_id else upstream_id,
            native_status=native if isinstance(native, str) else None,
            state=JobState.RUNNING,
            hints=reply.hints,
            extra={k: v for k, v in body.items() if k != "job_id"},
        )

    # -- webhooks: one call each; the gateway decides which to make -----------------------------

    async def list_webhooks(self, *, page: int = 1) -> WebhookPage:
        reply = await self.call(
            "GET",
            "catchAll/webhooks",
            operation="webhook_list",
            params={"page": max(1, page), "page_size": WEBHOOK_PAGE_SIZE},
        )
        body = require_mapping(reply.body, "catchall webhooks")
        items = body.get("webhooks")
        if not isinstance(items, list):
            raise MalformedResponse("catchall webhooks: no webhooks list")
        webhooks = tuple(
            _webhook(item, "catchall webhooks") for item in items if isinstance(item, Mapping)
        )
        total_pages = _int(body.get("total_pages"))
        return WebhookPage(
            webhooks=webhooks,
            page=_int(body.get("page")) or max(1, page),
            total_pages=total_pages if total_pages is not None else max(1, page),
        )

    async def create_webhook(self, spec: Mapping[str, JSON]) -> Webhook:
        """Create a webhook from ``spec`` (the API's create body, ``auth`` secret included)."""
        reply = await self.call(
            "POST", "catchAll/webhooks", operation="webhook_create", json=dict(spec)
        )
        return _webhook(reply.body, "catchall create webhook")

    async def update_webhook(self, webhook_id: str, changes: Mapping[str, JSON]) -> Webhook:
        """PATCH the fields in ``changes``; ``headers`` and ``auth`` given are replaced whole."""
        reply = await self.call(
            "PATCH",
            f"catchAll/webhooks/{quote(webhook_id, safe='')}",
            operation="webhook_update",
            json=dict(changes),
        )
        return _webhook(reply.body, "catchall update webhook")
