"""The generic platform Jobs API (``https://<tenant-host>/v1/api``).

Jobs are created elsewhere on the platform, so this adapter cannot submit: the gateway adopts a job
by its id and polls ``GET /jobs/{id}``. A finished (completed or failed) job can be rerun with
``POST /jobs/{id}/rerun``, which answers a NEW job id linked back by ``originalJobId``.

Wire facts this module relies on:

- Auth is ``Authorization: Bearer <key>``.
- Every body is an envelope: ``{"data": {...}, "error": null}`` on success and
  ``{"data": null, "error": {"name": "NotFoundError", "message": "...", "details": {}}}`` on error.
  A 2xx whose envelope has no ``data`` object (missing, ``null``, not an object) is malformed.
- ``progress`` is a percentage 0..100; it is clamped into 0..1 (``null`` or garbage gives no
  fraction; a ``completed`` job without one counts as 1.0). ``step`` is the native status.
- A failed job explains itself in ``result.error`` (the seed: "check job result for error
  details") or in a ``data.error``; either may be a string or an object with ``name``/``code`` and
  ``message``. Without one, the error code is ``platform_failed``.
- Results are inline: ``data.result`` of a ``completed`` job.
- Every response carries ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (epoch seconds); a 429
  has no ``Retry-After``, so ``RateLimited.retry_after`` comes from the reset time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Final
from urllib.parse import quote

from adapters.base import (
    JSON,
    Capabilities,
    InlineResult,
    JobError,
    MalformedResponse,
    Progress,
    RequestRejected,
    ResultKind,
    ResultLocator,
    ResultPayload,
    StatusReport,
    Submission,
    Timestamps,
)
from adapters.http import HttpAdapter, Reply, lookup_status, parse_time, require_mapping
from gateway.states import JobState

STATUS_TABLE: Final[dict[str, JobState]] = {
    "pending": JobState.QUEUED,
    "running": JobState.RUNNING,
    "completed": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELED,
    # Not documented: the American spelling, accepted in case any deployment answers it.
    "canceled": JobState.CANCELED,
}
"""Native status (lower case) to canonical state. The docs spell ``cancelled`` with two l's."""

DEFAULT_FAILURE_CODE: Final = "platform_failed"
_MESSAGE_LIMIT: Final = 500


def _first_str(body: Mapping[str, JSON], *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def progress_fraction(raw: object) -> float | None:
    """A 0..100 percentage as a fraction clamped into 0..1; ``None`` when there is no number."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip().removesuffix("%"))
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value / 100.0))


def _error_from(value: JSON) -> JobError | None:
    """A job error from a string or a ``{name|code, message}`` object; ``None`` if silent."""
    if isinstance(value, str) and value.strip():
        return JobError(code=DEFAULT_FAILURE_CODE, message=value[:_MESSAGE_LIMIT])
    if isinstance(value, dict):
        code = _first_str(value, "name", "code", "type")
        message = _first_str(value, "message", "detail", "description")
        if code is None and message is None:
            return None
        return JobError(
            code=code or DEFAULT_FAILURE_CODE,
            message=(message or code or "job failed")[:_MESSAGE_LIMIT],
        )
    return None


def job_error(data: Mapping[str, JSON]) -> JobError:
    """Why a failed job failed: ``result.error``, then ``data.error``, else a generic error."""
    result = data.get("result")
    candidates: list[JSON] = []
    if isinstance(result, dict):
        candidates.append(result.get("error"))
    candidates.append(data.get("error"))
    for candidate in candidates:
        found = _error_from(candidate)
        if found is not None:
            return found
    return JobError(
        code=DEFAULT_FAILURE_CODE,
        message="the platform reported the job as failed without details",
    )


def _time(value: JSON) -> datetime | None:
    """``parse_time``, but an out-of-range epoch (``1e21``) gives ``None`` instead of raising."""
    try:
        return parse_time(value)
    except (OverflowError, OSError, ValueError):
        return None


def describe_error(error: JSON) -> str:
    """``Name: message`` from an envelope's ``error`` (an object or a bare string)."""
    if isinstance(error, str):
        return error[:_MESSAGE_LIMIT]
    if isinstance(error, dict):
        name = _first_str(error, "name", "code")
        message = _first_str(error, "message", "detail")
        if name and message:
            return f"{name}: {message}"[:_MESSAGE_LIMIT]
        if name or message:
            return (name or message or "")[:_MESSAGE_LIMIT]
    return str(error)[:_MESSAGE_LIMIT]


def envelope_data(reply: Reply, what: str) -> dict[str, JSON]:
    """The ``data`` object of a success envelope, or :class:`MalformedResponse`."""
    body = require_mapping(reply.body, what)
    if "data" not in body:
        raise MalformedResponse(f"{what}: envelope has no 'data'", status=reply.status)
    data = body["data"]
    if data is None:
        error = body.get("error")
        said = f" (error: {describe_error(error)})" if error is not None else ""
        raise MalformedResponse(
            f"{what}: HTTP {reply.status} envelope has null 'data'{said}",
            status=reply.status,
            detail=error,
        )
    return require_mapping(data, f"{what} data")


def native_status(data: Mapping[str, JSON], http_status: int) -> str:
    """The job's native status, verbatim; a missing or non-string one is malformed."""
    native = data.get("status")
    if not isinstance(native, str) or not native.strip():
        raise MalformedResponse("platform job: missing or non-string 'status'", status=http_status)
    return native


class PlatformAdapter(HttpAdapter):
    """Adopt-by-id jobs of the generic platform Jobs API; native rerun; inline results."""

    name = "platform"
    capabilities = Capabilities(submit=False, rerun=True, result_kind=ResultKind.INLINE)
    status_table = STATUS_TABLE

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.api_key}"}

    def error_message(self, body: JSON) -> tuple[str, JSON]:
        if isinstance(body, dict):
            if "error" in body and body["error"] is not None:
                error = body["error"]
                detail: JSON = error
                if isinstance(error, dict):
                    detail = {"name": error.get("name"), "details": error.get("details")}
                return (describe_error(error), detail)
            if "name" in body or "message" in body:
                # An error object that arrived without its envelope.
                return (describe_error(body), {"name": body.get("name")})
        if body is None:
            return ("empty body", None)
        if isinstance(body, str):
            return (body[:_MESSAGE_LIMIT], None)
        return (str(body)[:_MESSAGE_LIMIT], None)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def job_path(upstream_id: str, suffix: str = "") -> str:
        if not upstream_id.strip():
            raise RequestRejected("platform: a job id must not be empty")
        return f"/jobs/{quote(upstream_id.strip(), safe='')}{suffix}"

    # -- the protocol ---------------------------------------------------------------------------

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        reply = await self.call("GET", self.job_path(upstream_id), operation="status")
        data = envelope_data(reply, "platform job")
        native = native_status(data, reply.status)
        state = lookup_status(STATUS_TABLE, native)
        fraction = progress_fraction(data.get("progress"))
        if fraction is None and state is JobState.SUCCEEDED:
            fraction = 1.0
        result = data.get("result")
        locator = None
        if state is JobState.SUCCEEDED and result is not None:
            locator = ResultLocator(kind=ResultKind.INLINE, inline=result)
        job_type = data.get("type")
        return StatusReport(
            upstream_id=upstream_id,
            state=state,
            native_status=native,
            progress=Progress(fraction=fraction, step=native),
            error=job_error(data) if state is JobState.FAILED else None,
            result=locator,
            times=Timestamps(
                created_at=_time(data.get("createdAt", data.get("created_at"))),
                started_at=_time(data.get("startedAt", data.get("started_at"))),
                updated_at=_time(data.get("updatedAt", data.get("updated_at"))),
                finished_at=_time(
                    data.get("completedAt", data.get("completed_at", data.get("finishedAt")))
                ),
            ),
            hints=reply.hints,
            job_type=job_type if isinstance(job_type, str) else None,
        )

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        """The inline ``result`` of a completed job (one call to ``GET /jobs/{id}``)."""
        if page != 1:
            raise RequestRejected(f"platform: results are inline, there is no page {page}")
        reply = await self.call("GET", self.job_path(upstream_id), operation="result")
        data = envelope_data(reply, "platform job")
        native = native_status(data, reply.status)
        state = lookup_status(STATUS_TABLE, native)
        if state is None:
            raise MalformedResponse(
                f"platform job: unknown status {native[:50]!r}: cannot tell if a result exists",
                status=reply.status,
            )
        if state is not JobState.SUCCEEDED:
            raise RequestRejected(
                f"platform: job is {native!r}, only a completed job has a result",
                detail={"status": native},
            )
        return InlineResult(data=data.get("result"))

    async def rerun(self, upstream_id: str) -> Submission:
        """Restart a completed or failed job; the platform answers a new job id."""
        reply = await self.call("POST", self.job_path(upstream_id, "/rerun"), operation="rerun")
        data = envelope_data(reply, "platform rerun")
        new_id = _first_str(data, "id", "jobId")
        if new_id is None:
            raise MalformedResponse(
                "platform rerun: missing the new job's 'id'", status=reply.status
            )
        # The docs say a rerun always starts pending; a missing status is read that way.
        native = _first_str(data, "status") or "pending"
        extra: dict[str, JSON] = {k: data[k] for k in ("type", "createdAt") if k in data}
        return Submission(
            upstream_id=new_id,
            native_status=native,
            state=lookup_status(STATUS_TABLE, native),
            original_id=_first_str(data, "originalJobId", "original_job_id") or upstream_id,
            hints=reply.hints,
            extra=extra,
        )
