"""The extract adapter against mocked KnowledgeSDK answers (aioresponses: nothing is sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from adapters.base import (
    NO_PROGRESS,
    AuthRejected,
    InlineResult,
    MalformedResponse,
    NotFound,
    Progress,
    RateLimited,
    RequestRejected,
    ResultKind,
    UnsupportedAction,
    UpstreamUnavailable,
)
from adapters.extract.adapter import STATUS_TABLE, ExtractAdapter, parse_progress
from adapters.http import Connection
from gateway.states import JobState

BASE = "https://api.example.test"
KEY = "sk_ks_unit_secret_0123456789"
NOW = datetime(2026, 3, 20, 10, 0, 0, tzinfo=UTC)
JOB = "job_abc123def456"
JOB_URL = f"{BASE}/v1/jobs/{JOB}"
SUBMIT_URL = f"{BASE}/v1/extract/async"

RESULT: dict[str, Any] = {
    "business": {"name": "Linear", "domain": "linear.app", "category": "Project Management"},
    "knowledgeItems": [{"title": "Issue Tracking", "category": "FEATURE"}],
    "pagesScraped": 10,
    "urlsDiscovered": 34,
    "durationMs": 72150,
    "startedAt": "2026-03-20T10:00:00.000Z",
    "finishedAt": "2026-03-20T10:01:12.150Z",
}


def job_body(status: str = "processing", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": JOB,
        "status": status,
        "progress": {
            "pagesScraped": 4,
            "totalPages": 10,
            "currentStep": "Scraping https://linear.app/features",
        },
        "result": None,
        "error": None,
        "startedAt": "2026-03-20T10:00:00.000Z",
        "finishedAt": None,
        "durationMs": None,
    }
    body.update(fields)
    return body


def boom(status: int, error: str, message: str) -> dict[str, Any]:
    return {"statusCode": status, "error": error, "message": message}


@pytest.fixture
async def adapter() -> AsyncIterator[ExtractAdapter]:
    async with aiohttp.ClientSession() as session:
        yield ExtractAdapter(session, Connection(base_url=BASE, api_key=KEY), clock=lambda: NOW)


@pytest.fixture
def mock() -> Any:
    with aioresponses() as m:
        yield m


# -- the status table ------------------------------------------------------------------------------


def test_table_covers_every_documented_status_in_lower_case() -> None:
    assert set(STATUS_TABLE) == {"pending", "processing", "completed", "failed"}
    assert all(key == key.lower() for key in STATUS_TABLE)
    assert ExtractAdapter.status_table is STATUS_TABLE


@pytest.mark.parametrize(
    ("native", "state"),
    [
        ("pending", JobState.QUEUED),
        ("processing", JobState.RUNNING),
        ("completed", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("PENDING", JobState.QUEUED),
        ("PROCESSING", JobState.RUNNING),
        ("COMPLETED", JobState.SUCCEEDED),
        ("FAILED", JobState.FAILED),
    ],
)
async def test_every_native_status_maps(
    adapter: ExtractAdapter, mock: Any, native: str, state: JobState
) -> None:
    body = job_body(native)
    if state is JobState.SUCCEEDED:
        body["result"] = RESULT
    if state is JobState.FAILED:
        body["error"] = "boom"
    mock.get(JOB_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.state is state
    assert report.native_status == native


async def test_unknown_status_is_none_and_verbatim(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, payload=job_body("Reticulating"))
    report = await adapter.fetch_status(JOB)
    assert report.state is None
    assert report.native_status == "Reticulating"
    assert report.error is None
    assert report.result is None


# -- body variants ---------------------------------------------------------------------------------


async def test_variant_body_with_job_id_and_upper_case(adapter: ExtractAdapter, mock: Any) -> None:
    body = {
        "jobId": "job_variant",
        "status": "COMPLETED",
        "progress": {"pagesScraped": 10, "totalPages": 10, "currentStep": "Complete"},
        "result": RESULT,
        "createdAt": "2026-03-20T09:59:58Z",
        "updatedAt": "2026-03-20T10:01:12.150Z",
        "completedAt": "2026-03-20T10:01:12.150Z",
    }
    mock.get(f"{BASE}/v1/jobs/job_variant", payload=body)
    report = await adapter.fetch_status("job_variant")
    assert report.upstream_id == "job_variant"
    assert report.state is JobState.SUCCEEDED
    assert report.native_status == "COMPLETED"
    assert report.times.created_at == datetime(2026, 3, 20, 9, 59, 58, tzinfo=UTC)
    assert report.times.updated_at == datetime(2026, 3, 20, 10, 1, 12, 150000, tzinfo=UTC)
    assert report.times.finished_at == datetime(2026, 3, 20, 10, 1, 12, 150000, tzinfo=UTC)
    assert report.times.started_at is None
    assert report.result is not None
    assert report.result.inline == RESULT


async def test_documented_timestamps(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(
        JOB_URL,
        payload=job_body(
            "failed",
            error="x",
            startedAt="2026-03-20T10:00:00.000Z",
            finishedAt="2026-03-20T10:00:35.000Z",
        ),
    )
    report = await adapter.fetch_status(JOB)
    assert report.times.started_at == NOW
    assert report.times.finished_at == NOW + timedelta(seconds=35)
    assert report.times.created_at is None


async def test_missing_id_falls_back_to_the_requested_one(
    adapter: ExtractAdapter, mock: Any
) -> None:
    body = job_body("pending", progress=None)
    del body["id"]
    mock.get(JOB_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.upstream_id == JOB
    assert report.progress == NO_PROGRESS


async def test_id_is_quoted_into_the_path(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(f"{BASE}/v1/jobs/job%2F..%2Fx", payload=job_body("pending", id="job/../x"))
    report = await adapter.fetch_status("job/../x")
    assert report.upstream_id == "job/../x"


# -- progress --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, NO_PROGRESS),
        ("4 of 10", NO_PROGRESS),
        (
            {"pagesScraped": 4, "totalPages": 10, "currentStep": "Scraping"},
            Progress(fraction=0.4, step="Scraping", step_index=4, step_count=10),
        ),
        (
            {"pagesScraped": 0, "totalPages": 0, "currentStep": "Classifying business"},
            Progress(fraction=None, step="Classifying business", step_index=0, step_count=0),
        ),
        (
            {"pagesScraped": 12, "totalPages": 10, "currentStep": ""},
            Progress(fraction=1.0, step=None, step_index=12, step_count=10),
        ),
        (
            {"pagesScraped": True, "totalPages": "10"},
            Progress(fraction=None, step=None, step_index=None, step_count=None),
        ),
        ({"pagesScraped": 3.0, "totalPages": 4.0}, Progress(0.75, None, 3, 4)),
    ],
)
def test_progress_normalisation(raw: object, expected: Progress) -> None:
    assert parse_progress(raw) == expected


async def test_progress_in_a_report(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, payload=job_body())
    report = await adapter.fetch_status(JOB)
    assert report.progress == Progress(
        fraction=0.4, step="Scraping https://linear.app/features", step_index=4, step_count=10
    )
    assert report.state is JobState.RUNNING
    assert report.result is None


# -- failure and results ---------------------------------------------------------------------------


async def test_failed_job_carries_its_error(adapter: ExtractAdapter, mock: Any) -> None:
    message = "Failed to scrape URL: Connection timeout after 30s"
    mock.get(JOB_URL, payload=job_body("failed", error=message))
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.FAILED
    assert report.error is not None
    assert report.error.code == "extract_failed"
    assert report.error.message == message
    assert report.result is None


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ({"code": "timeout", "message": "took too long"}, "timeout", "took too long"),
        (None, "extract_failed", "the extraction failed without a message"),
        ("", "extract_failed", "the extraction failed without a message"),
    ],
)
async def test_failed_job_error_variants(
    adapter: ExtractAdapter, mock: Any, raw: object, code: str, message: str
) -> None:
    mock.get(JOB_URL, payload=job_body("failed", error=raw))
    report = await adapter.fetch_status(JOB)
    assert report.error is not None
    assert (report.error.code, report.error.message) == (code, message)


async def test_completed_job_has_an_inline_locator(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, payload=job_body("completed", result=RESULT))
    report = await adapter.fetch_status(JOB)
    assert report.result is not None
    assert report.result.kind is ResultKind.INLINE
    assert report.result.partial is False
    assert report.result.inline == RESULT
    assert report.error is None


async def test_completed_job_without_result_has_no_locator(
    adapter: ExtractAdapter, mock: Any
) -> None:
    mock.get(JOB_URL, payload=job_body("completed"))
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.SUCCEEDED
    assert report.result is None


async def test_fetch_result_returns_the_inline_result(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, payload=job_body("completed", result=RESULT))
    payload = await adapter.fetch_result(JOB)
    assert payload == InlineResult(RESULT)


@pytest.mark.parametrize("native", ["pending", "processing", "failed", "weird"])
async def test_fetch_result_before_completion_is_rejected(
    adapter: ExtractAdapter, mock: Any, native: str
) -> None:
    mock.get(JOB_URL, payload=job_body(native, error="x"))
    with pytest.raises(RequestRejected) as caught:
        await adapter.fetch_result(JOB)
    assert caught.value.detail == {"status": native}


async def test_fetch_result_of_completed_job_without_result_is_malformed(
    adapter: ExtractAdapter, mock: Any
) -> None:
    mock.get(JOB_URL, payload=job_body("completed"))
    with pytest.raises(MalformedResponse):
        await adapter.fetch_result(JOB)


# -- malformed bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "processing", "progress": ',
        b"<html>ok</html>",
        b"[1, 2, 3]",
        b'"completed"',
        b'{"id": "job_abc123def456"}',
        b'{"id": "job_abc123def456", "status": 3}',
        b"",
    ],
)
async def test_malformed_status_bodies(adapter: ExtractAdapter, mock: Any, body: bytes) -> None:
    mock.get(JOB_URL, status=200, body=body, content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


# -- error bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (400, boom(400, "Bad Request", '"url" is required'), RequestRejected, '"url" is required'),
        (401, boom(401, "Unauthorized", "Invalid API key"), AuthRejected, "Invalid API key"),
        (404, boom(404, "Not Found", "Job not found"), NotFound, "Job not found"),
        (500, boom(500, "Internal Server Error", "An error"), UpstreamUnavailable, "An error"),
        (503, {"statusCode": 503, "error": "Service Unavailable"}, UpstreamUnavailable, "Service"),
        (422, {"statusCode": 422, "message": 7}, RequestRejected, "statusCode"),
    ],
)
async def test_boom_bodies_become_typed_errors(
    adapter: ExtractAdapter,
    mock: Any,
    status: int,
    body: dict[str, Any],
    error: type[Exception],
    text: str,
) -> None:
    mock.get(JOB_URL, status=status, payload=body)
    with pytest.raises(error) as caught:
        await adapter.fetch_status(JOB)
    assert text in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert getattr(caught.value, "status", None) == status
    assert getattr(caught.value, "detail", None) == body


async def test_html_error_page_is_unavailable(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, status=502, body=b"<html>Bad gateway</html>", content_type="text/html")
    with pytest.raises(UpstreamUnavailable, match="Bad gateway"):
        await adapter.fetch_status(JOB)


async def test_empty_error_body(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(JOB_URL, status=500, body=b"")
    with pytest.raises(UpstreamUnavailable, match="empty body"):
        await adapter.fetch_status(JOB)


async def test_rate_limited_with_retry_after_seconds(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(
        JOB_URL,
        status=429,
        payload=boom(429, "Too Many Requests", "Rate limit exceeded"),
        headers={"Retry-After": "17"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == pytest.approx(17.0)
    assert caught.value.hints.retry_at == NOW + timedelta(seconds=17)
    assert "Rate limit exceeded" in str(caught.value)


async def test_rate_limited_with_retry_after_http_date(adapter: ExtractAdapter, mock: Any) -> None:
    when = NOW + timedelta(seconds=42)
    mock.get(
        JOB_URL,
        status=429,
        payload=boom(429, "Too Many Requests", "Rate limit exceeded"),
        headers={"Retry-After": format_datetime(when, usegmt=True)},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == pytest.approx(42.0)
    assert caught.value.hints.retry_at == when


async def test_rate_limit_headers_reach_the_report(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(
        JOB_URL,
        payload=job_body(),
        headers={
            "X-RateLimit-Limit": "60",
            "X-RateLimit-Remaining": "3",
            "X-RateLimit-Reset": "30",
        },
    )
    report = await adapter.fetch_status(JOB)
    assert report.hints.limit == 60
    assert report.hints.remaining == 3
    assert report.hints.reset_at == NOW + timedelta(seconds=30)


async def test_the_key_is_sent_but_never_echoed(adapter: ExtractAdapter, mock: Any) -> None:
    mock.get(
        JOB_URL, status=401, payload=boom(401, "Unauthorized", f"Invalid API key {KEY} for plan")
    )
    with pytest.raises(AuthRejected) as caught:
        await adapter.fetch_status(JOB)
    assert KEY not in str(caught.value)
    assert KEY not in caught.value.message
    assert "[REDACTED]" in str(caught.value)
    assert KEY not in repr(adapter)
    assert KEY not in repr(adapter.connection)
    ((_, calls),) = mock.requests.items()
    assert calls[0].kwargs["headers"]["x-api-key"] == KEY


# -- submit ----------------------------------------------------------------------------------------


async def test_submit_posts_the_native_body(adapter: ExtractAdapter, mock: Any) -> None:
    mock.post(SUBMIT_URL, payload={"jobId": "job_new"})
    request = {"url": "https://linear.app", "maxPages": 10, "callbackUrl": "https://cb.test/x"}
    submission = await adapter.submit(request)
    assert submission.upstream_id == "job_new"
    assert submission.state is JobState.QUEUED
    assert submission.native_status is None
    call = mock.requests[("POST", URL(SUBMIT_URL))][0]
    assert orjson.loads(call.kwargs["data"]) == request
    assert call.kwargs["headers"]["x-api-key"] == KEY
    assert call.kwargs["headers"]["Content-Type"] == "application/json"


async def test_submit_answer_variants(adapter: ExtractAdapter, mock: Any) -> None:
    mock.post(SUBMIT_URL, payload={"id": "job_v", "status": "PENDING", "position": 3})
    submission = await adapter.submit({"url": "https://linear.app"})
    assert submission.upstream_id == "job_v"
    assert submission.native_status == "PENDING"
    assert submission.state is JobState.QUEUED
    assert submission.extra == {"position": 3}


async def test_submit_without_job_id_is_malformed(adapter: ExtractAdapter, mock: Any) -> None:
    mock.post(SUBMIT_URL, payload={"ok": True})
    with pytest.raises(MalformedResponse):
        await adapter.submit({"url": "https://linear.app"})


async def test_submit_validation_error(adapter: ExtractAdapter, mock: Any) -> None:
    body = boom(400, "Bad Request", '"maxPages" must be less than or equal to 20')
    mock.post(SUBMIT_URL, status=400, payload=body)
    with pytest.raises(RequestRejected, match="maxPages"):
        await adapter.submit({"url": "https://linear.app", "maxPages": 21})


async def test_submit_rate_limited(adapter: ExtractAdapter, mock: Any) -> None:
    mock.post(
        SUBMIT_URL,
        status=429,
        payload=boom(429, "Too Many Requests", "slow down"),
        headers={"Retry-After": "5"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.submit({"url": "https://linear.app"})
    assert caught.value.retry_after == pytest.approx(5.0)


# -- capabilities, push ----------------------------------------------------------------------------


def test_capabilities() -> None:
    caps = ExtractAdapter.capabilities
    assert caps.as_dict() == {
        "submit": True,
        "adopt": True,
        "cancel": False,
        "rerun": False,
        "continue": False,
        "partial_results": False,
        "push": True,
        "result_kind": "inline",
    }
    assert caps.result_kind is ResultKind.INLINE
    assert ExtractAdapter.name == "extract"


async def test_unsupported_actions(adapter: ExtractAdapter, mock: Any) -> None:
    with pytest.raises(UnsupportedAction):
        await adapter.cancel(JOB)
    with pytest.raises(UnsupportedAction):
        await adapter.rerun(JOB)
    with pytest.raises(UnsupportedAction):
        await adapter.continue_(JOB, {})
    assert not mock.requests


def test_parse_callback() -> None:
    report = ExtractAdapter.parse_callback({"jobId": JOB, "status": "completed", "result": RESULT})
    assert report.upstream_id == JOB
    assert report.state is JobState.SUCCEEDED
    assert report.result is not None
    assert report.result.inline == RESULT
    failed = ExtractAdapter.parse_callback({"jobId": JOB, "status": "failed", "result": None})
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    with pytest.raises(MalformedResponse):
        ExtractAdapter.parse_callback({"status": "completed"})
    with pytest.raises(MalformedResponse):
        ExtractAdapter.parse_callback([JOB])
