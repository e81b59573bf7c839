"""The Pulse (runpulse.com) poll-API adapter: submit, poll, cancel, and large-result pointers.

- Submit: ``POST /extract`` with ``async: true`` as JSON (the API also takes the SDK's multipart).
- Status: ``GET /job/{job_id}``; Pulse reports no progress, so only ``step`` carries the native
  status while the job is pending or processing.
- Cancel: ``DELETE /job/{job_id}``; the answer does not say whether the job stopped (a completed
  job is left as it is), so the next status poll decides.
- Push: Pulse's webhooks (Svix, Standard Webhooks signatures) are configured on Pulse's side, not
  per job; the gateway takes them at ``/v1/callbacks/pulse`` and polls the job they name.
- Results: inline when small; otherwise ``{"is_url": true, "url": ...}``. A URL on the provider's
  own base URL under ``large_results/`` is the proxy and needs the key; any other URL (a presigned
  S3 URL) must be fetched without it. Downloading is the gateway's business (``gateway/results``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

from yarl import URL

from adapters.base import (
    JSON,
    NO_PROGRESS,
    Capabilities,
    InlineResult,
    JobError,
    MalformedResponse,
    NotFound,
    Progress,
    ResultExpired,
    ResultKind,
    ResultLocator,
    ResultPayload,
    ResultPointer,
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
    "canceled": JobState.CANCELED,
    "expired": JobState.EXPIRED,
}

_FINISHED: Final = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
_UNDER_WAY: Final = frozenset({JobState.QUEUED, JobState.RUNNING})
_POINTER_META: Final = ("extraction_id", "page_count", "plan_info")
_PRESIGNED_PARAMS: Final = frozenset({"x-amz-signature", "signature"})


def _is_url_flag(value: JSON) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


class PulseAdapter(HttpAdapter):
    name = "pulse"
    # push: Pulse sends Standard Webhooks-signed job events through Svix (gateway/callbacks.py).
    capabilities = Capabilities(submit=True, cancel=True, push=True, result_kind=ResultKind.POINTER)
    status_table = STATUS_TABLE

    # -- provider specifics ----------------------------------------------------------------------

    def error_message(self, body: JSON) -> tuple[str, JSON]:
        """``{"error": {"code", "message", "details"}}``, and the looser shapes proxies produce."""
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                code = error.get("code")
                message = error.get("message")
                text = str(message) if message else "no message"
                if code:
                    text = f"{code}: {text}"
                return text[:500], error.get("details")
            for key in ("error", "message", "detail"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return value[:500], None
            return str(body)[:500], None
        if body is None:
            return "empty body", None
        return str(body)[:500], None

    def large_result_url(self, upstream_id: str) -> str:
        """The proxy download URL of a job's large result (it needs the provider key)."""
        return self.connection.url(f"large_results/{quote(upstream_id, safe='')}")

    def needs_provider_key(self, url: str) -> bool:
        """Whether ``url`` is the provider's own large-result proxy, which wants ``x-api-key``.

        Only a URL with the base URL's scheme, host and port, whose path lies under
        ``{base path}/large_results/``, and that carries no presigned signature qualifies; the key
        is never sent anywhere else.
        """
        target = URL(url)
        base = URL(self.connection.base_url)
        if not target.absolute or (target.scheme, target.host, target.port) != (
            base.scheme,
            base.host,
            base.port,
        ):
            return False
        if any(name.lower() in _PRESIGNED_PARAMS for name in target.query):
            return False
        prefix = base.path.rstrip("/") + "/large_results/"
        return target.path.startswith(prefix) and len(target.path) > len(prefix)

    def _absolute(self, url: str) -> str:
        return url if URL(url).absolute else self.connection.url(url)

    def locate(self, result: JSON) -> ResultLocator:
        """The locator for a completed job's ``result``: a pointer when ``is_url``, else inline."""
        if isinstance(result, dict) and _is_url_flag(result.get("is_url")):
            raw = result.get("url")
            if not isinstance(raw, str) or not raw.strip():
                raise MalformedResponse(f"{self.name}: is_url result without a url")
            url = self._absolute(raw.strip())
            meta = {key: result[key] for key in _POINTER_META if result.get(key) is not None}
            return ResultLocator(
                kind=ResultKind.POINTER,
                url=url,
                needs_provider_key=self.needs_provider_key(url),
                meta=meta,
            )
        return ResultLocator(kind=ResultKind.INLINE, inline=result)

    def _job_error(self, body: Mapping[str, JSON]) -> JobError:
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            return JobError(
                code=str(code) if code else "failed",
                message=str(message) if message else "the job failed",
            )
        if isinstance(error, str) and error:
            return JobError(code="failed", message=error)
        return JobError(code="failed", message="the job failed without an error message")

    # -- the protocol ----------------------------------------------------------------------------

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        body = {**request, "async": True}
        reply = await self.call("POST", "/extract", operation="submit", json=body)
        data = require_mapping(reply.body, f"{self.name} submit")
        upstream_id = require_str(data, "job_id", "jobId", "id", what=f"{self.name} submit")
        native = data.get("status")
        native_status = native if isinstance(native, str) else None
        extra = {key: data[key] for key in ("message", "queuedAt") if data.get(key) is not None}
        return Submission(
            upstream_id=upstream_id,
            native_status=native_status,
            state=lookup_status(STATUS_TABLE, native_status),
            hints=reply.hints,
            extra=extra,
        )

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        path = f"/job/{quote(upstream_id, safe='')}"
        reply = await self.call("GET", path, operation="status")
        body = require_mapping(reply.body, f"{self.name} status")
        native = require_str(body, "status", what=f"{self.name} status")
        state = lookup_status(STATUS_TABLE, native)
        job_id = body.get("job_id")
        updated = parse_time(body.get("updated_at"))
        locator: ResultLocator | None = None
        if state is JobState.SUCCEEDED:
            result = body.get("result")
            if result is None:
                raise MalformedResponse(f"{self.name}: completed job without a result")
            locator = self.locate(result)
        return StatusReport(
            upstream_id=job_id if isinstance(job_id, str) and job_id else upstream_id,
            state=state,
            native_status=native,
            progress=Progress(step=native) if state in _UNDER_WAY else NO_PROGRESS,
            error=self._job_error(body) if state is JobState.FAILED else None,
            result=locator,
            times=Timestamps(
                created_at=parse_time(body.get("created_at")),
                updated_at=updated,
                finished_at=updated if state in _FINISHED else None,
            ),
            hints=reply.hints,
        )

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        """The result of a completed job: inline data, or a pointer for the gateway to download.

        An expired job raises :class:`ResultExpired`; a job with no result (yet) :class:`NotFound`.
        """
        report = await self.fetch_status(upstream_id)
        if report.state is JobState.EXPIRED:
            raise ResultExpired(
                f"{self.name}: the retention window of job {upstream_id} has passed",
                detail={"status": report.native_status},
            )
        if report.result is None:
            raise NotFound(
                f"{self.name}: job {upstream_id} has no result (status {report.native_status})",
                detail={"status": report.native_status},
            )
        locator = report.result
        if locator.kind is ResultKind.POINTER and locator.url is not None:
            return ResultPointer(
                url=locator.url, needs_provider_key=locator.needs_provider_key, meta=locator.meta
            )
        return InlineResult(data=locator.inline)

    async def cancel(self, upstream_id: str) -> Submission:
        path = f"/job/{quote(upstream_id, safe='')}"
        reply = await self.call("DELETE", path, operation="cancel")
        data = require_mapping(reply.body, f"{self.name} cancel")
        job_id = data.get("job_id")
        message = data.get("message")
        return Submission(
            upstream_id=job_id if isinstance(job_id, str) and job_id else upstream_id,
            hints=reply.hints,
            extra={"message": message} if isinstance(message, str) else {},
        )
