"""The platform adapter against mocked HTTP (aioresponses): nothing leaves the machine."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from adapters.base import (
    AuthRejected,
    InlineResult,
    JobError,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultKind,
    UnsupportedAction,
    UpstreamUnavailable,
)
from adapters.http import Connection
from adapters.platform.adapter import STATUS_TABLE, PlatformAdapter
from gateway.states import JobState

BASE = "https://api.example.test/v1/api"
NOW = datetime(2025, 1, 20, 10, 0, tzinfo=UTC)
JOB_ID = "job_abc123"
JOB_URL = f"{BASE}/jobs/{JOB_ID}"
SECRET = "sk-platform-very-secret"


def job(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": JOB_ID,
        "type": "document_processing",
        "status": "running",
        "progress": 40,
        "result": None,
        "createdAt": "2025-01-20T10:00:00Z",
        "completedAt": None,
    }
    data.update(overrides)
    return data


def ok(data: Any) -> dict[str, Any]:
    return {"data": data, "error": None}


def failure(name: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"data": None, "error": {"name": name, "message": message, "details": details or {}}}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def adapter(session: aiohttp.ClientSession) -> PlatformAdapter:
    return PlatformAdapter(session, Connection(base_url=BASE, api_key="k"), clock=lambda: NOW)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


def sent_headers(mocked: aioresponses, method: str, url: str) -> dict[str, str]:
    calls = mocked.requests[(method, URL(url))]
    headers: dict[str, str] = calls[-1].kwargs["headers"]
    return headers


# -- the table and the capabilities ----------------------------------------------------------------


def test_table_covers_every_documented_status_once() -> None:
    documented = {"pending", "running", "completed", "failed", "cancelled"}
    assert documented <= set(STATUS_TABLE)
    assert all(key == key.lower() for key in STATUS_TABLE)
    assert STATUS_TABLE["cancelled"] is JobState.CANCELED
    assert STATUS_TABLE["canceled"] is JobState.CANCELED


def test_capabilities() -> None:
    caps = PlatformAdapter.capabilities
    assert (caps.submit, caps.cancel, caps.rerun, caps.continue_) == (False, False, True, False)
    assert caps.result_kind is ResultKind.INLINE
    assert PlatformAdapter.name == "platform"
    assert PlatformAdapter.status_table is STATUS_TABLE


# -- statuses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("native", "state"),
    [
        ("pending", JobState.QUEUED),
        ("running", JobState.RUNNING),
        ("completed", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("cancelled", JobState.CANCELED),
        ("canceled", JobState.CANCELED),
        ("COMPLETED", JobState.SUCCEEDED),
        ("Cancelled", JobState.CANCELED),
    ],
)
async def test_every_status_maps(
    adapter: PlatformAdapter, mocked: aioresponses, native: str, state: JobState
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status=native)))
    report = await adapter.fetch_status(JOB_ID)
    assert report.state is state
    assert report.native_status == native
    assert report.progress.step == native
    assert report.upstream_id == JOB_ID
    assert report.job_type == "document_processing"


async def test_unknown_status_is_none_not_an_error(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="reticulating_splines")))
    report = await adapter.fetch_status(JOB_ID)
    assert report.state is None
    assert report.native_status == "reticulating_splines"
    assert report.error is None
    assert report.result is None


async def test_sends_bearer_auth(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, payload=ok(job()))
    await adapter.fetch_status(JOB_ID)
    headers = sent_headers(mocked, "GET", JOB_URL)
    assert headers["Authorization"] == "Bearer k"
    assert "x-api-key" not in {name.lower() for name in headers}


async def test_completed_job_has_inline_locator_and_times(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    result = {"documentsProcessed": 50, "errors": 0}
    mocked.get(
        JOB_URL,
        payload=ok(
            job(
                status="completed",
                progress=100,
                result=result,
                completedAt="2025-01-20T10:05:00Z",
            )
        ),
    )
    report = await adapter.fetch_status(JOB_ID)
    assert report.state is JobState.SUCCEEDED
    assert report.result is not None
    assert report.result.kind is ResultKind.INLINE
    assert report.result.inline == result
    assert not report.result.partial
    assert report.times.created_at == NOW
    assert report.times.finished_at == NOW + timedelta(minutes=5)
    assert report.error is None


async def test_running_job_has_no_result(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="running", result={"partial": True})))
    report = await adapter.fetch_status(JOB_ID)
    assert report.result is None
    assert report.times.finished_at is None


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"result": {"errors": 1, "error": {"name": "ProcessingError", "message": "bad page"}}},
            JobError("ProcessingError", "bad page"),
        ),
        ({"result": {"error": "parser crashed"}}, JobError("platform_failed", "parser crashed")),
        (
            {"result": None, "error": {"code": "timeout", "message": "took too long"}},
            JobError("timeout", "took too long"),
        ),
        ({"result": None, "error": "boom"}, JobError("platform_failed", "boom")),
        ({"result": {"error": {"name": "OnlyName"}}}, JobError("OnlyName", "OnlyName")),
        ({"result": {"documentsProcessed": 3, "errors": 1}}, None),
        ({"result": None}, None),
        ({"result": "a string", "error": {}}, None),
    ],
)
async def test_failed_job_error(
    adapter: PlatformAdapter,
    mocked: aioresponses,
    data: dict[str, Any],
    expected: JobError | None,
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="failed", progress=60, **data)))
    report = await adapter.fetch_status(JOB_ID)
    assert report.state is JobState.FAILED
    assert report.error is not None
    if expected is None:
        assert report.error.code == "platform_failed"
        assert report.error.message
    else:
        assert report.error == expected
    assert report.result is None


# -- progress --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fraction"),
    [
        (0, 0.0),
        (50, 0.5),
        (100, 1.0),
        (150, 1.0),
        (-5, 0.0),
        (33.3, 0.333),
        ("42", 0.42),
        ("75%", 0.75),
        (None, None),
        (True, None),
        ({"percent": 5}, None),
        ("lots", None),
    ],
)
async def test_progress_normalisation(
    adapter: PlatformAdapter, mocked: aioresponses, raw: Any, fraction: float | None
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="running", progress=raw)))
    report = await adapter.fetch_status(JOB_ID)
    if fraction is None:
        assert report.progress.fraction is None
    else:
        assert report.progress.fraction == pytest.approx(fraction)
    assert report.progress.step == "running"


async def test_missing_progress_key(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    data = job(status="pending")
    del data["progress"]
    mocked.get(JOB_URL, payload=ok(data))
    report = await adapter.fetch_status(JOB_ID)
    assert report.progress.fraction is None


async def test_completed_without_progress_counts_as_done(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="completed", progress=None, result={})))
    report = await adapter.fetch_status(JOB_ID)
    assert report.progress.fraction == 1.0


# -- envelope errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "error_type"),
    [
        (400, "ValidationError", RequestRejected),
        (401, "AuthenticationError", AuthRejected),
        (403, "AuthorizationError", AuthRejected),
        (404, "NotFoundError", NotFound),
        (409, "ConflictError", RequestRejected),
        (422, "ValidationError", RequestRejected),
        (429, "RateLimitError", RateLimited),
        (500, "InternalServerError", UpstreamUnavailable),
        (503, "ServiceUnavailableError", UpstreamUnavailable),
    ],
)
async def test_envelope_errors(
    adapter: PlatformAdapter,
    mocked: aioresponses,
    status: int,
    name: str,
    error_type: type[Exception],
) -> None:
    body = failure(name, "something went wrong", {"field": "id"})
    mocked.get(JOB_URL, status=status, payload=body)
    with pytest.raises(error_type) as caught:
        await adapter.fetch_status(JOB_ID)
    error = caught.value
    assert isinstance(error, error_type)
    message = str(error)
    assert f"HTTP {status}" in message
    assert f"{name}: something went wrong" in message
    assert getattr(error, "status", None) == status
    assert getattr(error, "detail", None) == {"name": name, "details": {"field": "id"}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"data": None, "error": "plain string error"}, "plain string error"),
        ({"data": None, "error": {"message": "no name"}}, "no name"),
        ({"data": None, "error": {"name": "OnlyName"}}, "OnlyName"),
        ({"name": "NotFoundError", "message": "bare error"}, "NotFoundError: bare error"),
        ({"unexpected": True}, "unexpected"),
    ],
)
async def test_error_body_variants(
    adapter: PlatformAdapter, mocked: aioresponses, body: Any, expected: str
) -> None:
    mocked.get(JOB_URL, status=404, payload=body)
    with pytest.raises(NotFound, match=expected):
        await adapter.fetch_status(JOB_ID)


async def test_html_5xx_is_unavailable(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    with pytest.raises(UpstreamUnavailable, match="Bad Gateway"):
        await adapter.fetch_status(JOB_ID)


async def test_empty_error_body(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, status=500, body=b"")
    with pytest.raises(UpstreamUnavailable, match="empty body"):
        await adapter.fetch_status(JOB_ID)


async def test_timeout_is_unavailable(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, exception=TimeoutError())
    with pytest.raises(UpstreamUnavailable, match="timed out"):
        await adapter.fetch_status(JOB_ID)


async def test_connection_error_is_unavailable(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, exception=aiohttp.ClientConnectionError("refused"))
    with pytest.raises(UpstreamUnavailable):
        await adapter.fetch_status(JOB_ID)


# -- malformed bodies ------------------------------------------------------------------------------


async def test_non_json_success_is_malformed(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, status=200, body='{"data": {"status": ', content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB_ID)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([job()], "expected a JSON object"),
        ("just a string", "expected a JSON object"),
        ({"status": "running", "id": JOB_ID}, "no 'data'"),
        ({"data": None, "error": None}, "null 'data'"),
        ({"data": [job()], "error": None}, "expected a JSON object"),
        ({"data": "job", "error": None}, "expected a JSON object"),
        (ok({"id": JOB_ID, "progress": 5}), "status"),
        (ok(job(status=3)), "status"),
        (ok(job(status="")), "status"),
        (ok(job(status=None)), "status"),
    ],
)
async def test_wrong_shapes_are_malformed(
    adapter: PlatformAdapter, mocked: aioresponses, body: Any, match: str
) -> None:
    mocked.get(JOB_URL, payload=body)
    with pytest.raises(MalformedResponse, match=match):
        await adapter.fetch_status(JOB_ID)


async def test_null_data_with_error_on_200_is_malformed_and_says_why(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, status=200, payload=failure("NotFoundError", "Job not found"))
    with pytest.raises(MalformedResponse, match="NotFoundError: Job not found") as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.status == 200


async def test_wrong_optional_types_are_tolerated(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job(type=7, createdAt=12.5e20, completedAt=["x"])))
    report = await adapter.fetch_status(JOB_ID)
    assert report.state is JobState.RUNNING
    assert report.job_type is None
    assert report.times.finished_at is None


# -- rate limits -----------------------------------------------------------------------------------


def reset_headers(seconds: int, remaining: int = 0) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(NOW.timestamp()) + seconds),
    }


async def test_rate_headers_on_success_become_hints(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job()), headers=reset_headers(1800, remaining=998))
    report = await adapter.fetch_status(JOB_ID)
    assert report.hints.limit == 1000
    assert report.hints.remaining == 998
    assert report.hints.reset_at == NOW + timedelta(seconds=1800)
    assert report.hints.retry_at is None


async def test_429_with_reset_gives_retry_after(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(
        JOB_URL,
        status=429,
        payload=failure("RateLimitError", "Rate limit exceeded"),
        headers=reset_headers(45),
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.retry_after == pytest.approx(45.0)
    assert caught.value.hints.reset_at == NOW + timedelta(seconds=45)
    assert caught.value.hints.remaining == 0
    assert caught.value.hints.limit == 1000
    assert "RateLimitError" in str(caught.value)


async def test_429_with_reset_in_the_past_retries_now(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(
        JOB_URL, status=429, payload=failure("RateLimitError", "x"), headers=reset_headers(-5)
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.retry_after == 0.0


async def test_429_with_retry_after_seconds(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(
        JOB_URL,
        status=429,
        payload=failure("RateLimitError", "slow down"),
        headers={"Retry-After": "7"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.retry_after == pytest.approx(7.0)
    assert caught.value.hints.retry_at == NOW + timedelta(seconds=7)


async def test_429_with_retry_after_http_date(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(
        JOB_URL,
        status=429,
        payload=failure("RateLimitError", "slow down"),
        headers={"Retry-After": "Mon, 20 Jan 2025 10:00:30 GMT"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.retry_after == pytest.approx(30.0)


async def test_429_without_any_hint(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, status=429, payload=failure("RateLimitError", "slow down"))
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB_ID)
    assert caught.value.retry_after == 0.0
    assert caught.value.hints.empty


# -- ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upstream_id",
    ["job_abc123", "3f2b8c1e-9d4a-4f6b-8e2a-1c5d7e9f0a1b", "job_0123456789abcdef0123456789abcdef"],
)
async def test_id_variants(
    adapter: PlatformAdapter, mocked: aioresponses, upstream_id: str
) -> None:
    mocked.get(f"{BASE}/jobs/{upstream_id}", payload=ok(job(id=upstream_id)))
    report = await adapter.fetch_status(upstream_id)
    assert report.upstream_id == upstream_id


async def test_id_is_quoted_into_one_path_segment(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(re.compile(r".*/jobs/.*"), payload=ok(job()))
    await adapter.fetch_status("a/b c?d")
    [(method, url)] = list(mocked.requests)
    assert method == "GET"
    assert url.raw_path.endswith("/v1/api/jobs/a%2Fb%20c%3Fd")
    assert not url.query_string


async def test_id_surrounding_space_is_stripped(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job()))
    report = await adapter.fetch_status(f"  {JOB_ID} ")
    assert report.state is JobState.RUNNING


async def test_empty_id_is_rejected_without_a_call(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    with pytest.raises(RequestRejected):
        await adapter.fetch_status("  ")
    assert not mocked.requests


# -- results ---------------------------------------------------------------------------------------


async def test_fetch_result_of_completed_job(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    result = {"documentsProcessed": 50, "errors": 0, "items": list(range(100))}
    mocked.get(JOB_URL, payload=ok(job(status="completed", progress=100, result=result)))
    payload = await adapter.fetch_result(JOB_ID)
    assert payload == InlineResult(data=result)


@pytest.mark.parametrize("native", ["pending", "running", "failed", "cancelled"])
async def test_fetch_result_of_unfinished_or_failed_job_is_rejected(
    adapter: PlatformAdapter, mocked: aioresponses, native: str
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status=native)))
    with pytest.raises(RequestRejected, match=native):
        await adapter.fetch_result(JOB_ID)


async def test_fetch_result_with_unknown_status_is_transient(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.get(JOB_URL, payload=ok(job(status="mystery")))
    with pytest.raises(MalformedResponse, match="mystery"):
        await adapter.fetch_result(JOB_ID)


async def test_fetch_result_has_one_page(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    with pytest.raises(RequestRejected, match="page 2"):
        await adapter.fetch_result(JOB_ID, page=2)
    assert not mocked.requests


async def test_fetch_result_unknown_job(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.get(JOB_URL, status=404, payload=failure("NotFoundError", "Job not found"))
    with pytest.raises(NotFound):
        await adapter.fetch_result(JOB_ID)


# -- rerun -----------------------------------------------------------------------------------------


async def test_rerun_returns_the_new_job(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    mocked.post(
        f"{JOB_URL}/rerun",
        payload=ok(
            {
                "id": "job_new123",
                "type": "document_processing",
                "status": "pending",
                "originalJobId": JOB_ID,
                "createdAt": "2025-01-20T12:00:00Z",
            }
        ),
        headers=reset_headers(60, remaining=10),
    )
    submission = await adapter.rerun(JOB_ID)
    assert submission.upstream_id == "job_new123"
    assert submission.original_id == JOB_ID
    assert submission.native_status == "pending"
    assert submission.state is JobState.QUEUED
    assert submission.hints.remaining == 10
    assert submission.extra == {
        "type": "document_processing",
        "createdAt": "2025-01-20T12:00:00Z",
    }
    assert sent_headers(mocked, "POST", f"{JOB_URL}/rerun")["Authorization"] == "Bearer k"


async def test_rerun_without_original_or_status_fills_them(
    adapter: PlatformAdapter, mocked: aioresponses
) -> None:
    mocked.post(f"{JOB_URL}/rerun", payload=ok({"id": "job_new456"}))
    submission = await adapter.rerun(JOB_ID)
    assert submission.upstream_id == "job_new456"
    assert submission.original_id == JOB_ID
    assert submission.native_status == "pending"
    assert submission.state is JobState.QUEUED


@pytest.mark.parametrize(
    "body",
    [ok({"type": "export", "status": "pending"}), ok(None), {"id": "job_x"}, ok({"id": 5})],
)
async def test_rerun_malformed(adapter: PlatformAdapter, mocked: aioresponses, body: Any) -> None:
    mocked.post(f"{JOB_URL}/rerun", payload=body)
    with pytest.raises(MalformedResponse):
        await adapter.rerun(JOB_ID)


@pytest.mark.parametrize(
    ("status", "name", "error_type"),
    [
        (409, "ConflictError", RequestRejected),
        (400, "ValidationError", RequestRejected),
        (404, "NotFoundError", NotFound),
        (429, "RateLimitError", RateLimited),
    ],
)
async def test_rerun_errors(
    adapter: PlatformAdapter,
    mocked: aioresponses,
    status: int,
    name: str,
    error_type: type[Exception],
) -> None:
    mocked.post(f"{JOB_URL}/rerun", status=status, payload=failure(name, "cannot rerun"))
    with pytest.raises(error_type, match=name):
        await adapter.rerun(JOB_ID)


# -- unsupported actions and secrets ---------------------------------------------------------------


async def test_unsupported_actions(adapter: PlatformAdapter, mocked: aioresponses) -> None:
    with pytest.raises(UnsupportedAction):
        await adapter.submit({"type": "export"})
    with pytest.raises(UnsupportedAction):
        await adapter.cancel(JOB_ID)
    with pytest.raises(UnsupportedAction):
        await adapter.continue_(JOB_ID, {})
    assert not mocked.requests


async def test_key_never_in_messages_or_repr(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    adapter = PlatformAdapter(session, Connection(base_url=BASE, api_key=SECRET), clock=lambda: NOW)
    mocked.get(JOB_URL, status=401, payload=failure("AuthenticationError", "Invalid API key"))
    with pytest.raises(AuthRejected) as caught:
        await adapter.fetch_status(JOB_ID)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert SECRET not in repr(adapter)
    assert SECRET not in repr(adapter.connection)
    assert sent_headers(mocked, "GET", JOB_URL)["Authorization"] == f"Bearer {SECRET}"
