"""The KnowledgeSDK extract-jobs adapter (``https://api.knowledgesdk.com``, header ``x-api-key``).

- ``submit``: ``POST /v1/extract/async`` with the native body ``{url, maxPages, singlePage?,
  includePatterns?, excludePatterns?, callbackUrl?}``; the answer ``{jobId}`` is the upstream id.
- ``fetch_status``: ``GET /v1/jobs/{jobId}``. Accepts ``id`` or ``jobId``, any case of status,
  ``startedAt``/``finishedAt`` and the ``createdAt``/``updatedAt``/``completedAt`` variants.
  Progress is ``pagesScraped / totalPages`` with ``currentStep`` as the step.
- ``fetch_result``: the same call; the result is inline in a completed job. A job that is not
  completed has no result: ``RequestRejected`` (with ``detail={"status": <native>}``), since asking
  again for the same job cannot produce one until its status changes; a ``completed`` job without a
  ``result`` is a ``MalformedResponse``.
- Push: ``callbackUrl`` receives ``{jobId, status, result}``; :meth:`ExtractAdapter.parse_callback`
  turns that body into a ``StatusReport``.
- No cancel, rerun or continue. Errors are Boom bodies ``{statusCode, error, message}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

from adapters.base import (
    JSON,
    NO_HINTS,
    NO_PROGRESS,
    Capabilities,
    InlineResult,
    JobError,
    MalformedResponse,
    Progress,
    RateHints,
    RequestRejected,
    ResultKind,
    ResultLocator,
    ResultPayload,
    StatusReport,
    Submission,
    Timestamps,
)
from adapters.http import HttpAdapter, lookup_status, parse_time, require_mapping, require_str
from gateway.states import JobState

STATUS_TABLE: Final[dict[str, JobState]] = {
    "pending": JobState.QUEUED,
    "processing": JobState.RUNNING,
    "completed": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
}
"""Every native status of ``GET /v1/jobs/{jobId}``; upper-case variants (``PENDING``) are looked up
lower-cased."""

ERROR_CODE: Final = "extract_failed"
SUBMIT_PATH: Final = "/v1/extract/async"
JOB_PATH: Final = "/v1/jobs/{job_id}"
_MESSAGE_LIMIT: Final = 500


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_progress(raw: JSON) -> Progress:
    """``{pagesScraped, totalPages, currentStep}`` as a normalised ``Progress``, leniently."""
    if not isinstance(raw, dict):
        return NO_PROGRESS
    scraped = _number(raw.get("pagesScraped"))
    total = _number(raw.get("totalPages"))
    step = raw.get("currentStep")
    fraction: float | None = None
    if scraped is not None and total is not None and total > 0:
        fraction = min(1.0, max(0.0, scraped / total))
    return Progress(
        fraction=fraction,
        step=step if isinstance(step, str) and step else None,
        step_index=int(scraped) if scraped is not None and scraped >= 0 else None,
        step_count=int(total) if total is not None and total >= 0 else None,
    )


def parse_error(raw: JSON) -> JobError:
    """The job's ``error``: a string, or (leniently) an object with a ``message``."""
    message: object = raw
    code = ERROR_CODE
    if isinstance(raw, dict):
        message = raw.get("message") or raw.get("error")
        if isinstance(raw.get("code"), str) and raw["code"]:
            code = raw["code"]
    if not isinstance(message, str) or not message:
        message = "the extraction failed without a message"
    return JobError(code=code, message=message[:_MESSAGE_LIMIT])


def parse_job(body: JSON, upstream_id: str, hints: RateHints = NO_HINTS) -> StatusReport:
    """A job (or callback) body as a ``StatusReport``; ``MalformedResponse`` on a wrong shape."""
    job = require_mapping(body, "extract job")
    native = require_str(job, "status", what="extract job")
    ident = job.get("id") or job.get("jobId")
    state = lookup_status(STATUS_TABLE, native)
    error = parse_error(job.get("error")) if state is JobState.FAILED else None
    result = None
    if state is JobState.SUCCEEDED and job.get("result") is not None:
        result = ResultLocator(kind=ResultKind.INLINE, inline=job["result"])
    times = Timestamps(
        created_at=parse_time(job.get("createdAt")),
        started_at=parse_time(job.get("startedAt")),
        updated_at=parse_time(job.get("updatedAt")),
        finished_at=parse_time(job.get("finishedAt")) or parse_time(job.get("completedAt")),
    )
    return StatusReport(
        upstream_id=ident if isinstance(ident, str) and ident else upstream_id,
        state=state,
        native_status=native,
        progress=parse_progress(job.get("progress")),
        error=error,
        result=result,
        times=times,
        hints=hints,
    )


class ExtractAdapter(HttpAdapter):
    name = "extract"
    capabilities = Capabilities(submit=True, push=True, result_kind=ResultKind.INLINE)
    status_table = STATUS_TABLE

    def error_message(self, body: JSON) -> tuple[str, JSON]:
        """Boom ``{statusCode, error, message}``; a bare string (a proxy's page) is kept short."""
        if isinstance(body, dict):
            message = body.get("message")
            reason = body.get("error")
            if isinstance(message, str) and message:
                text = message
            elif isinstance(reason, str) and reason:
                text = reason
            else:
                text = str(body)
            # A key the provider quoted back is masked where every adapter's errors leave
            # (``adapters.http``), not here.
            return (text[:_MESSAGE_LIMIT], body)
        if body is None:
            return ("(empty body)", None)
        return (str(body)[:_MESSAGE_LIMIT], None)

    def _job_path(self, upstream_id: str) -> str:
        return JOB_PATH.format(job_id=quote(upstream_id, safe=""))

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        reply = await self.call("POST", SUBMIT_PATH, operation="submit", json=dict(request))
        body = require_mapping(reply.body, "extract submit")
        job_id = require_str(body, "jobId", "id", what="extract submit")
        native = body.get("status")
        native_status = native if isinstance(native, str) and native else None
        state = lookup_status(STATUS_TABLE, native_status) if native_status else JobState.QUEUED
        extra = {k: v for k, v in body.items() if k not in ("jobId", "id", "status")}
        return Submission(
            upstream_id=job_id,
            native_status=native_status,
            state=state,
            hints=reply.hints,
            extra=extra,
        )

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        reply = await self.call("GET", self._job_path(upstream_id), operation="status")
        return parse_job(reply.body, upstream_id, reply.hints)

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        """The inline result of a completed job (``page`` and ``page_size`` do not apply)."""
        reply = await self.call("GET", self._job_path(upstream_id), operation="result")
        report = parse_job(reply.body, upstream_id, reply.hints)
        if report.state is JobState.SUCCEEDED:
            if report.result is None:
                raise MalformedResponse("extract: completed job without a result")
            return InlineResult(report.result.inline)
        raise RequestRejected(
            f"extract: job {report.upstream_id} has no result (status {report.native_status!r})",
            detail={"status": report.native_status},
        )

    @staticmethod
    def parse_callback(body: JSON) -> StatusReport:
        """A ``callbackUrl`` delivery ``{jobId, status, result}`` as a ``StatusReport``."""
        job = require_mapping(body, "extract callback")
        upstream_id = require_str(job, "jobId", "id", what="extract callback")
        return parse_job(job, upstream_id)
