"""The Pulse adapter against mocked HTTP: statuses, errors, rate hints and result locators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from adapters.base import (
    NO_PROGRESS,
    AdapterError,
    AuthRejected,
    InlineResult,
    JobError,
    MalformedResponse,
    NotFound,
    Progress,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ResultKind,
    ResultPointer,
    UpstreamUnavailable,
)
from adapters.http import Connection
from adapters.pulse.adapter import STATUS_TABLE, PulseAdapter
from gateway.states import JobState

BASE = "https://api.example.test"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
JOB = "7f0c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
STATUS_URL = f"{BASE}/job/{JOB}"
INLINE = {"markdown": "# Title", "page_count": 2, "extraction_id": "ext-1"}

PULSE_STATUSES = {"pending", "processing", "completed", "failed", "canceled", "expired"}


@pytest.fixture
async def adapter() -> AsyncIterator[PulseAdapter]:
    async with aiohttp.ClientSession() as session:
        yield PulseAdapter(session, Connection(base_url=BASE, api_key="k"), clock=lambda: NOW)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


def job_body(status: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": JOB,
        "status": status,
        "created_at": "2026-01-02T03:00:00Z",
        "updated_at": "2026-01-02T03:01:00.500Z",
        "result": None,
        "error": None,
    }
    body.update(extra)
    return body


def sent_json(mocked: aioresponses, method: str, url: str) -> Any:
    calls = mocked.requests[(method, URL(url))]
    assert len(calls) == 1
    return orjson.loads(calls[0].kwargs["data"])


def sent_headers(mocked: aioresponses, method: str, url: str) -> dict[str, str]:
    headers: dict[str, str] = mocked.requests[(method, URL(url))][0].kwargs["headers"]
    return headers


# --------------------------------------------------------------------------------------------------
# The status table


def test_status_table_covers_every_documented_status() -> None:
    assert set(STATUS_TABLE) == PULSE_STATUSES
    assert all(key == key.lower() for key in STATUS_TABLE)
    assert PulseAdapter.status_table is STATUS_TABLE
    assert "cancelled" not in STATUS_TABLE  # Pulse spells it with one "l"


def test_capabilities() -> None:
    assert PulseAdapter.capabilities.as_dict() == {
        "submit": True,
        "adopt": True,
        "cancel": True,
        "rerun": False,
        "continue": False,
        "partial_results": False,
        "push": True,
        "result_kind": "pointer",
    }
    assert PulseAdapter.name == "pulse"


@pytest.mark.parametrize(
    ("native", "state"),
    [
        ("pending", JobState.QUEUED),
        ("processing", JobState.RUNNING),
        ("completed", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("canceled", JobState.CANCELED),
        ("expired", JobState.EXPIRED),
        ("PROCESSING", JobState.RUNNING),
        (" Completed ", JobState.SUCCEEDED),
    ],
)
async def test_every_native_status_maps(
    adapter: PulseAdapter, mocked: aioresponses, native: str, state: JobState
) -> None:
    result = INLINE if state is JobState.SUCCEEDED else None
    mocked.get(STATUS_URL, payload=job_body(native, result=result))
    report = await adapter.fetch_status(JOB)
    assert report.state is state
    assert report.native_status == native
    assert report.upstream_id == JOB


@pytest.mark.parametrize("native", ["reticulating_splines", "cancelled", "queued", ""])
async def test_unknown_status_is_none_not_an_error(
    adapter: PulseAdapter, mocked: aioresponses, native: str
) -> None:
    mocked.get(STATUS_URL, payload=job_body(native))
    if native == "":
        # An empty status is no status at all: the body has the wrong shape.
        with pytest.raises(MalformedResponse):
            await adapter.fetch_status(JOB)
        return
    report = await adapter.fetch_status(JOB)
    assert report.state is None
    assert report.native_status == native
    assert report.result is None


# --------------------------------------------------------------------------------------------------
# Progress, errors and timestamps


@pytest.mark.parametrize(
    ("native", "progress"),
    [
        ("pending", Progress(step="pending")),
        ("processing", Progress(step="processing")),
        ("completed", NO_PROGRESS),
        ("failed", NO_PROGRESS),
        ("canceled", NO_PROGRESS),
        ("mystery", NO_PROGRESS),
    ],
)
async def test_progress_is_only_the_native_step(
    adapter: PulseAdapter, mocked: aioresponses, native: str, progress: Progress
) -> None:
    result = INLINE if native == "completed" else None
    mocked.get(STATUS_URL, payload=job_body(native, result=result))
    report = await adapter.fetch_status(JOB)
    assert report.progress == progress
    assert report.progress.fraction is None


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("Failed to download file", JobError("failed", "Failed to download file")),
        (
            {"code": "FILE_UNREADABLE", "message": "corrupt PDF"},
            JobError("FILE_UNREADABLE", "corrupt PDF"),
        ),
        ({"message": "no code"}, JobError("failed", "no code")),
        (None, JobError("failed", "the job failed without an error message")),
    ],
)
async def test_failed_job_error_variants(
    adapter: PulseAdapter, mocked: aioresponses, error: Any, expected: JobError
) -> None:
    mocked.get(STATUS_URL, payload=job_body("failed", error=error))
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.FAILED
    assert report.error == expected


async def test_error_is_ignored_unless_failed(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload=job_body("processing", error="transient note"))
    assert (await adapter.fetch_status(JOB)).error is None


async def test_timestamps(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload=job_body("processing"))
    mocked.get(STATUS_URL, payload=job_body("canceled"))
    running = await adapter.fetch_status(JOB)
    assert running.times.created_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert running.times.updated_at == datetime(2026, 1, 2, 3, 1, 0, 500_000, tzinfo=UTC)
    assert running.times.finished_at is None
    canceled = await adapter.fetch_status(JOB)
    assert canceled.times.finished_at == canceled.times.updated_at


async def test_timestamps_as_epoch_and_missing(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload={"status": "pending", "created_at": 1767323045})
    report = await adapter.fetch_status(JOB)
    assert report.times.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert report.times.updated_at is None


# --------------------------------------------------------------------------------------------------
# Ids


async def test_status_without_job_id_keeps_the_requested_one(
    adapter: PulseAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, payload={"status": "pending"})
    assert (await adapter.fetch_status(JOB)).upstream_id == JOB


async def test_ids_are_quoted_into_the_path(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(f"{BASE}/job/a%2Fb", payload={"job_id": "a/b", "status": "pending"})
    assert (await adapter.fetch_status("a/b")).upstream_id == "a/b"
    assert adapter.large_result_url("a/b") == f"{BASE}/large_results/a%2Fb"


@pytest.mark.parametrize("id_field", ["job_id", "jobId", "id"])
async def test_submit_id_variants(
    adapter: PulseAdapter, mocked: aioresponses, id_field: str
) -> None:
    mocked.post(f"{BASE}/extract", payload={id_field: "job-9", "status": "pending"})
    submission = await adapter.submit({"fileUrl": "https://docs.test/a.pdf"})
    assert submission.upstream_id == "job-9"
    assert submission.state is JobState.QUEUED


async def test_submit_sends_json_with_async_true(
    adapter: PulseAdapter, mocked: aioresponses
) -> None:
    mocked.post(
        f"{BASE}/extract",
        payload={
            "job_id": "job-1",
            "status": "pending",
            "message": "accepted",
            "queuedAt": "2026-01-02T03:04:05Z",
        },
    )
    request = {"fileUrl": "https://docs.test/a.pdf", "pages": "1-2", "async": False}
    submission = await adapter.submit(request)
    assert sent_json(mocked, "POST", f"{BASE}/extract") == {
        "fileUrl": "https://docs.test/a.pdf",
        "pages": "1-2",
        "async": True,
    }
    headers = sent_headers(mocked, "POST", f"{BASE}/extract")
    assert headers["x-api-key"] == "k"
    assert headers["Content-Type"] == "application/json"
    assert request["async"] is False, "the caller's mapping is not modified"
    assert submission.native_status == "pending"
    assert submission.extra == {"message": "accepted", "queuedAt": "2026-01-02T03:04:05Z"}


@pytest.mark.parametrize(
    "body", [{"status": "pending"}, {"job_id": ""}, ["job-1"], "job-1", {"job_id": 12}]
)
async def test_submit_without_an_id_is_malformed(
    adapter: PulseAdapter, mocked: aioresponses, body: Any
) -> None:
    mocked.post(f"{BASE}/extract", payload=body)
    with pytest.raises(MalformedResponse):
        await adapter.submit({"fileUrl": "https://docs.test/a.pdf"})


# --------------------------------------------------------------------------------------------------
# Error bodies


def pulse_error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


@pytest.mark.parametrize(
    ("status", "body", "error_type", "fragment"),
    [
        (400, pulse_error("INVALID_REQUEST", "fileUrl required", {"f": 1}), RequestRejected, "I"),
        (401, pulse_error("MISSING_API_KEY", "Missing API key"), AuthRejected, "MISSING_API_KEY"),
        (403, pulse_error("FORBIDDEN", "Plan does not allow"), AuthRejected, "Plan does not"),
        (404, pulse_error("JOB_NOT_FOUND", "Job not found"), NotFound, "JOB_NOT_FOUND"),
        (410, pulse_error("GONE", "Large result expired"), ResultExpired, "GONE"),
        (413, pulse_error("PAYLOAD_TOO_LARGE", "File too large"), RequestRejected, "too large"),
        (429, pulse_error("RATE_LIMITED", "Slow down"), RateLimited, "Slow down"),
        (500, pulse_error("INTERNAL_ERROR", "Boom"), UpstreamUnavailable, "INTERNAL_ERROR"),
        (503, pulse_error("UNAVAILABLE", "Maintenance"), UpstreamUnavailable, "Maintenance"),
        (401, {"error": "Unauthorized"}, AuthRejected, "Unauthorized"),
        (400, {"message": "Bad pages value"}, RequestRejected, "Bad pages value"),
        (422, {"detail": "Unprocessable"}, RequestRejected, "Unprocessable"),
        (404, {"error": {"message": "no code here"}}, NotFound, "no code here"),
        (400, {"unexpected": True}, RequestRejected, "unexpected"),
    ],
)
async def test_error_bodies_become_typed_errors(
    adapter: PulseAdapter,
    mocked: aioresponses,
    status: int,
    body: dict[str, Any],
    error_type: type[AdapterError],
    fragment: str,
) -> None:
    mocked.get(STATUS_URL, status=status, payload=body)
    with pytest.raises(error_type) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.status == status
    assert fragment in caught.value.message
    assert caught.value.message.startswith(f"pulse: HTTP {status}: ")


async def test_error_details_are_kept(adapter: PulseAdapter, mocked: aioresponses) -> None:
    details = {"fields": ["fileUrl", "file"]}
    mocked.post(
        f"{BASE}/extract", status=400, payload=pulse_error("INVALID_REQUEST", "missing", details)
    )
    with pytest.raises(RequestRejected) as caught:
        await adapter.submit({})
    assert caught.value.detail == details
    assert caught.value.message == "pulse: HTTP 400: INVALID_REQUEST: missing"


async def test_html_gateway_page_is_unavailable(
    adapter: PulseAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, status=502, body="<html><body>Bad Gateway</body></html>")
    with pytest.raises(UpstreamUnavailable) as caught:
        await adapter.fetch_status(JOB)
    assert "Bad Gateway" in caught.value.message


async def test_empty_error_body(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.delete(STATUS_URL, status=404, body="")
    with pytest.raises(NotFound) as caught:
        await adapter.cancel(JOB)
    assert "empty body" in caught.value.message


async def test_connection_failure_is_unavailable(
    adapter: PulseAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, exception=aiohttp.ClientConnectionError("refused"))
    with pytest.raises(UpstreamUnavailable):
        await adapter.fetch_status(JOB)


async def test_timeout_is_unavailable(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, exception=TimeoutError())
    with pytest.raises(UpstreamUnavailable) as caught:
        await adapter.fetch_status(JOB)
    assert "timed out" in caught.value.message


def test_error_message_is_pure(adapter: PulseAdapter) -> None:
    assert adapter.error_message(pulse_error("X", "y", [1])) == ("X: y", [1])
    assert adapter.error_message({"error": {"code": "X"}}) == ("X: no message", None)
    assert adapter.error_message(None) == ("empty body", None)
    assert adapter.error_message("x" * 900)[0] == "x" * 500


# --------------------------------------------------------------------------------------------------
# Rate limits


async def test_retry_after_in_seconds(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(
        STATUS_URL,
        status=429,
        payload=pulse_error("RATE_LIMITED", "Too many requests"),
        headers={"Retry-After": "7"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == 7.0
    assert caught.value.hints.retry_at == NOW + timedelta(seconds=7)


async def test_retry_after_as_an_http_date(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(
        STATUS_URL,
        status=429,
        payload=pulse_error("RATE_LIMITED", "Too many requests"),
        headers={"Retry-After": "Fri, 02 Jan 2026 03:04:35 GMT"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == 30.0
    assert caught.value.hints.retry_at == NOW + timedelta(seconds=30)


async def test_429_without_a_hint(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, status=429, payload=pulse_error("RATE_LIMITED", "Too many"))
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == 0.0
    assert caught.value.hints.empty


async def test_rate_limit_headers_on_success(adapter: PulseAdapter, mocked: aioresponses) -> None:
    reset = int((NOW + timedelta(minutes=1)).timestamp())
    mocked.get(
        STATUS_URL,
        payload=job_body("processing"),
        headers={
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "3",
            "X-RateLimit-Reset": str(reset),
        },
    )
    report = await adapter.fetch_status(JOB)
    assert report.hints.limit == 100
    assert report.hints.remaining == 3
    assert report.hints.reset_at == NOW + timedelta(minutes=1)


async def test_submit_carries_hints(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.post(
        f"{BASE}/extract",
        payload={"job_id": "j", "status": "pending"},
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"},
    )
    submission = await adapter.submit({"fileUrl": "https://docs.test/a.pdf"})
    assert submission.hints.remaining == 0
    assert submission.hints.reset_at == NOW + timedelta(seconds=30)


# --------------------------------------------------------------------------------------------------
# Malformed bodies


async def test_non_json_body_is_malformed(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(
        STATUS_URL, status=200, body='{"status": "processing", "progress": ', content_type="text"
    )
    with pytest.raises(MalformedResponse) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.status == 200


@pytest.mark.parametrize(
    "body",
    [
        ["pending"],
        "pending",
        42,
        {"job_id": JOB},
        {"job_id": JOB, "status": 3},
        {"job_id": JOB, "status": None},
        {"job_id": JOB, "status": "completed", "result": None},
        {"job_id": JOB, "status": "completed", "result": {"is_url": True}},
        {"job_id": JOB, "status": "completed", "result": {"is_url": True, "url": " "}},
        {"job_id": JOB, "status": "completed", "result": {"is_url": True, "url": 5}},
    ],
)
async def test_json_of_the_wrong_shape_is_malformed(
    adapter: PulseAdapter, mocked: aioresponses, body: Any
) -> None:
    mocked.get(STATUS_URL, payload=body)
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


async def test_empty_success_body_is_malformed(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, status=200, body="")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


# --------------------------------------------------------------------------------------------------
# Result locators


async def test_inline_result(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload=job_body("completed", result=INLINE))
    report = await adapter.fetch_status(JOB)
    assert report.result is not None
    assert report.result.kind is ResultKind.INLINE
    assert report.result.inline == INLINE
    assert report.result.url is None
    assert not report.result.partial


@pytest.mark.parametrize(
    ("url", "needs_key"),
    [
        (f"{BASE}/large_results/{JOB}", True),
        (f"{BASE}/large_results/{JOB}?download=1", True),
        ("HTTPS://API.EXAMPLE.TEST/large_results/j", True),
        ("https://api.example.test:443/large_results/j", True),
        (
            "https://pulse-results.s3.amazonaws.com/j.json?X-Amz-Signature=ab&X-Amz-Expires=86400",
            False,
        ),
        (f"{BASE}/large_results/{JOB}?X-Amz-Signature=ab", False),
        (f"{BASE}/presigned/{JOB}?X-Amz-Signature=ab", False),
        ("https://evil.example/large_results/j", False),
        ("https://api.example.test.evil.example/large_results/j", False),
        ("http://api.example.test/large_results/j", False),
        ("https://api.example.test:8443/large_results/j", False),
        ("https://api.example.test/large_results/", False),
        ("https://api.example.test/other/large_results/j", False),
    ],
)
async def test_pointer_needs_the_key_only_on_the_proxy(
    adapter: PulseAdapter, mocked: aioresponses, url: str, needs_key: bool
) -> None:
    pointer = {
        "is_url": True,
        "url": url,
        "extraction_id": "ext-7",
        "page_count": 120,
        "plan_info": {"tier": "growth"},
        "unrelated": "dropped",
    }
    mocked.get(STATUS_URL, payload=job_body("completed", result=pointer))
    report = await adapter.fetch_status(JOB)
    locator = report.result
    assert locator is not None
    assert locator.kind is ResultKind.POINTER
    assert locator.url == url
    assert locator.needs_provider_key is needs_key
    assert locator.inline is None
    assert locator.meta == {
        "extraction_id": "ext-7",
        "page_count": 120,
        "plan_info": {"tier": "growth"},
    }


async def test_relative_pointer_is_made_absolute(
    adapter: PulseAdapter, mocked: aioresponses
) -> None:
    pointer = {"is_url": "true", "url": f"large_results/{JOB}"}
    mocked.get(STATUS_URL, payload=job_body("completed", result=pointer))
    locator = (await adapter.fetch_status(JOB)).result
    assert locator is not None
    assert locator.url == f"{BASE}/large_results/{JOB}"
    assert locator.needs_provider_key is True
    assert locator.meta == {}


async def test_is_url_false_means_inline(adapter: PulseAdapter, mocked: aioresponses) -> None:
    result = {"is_url": False, "markdown": "small", "page_count": 1}
    mocked.get(STATUS_URL, payload=job_body("completed", result=result))
    locator = (await adapter.fetch_status(JOB)).result
    assert locator is not None
    assert locator.kind is ResultKind.INLINE
    assert locator.inline == result


async def test_proxy_under_a_base_path() -> None:
    async with aiohttp.ClientSession() as session:
        adapter = PulseAdapter(session, Connection(base_url="https://h.test/pulse/", api_key="k"))
        assert adapter.needs_provider_key("https://h.test/pulse/large_results/j")
        assert not adapter.needs_provider_key("https://h.test/large_results/j")
        assert not adapter.needs_provider_key("https://h.test/pulsex/large_results/j")
        assert adapter.large_result_url("j") == "https://h.test/pulse/large_results/j"


async def test_fetch_result_inline(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload=job_body("completed", result=INLINE))
    assert await adapter.fetch_result(JOB) == InlineResult(data=INLINE)


async def test_fetch_result_pointer(adapter: PulseAdapter, mocked: aioresponses) -> None:
    url = "https://bucket.s3.amazonaws.com/r.json?X-Amz-Signature=1"
    result = {"is_url": True, "url": url, "page_count": 80}
    mocked.get(STATUS_URL, payload=job_body("completed", result=result))
    payload = await adapter.fetch_result(JOB)
    assert payload == ResultPointer(url=url, needs_provider_key=False, meta={"page_count": 80})


async def test_fetch_result_of_an_expired_job(adapter: PulseAdapter, mocked: aioresponses) -> None:
    stub = {"extraction_id": "ext-1", "message": "purged"}
    mocked.get(STATUS_URL, payload=job_body("expired", result=stub))
    mocked.get(STATUS_URL, payload=job_body("expired", result=stub))
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.EXPIRED
    assert report.result is None, "a retention stub is not a result"
    with pytest.raises(ResultExpired):
        await adapter.fetch_result(JOB)


@pytest.mark.parametrize("native", ["pending", "processing", "failed", "canceled", "mystery"])
async def test_fetch_result_without_a_result(
    adapter: PulseAdapter, mocked: aioresponses, native: str
) -> None:
    mocked.get(STATUS_URL, payload=job_body(native))
    with pytest.raises(NotFound) as caught:
        await adapter.fetch_result(JOB)
    assert caught.value.detail == {"status": native}


# --------------------------------------------------------------------------------------------------
# Cancel and unsupported actions


async def test_cancel_uses_delete(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.delete(STATUS_URL, payload={"job_id": JOB, "message": "Job cancelled successfully"})
    answer = await adapter.cancel(JOB)
    assert answer.upstream_id == JOB
    assert answer.state is None, "the next poll decides whether the job stopped"
    assert answer.extra == {"message": "Job cancelled successfully"}
    assert sent_headers(mocked, "DELETE", STATUS_URL)["x-api-key"] == "k"


async def test_cancel_answer_shapes(adapter: PulseAdapter, mocked: aioresponses) -> None:
    mocked.delete(STATUS_URL, payload={})
    mocked.delete(STATUS_URL, payload=["nope"])
    assert (await adapter.cancel(JOB)).upstream_id == JOB
    with pytest.raises(MalformedResponse):
        await adapter.cancel(JOB)


async def test_rerun_and_continue_are_unsupported(adapter: PulseAdapter) -> None:
    with pytest.raises(AdapterError) as caught:
        await adapter.rerun(JOB)
    assert caught.value.code == "action_not_supported"
    with pytest.raises(AdapterError):
        await adapter.continue_(JOB, {})


# --------------------------------------------------------------------------------------------------
# Secrets


async def test_the_key_never_leaks(mocked: aioresponses) -> None:
    secret = "sk-pulse-very-secret"
    async with aiohttp.ClientSession() as session:
        adapter = PulseAdapter(session, Connection(base_url=BASE, api_key=secret))
        mocked.get(STATUS_URL, status=401, payload=pulse_error("INVALID_API_KEY", "Invalid key"))
        with pytest.raises(AuthRejected) as caught:
            await adapter.fetch_status(JOB)
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
        assert secret not in repr(adapter)
        assert secret not in repr(adapter.connection)
