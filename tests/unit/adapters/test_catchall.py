"""The CatchAll adapter against mocked HTTP: statuses, progress, errors, results, continue."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from adapters.base import (
    Adapter,
    AdapterError,
    AuthRejected,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultKind,
    UnsupportedAction,
    UpstreamUnavailable,
)
from adapters.catchall.adapter import STATUS_TABLE, CatchAllAdapter
from adapters.http import Connection
from gateway.states import JobState

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
BASE = "https://api.example.test"
SECRET = "sk_catchall_canary_do_not_leak"
JOB = "5f0c9087-85cb-4917-b3c7-e5a5eff73a0c"
STATUS_URL = f"{BASE}/catchAll/status/{JOB}"
PULL_URL = re.compile(rf"^{re.escape(BASE)}/catchAll/pull/{JOB}(\?.*)?$")
ORDER = ("submitted", "analyzing", "fetching", "clustering", "enriching", "completed", "failed")


@pytest.fixture
async def adapter() -> AsyncIterator[CatchAllAdapter]:
    async with aiohttp.ClientSession() as session:
        yield CatchAllAdapter(session, Connection(BASE, SECRET), clock=lambda: NOW)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


def steps(done: int, *, failed: bool = False) -> list[dict[str, Any]]:
    """The seven steps with the first ``done`` completed (and step 7 when ``failed``)."""
    return [
        {"status": name, "order": i, "completed": i <= done or (failed and name == "failed")}
        for i, name in enumerate(ORDER, start=1)
    ]


def status_body(status: str, done: int, **extra: Any) -> dict[str, Any]:
    return {"job_id": JOB, "status": status, "steps": steps(done), **extra}


def sent(m: aioresponses, method: str) -> tuple[URL, Mapping[str, Any]]:
    """The one request made with ``method``: its URL and keyword arguments."""
    calls = [
        (url, call) for (meth, url), reqs in m.requests.items() if meth == method for call in reqs
    ]
    assert len(calls) == 1, calls
    url, call = calls[0]
    return url, call.kwargs


# --------------------------------------------------------------------------------------------------
# The status table and status reports


def test_status_table_covers_every_native_status() -> None:
    assert set(STATUS_TABLE) == set(ORDER)
    assert all(key == key.lower() for key in STATUS_TABLE)
    assert CatchAllAdapter.status_table is STATUS_TABLE


@pytest.mark.parametrize(
    ("native", "done", "state", "fraction", "step", "index"),
    [
        ("submitted", 0, JobState.QUEUED, 0.0, "submitted", 1),
        ("analyzing", 1, JobState.RUNNING, 0.2, "analyzing", 2),
        ("fetching", 2, JobState.RUNNING, 0.4, "fetching", 3),
        ("clustering", 3, JobState.RUNNING, 0.6, "clustering", 4),
        ("enriching", 4, JobState.RUNNING, 0.8, "enriching", 5),
        ("completed", 6, JobState.SUCCEEDED, 1.0, "completed", 5),
    ],
)
async def test_every_working_status(
    adapter: CatchAllAdapter,
    mocked: aioresponses,
    native: str,
    done: int,
    state: JobState,
    fraction: float,
    step: str,
    index: int,
) -> None:
    mocked.get(STATUS_URL, payload=status_body(native, done))
    report = await adapter.fetch_status(JOB)
    assert report.upstream_id == JOB
    assert report.state is state
    assert report.native_status == native
    assert report.progress.fraction == pytest.approx(fraction)
    assert (report.progress.step, report.progress.step_index, report.progress.step_count) == (
        step,
        index,
        5,
    )
    assert report.error is None


async def test_failed_reports_an_error_and_no_result(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = {"job_id": JOB, "status": "failed", "steps": steps(4, failed=True)}
    mocked.get(STATUS_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.FAILED
    assert report.error is not None
    assert report.error.code == "job_failed"
    assert report.result is None
    # It failed after clustering: the first stage not completed is where it stopped.
    assert (report.progress.step, report.progress.step_index) == ("enriching", 5)
    assert report.progress.fraction == pytest.approx(0.8)


async def test_failed_carries_the_upstream_error_text(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = {"job_id": JOB, "status": "failed", "steps": steps(2, failed=True), "error": "boom"}
    mocked.get(STATUS_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.error is not None
    assert report.error.message == "boom"
    assert report.progress.step == "fetching"


@pytest.mark.parametrize(
    ("native", "partial"),
    [("enriching", True), ("completed", False)],
)
async def test_result_locator_is_paged_and_partial_while_enriching(
    adapter: CatchAllAdapter, mocked: aioresponses, native: str, partial: bool
) -> None:
    mocked.get(STATUS_URL, payload=status_body(native, 4 if partial else 6))
    report = await adapter.fetch_status(JOB)
    assert report.result is not None
    assert report.result.kind is ResultKind.PAGED
    assert report.result.partial is partial


@pytest.mark.parametrize("native", ["submitted", "analyzing", "fetching", "clustering"])
async def test_no_result_before_enriching(
    adapter: CatchAllAdapter, mocked: aioresponses, native: str
) -> None:
    mocked.get(STATUS_URL, payload=status_body(native, ORDER.index(native)))
    assert (await adapter.fetch_status(JOB)).result is None


async def test_unknown_status_is_none_and_verbatim(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, payload=status_body("reticulating_splines", 3))
    report = await adapter.fetch_status(JOB)
    assert report.state is None
    assert report.native_status == "reticulating_splines"
    assert report.progress.fraction == pytest.approx(0.6)
    assert report.progress.step is None
    assert report.result is None
    assert report.error is None


async def test_status_case_is_kept_verbatim_but_mapped(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, payload=status_body("Completed", 6))
    report = await adapter.fetch_status(JOB)
    assert report.state is JobState.SUCCEEDED
    assert report.native_status == "Completed"


async def test_enriching_fraction_is_refined_by_validation_counts(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = status_body("enriching", 4, progress_validated=50, candidate_records=200)
    mocked.get(STATUS_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.progress.fraction == pytest.approx((4 + 0.25) / 5)


async def test_enriching_fraction_is_clamped(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = status_body("enriching", 4, progress_validated=900, candidate_records=200)
    mocked.get(STATUS_URL, payload=body)
    assert (await adapter.fetch_status(JOB)).progress.fraction == pytest.approx(1.0)


async def test_steps_are_read_by_order_when_names_are_missing(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = {
        "job_id": JOB,
        "status": "clustering",
        "steps": [{"order": 1, "completed": True}, {"order": 2, "completed": True}, "junk"],
    }
    mocked.get(STATUS_URL, payload=body)
    assert (await adapter.fetch_status(JOB)).progress.fraction == pytest.approx(0.4)


async def test_without_steps_the_fraction_comes_from_the_stage(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, payload={"job_id": JOB, "status": "fetching"})
    report = await adapter.fetch_status(JOB)
    assert report.progress.fraction == pytest.approx(0.4)
    assert report.progress.step_index == 3


async def test_timestamps_are_read_when_present(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = status_body("completed", 6, created_at="2026-11-22T09:48:00Z")
    body["completed_at"] = "2026-11-22T10:00:00+00:00"
    mocked.get(STATUS_URL, payload=body)
    report = await adapter.fetch_status(JOB)
    assert report.times.created_at == datetime(2026, 11, 22, 9, 48, tzinfo=UTC)
    assert report.times.finished_at == NOW


async def test_rate_limit_headers_become_hints(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(
        STATUS_URL,
        payload=status_body("fetching", 2),
        headers={"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "3", "Retry-After": "45"},
    )
    report = await adapter.fetch_status(JOB)
    assert report.hints.limit == 60
    assert report.hints.remaining == 3
    assert report.hints.retry_at == NOW + timedelta(seconds=45)


@pytest.mark.parametrize(
    ("job_id", "path"),
    [
        (JOB.upper(), JOB.upper()),
        ("job/with space", "job%2Fwith%20space"),
    ],
)
async def test_ids_are_quoted_and_the_answer_id_wins(
    adapter: CatchAllAdapter, mocked: aioresponses, job_id: str, path: str
) -> None:
    mocked.get(f"{BASE}/catchAll/status/{path}", payload=status_body("analyzing", 1))
    report = await adapter.fetch_status(job_id)
    assert report.upstream_id == JOB


async def test_missing_job_id_in_the_answer_keeps_the_asked_id(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, payload={"status": "analyzing"})
    assert (await adapter.fetch_status(JOB)).upstream_id == JOB


async def test_the_key_travels_in_x_api_key(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, payload=status_body("analyzing", 1))
    await adapter.fetch_status(JOB)
    _, kwargs = sent(mocked, "GET")
    assert kwargs["headers"]["x-api-key"] == SECRET


# --------------------------------------------------------------------------------------------------
# Malformed bodies


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "processing", "progress": ',
        b"<html>not json</html>",
    ],
)
async def test_undecodable_status_body_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses, body: bytes
) -> None:
    mocked.get(STATUS_URL, body=body, content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


@pytest.mark.parametrize(
    "payload",
    [
        [{"status": "completed"}],
        {"job_id": JOB},
        {"job_id": JOB, "status": 6},
        {"job_id": JOB, "status": ""},
        "completed",
    ],
)
async def test_wrong_shape_status_body_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses, payload: Any
) -> None:
    mocked.get(STATUS_URL, body=orjson.dumps(payload), content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


async def test_empty_body_is_malformed(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, body=b"", content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_status(JOB)


# --------------------------------------------------------------------------------------------------
# Error bodies


@pytest.mark.parametrize(
    ("status", "payload", "error", "message"),
    [
        (403, {"detail": "Invalid API key"}, AuthRejected, "Invalid API key"),
        (401, {"detail": "Not authenticated"}, AuthRejected, "Not authenticated"),
        (404, {"detail": f"Job {JOB} not found"}, NotFound, "not found"),
        (400, {"detail": "start_date exceeds your plan"}, RequestRejected, "plan"),
        (
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "limit"],
                        "msg": "Input should be greater than or equal to 10",
                        "type": "greater_than_equal",
                    },
                    {"loc": ["body", "query"], "msg": "Field required", "type": "missing"},
                ]
            },
            RequestRejected,
            "body.limit: Input should be greater than or equal to 10; body.query: Field required",
        ),
        (400, {"detail": {"detail": "new_limit must be greater"}}, RequestRejected, "new_limit"),
        (500, {"detail": "Internal Server Error"}, UpstreamUnavailable, "Internal Server Error"),
        (503, {"message": "upstream down"}, UpstreamUnavailable, "upstream down"),
    ],
)
async def test_error_bodies_map_to_typed_errors(
    adapter: CatchAllAdapter,
    mocked: aioresponses,
    status: int,
    payload: Any,
    error: type[AdapterError],
    message: str,
) -> None:
    mocked.get(STATUS_URL, status=status, payload=payload)
    with pytest.raises(error) as caught:
        await adapter.fetch_status(JOB)
    assert message in caught.value.message
    assert caught.value.status == status
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


async def test_422_keeps_the_structured_detail(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    issues = [{"loc": ["body", "query"], "msg": "Field required", "type": "missing"}]
    mocked.post(f"{BASE}/catchAll/submit", status=422, payload={"detail": issues})
    with pytest.raises(RequestRejected) as caught:
        await adapter.submit({"limit": 10})
    assert caught.value.detail == issues


async def test_html_500_is_unavailable(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.get(STATUS_URL, status=502, body=b"<html>Bad Gateway</html>", content_type="text/html")
    with pytest.raises(UpstreamUnavailable) as caught:
        await adapter.fetch_status(JOB)
    assert "Bad Gateway" in caught.value.message


async def test_429_with_retry_after_seconds(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.post(
        f"{BASE}/catchAll/submit",
        status=429,
        payload={"detail": "Concurrent job limit reached (20)."},
        headers={"Retry-After": "7"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.submit({"query": "q"})
    assert caught.value.retry_after == pytest.approx(7.0)
    assert caught.value.hints.retry_at == NOW + timedelta(seconds=7)
    assert "Concurrent job limit" in caught.value.message


async def test_429_with_retry_after_http_date(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(
        STATUS_URL,
        status=429,
        payload={"detail": "Rate limit exceeded"},
        headers={"Retry-After": "Sun, 22 Nov 2026 10:00:30 GMT"},
    )
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == pytest.approx(30.0)


async def test_429_without_hint_retries_at_once(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(STATUS_URL, status=429, payload={"detail": "slow down"})
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(JOB)
    assert caught.value.retry_after == 0.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"detail": "Invalid API key"}, "Invalid API key"),
        ({"detail": {"detail": "nested"}}, "nested"),
        ({"detail": {"message": "nested message"}}, "nested message"),
        (
            {"detail": [{"loc": ["query", "page_size"], "msg": "too big"}]},
            "query.page_size: too big",
        ),
        ({"detail": [{"type": "missing"}]}, "missing"),
        ({"detail": ["plain"]}, "plain"),
        ({"error": "an error"}, "an error"),
        ({"unexpected": 1}, "{'unexpected': 1}"),
        (None, "(empty body)"),
        ("<html>oops</html>", "<html>oops</html>"),
    ],
)
def test_error_message_variants(adapter: CatchAllAdapter, body: Any, message: str) -> None:
    assert adapter.error_message(body)[0] == message


def test_the_key_is_not_in_the_repr(adapter: CatchAllAdapter) -> None:
    assert SECRET not in repr(adapter)
    assert SECRET not in repr(adapter.connection)


# --------------------------------------------------------------------------------------------------
# Submit, results, continue


async def test_submit_posts_the_request_and_returns_the_job_id(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.post(f"{BASE}/catchAll/submit", payload={"job_id": JOB})
    request = {"query": "Series B rounds in fintech", "limit": 10, "mode": "lite"}
    submission = await adapter.submit(request)
    assert submission.upstream_id == JOB
    assert submission.state is JobState.QUEUED
    assert submission.native_status is None
    _, kwargs = sent(mocked, "POST")
    assert orjson.loads(kwargs["data"]) == request
    assert kwargs["headers"]["x-api-key"] == SECRET


async def test_submit_without_a_job_id_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.post(f"{BASE}/catchAll/submit", payload={"id": JOB})
    with pytest.raises(MalformedResponse):
        await adapter.submit({"query": "q"})


def record(i: int) -> dict[str, Any]:
    return {
        "record_id": f"r{i}",
        "record_title": f"Title {i}",
        "enrichment": {"enrichment_confidence": "high"},
        "citations": [
            {"title": "t", "link": "https://x.test", "published_date": "2026-11-20T00:00:00Z"}
        ],
    }


def pull_body(status: str, page: int, size: int, valid: int) -> dict[str, Any]:
    first = (page - 1) * size
    return {
        "job_id": JOB,
        "query": "q",
        "status": status,
        "error": None,
        "limit": 5000,
        "candidate_records": 300,
        "valid_records": valid,
        "progress_validated": 120,
        "page": page,
        "page_size": size,
        "total_pages": max(1, -(-valid // size)),
        "mode": "base",
        "all_records": [record(i) for i in range(first, min(valid, first + size))],
    }


async def test_fetch_result_returns_one_page(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(PULL_URL, payload=pull_body("completed", 2, 10, 25))
    page = await adapter.fetch_result(JOB, page=2, page_size=10)
    assert [r["record_id"] for r in page.records] == [f"r{i}" for i in range(10, 20)]
    assert (page.page, page.page_size, page.total_pages, page.total_records) == (2, 10, 3, 25)
    assert page.partial is False
    assert "all_records" not in page.meta
    assert page.meta["candidate_records"] == 300
    assert page.meta["progress_validated"] == 120
    url, _ = sent(mocked, "GET")
    assert url.query["page"] == "2"
    assert url.query["page_size"] == "10"


async def test_fetch_result_is_partial_while_enriching(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(PULL_URL, payload=pull_body("enriching", 1, 100, 7))
    page = await adapter.fetch_result(JOB)
    assert page.partial is True
    assert len(page.records) == 7
    url, _ = sent(mocked, "GET")
    assert url.query["page"] == "1"
    assert "page_size" not in url.query


async def test_fetch_result_clamps_the_page_size(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(PULL_URL, payload=pull_body("completed", 1, 1000, 3))
    await adapter.fetch_result(JOB, page=0, page_size=50_000)
    url, _ = sent(mocked, "GET")
    assert (url.query["page"], url.query["page_size"]) == ("1", "1000")


async def test_fetch_result_derives_missing_page_counts(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = pull_body("completed", 1, 10, 25)
    del body["total_pages"]
    mocked.get(PULL_URL, payload=body)
    assert (await adapter.fetch_result(JOB, page_size=10)).total_pages == 3


async def test_fetch_result_without_records_is_empty(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(PULL_URL, payload={"job_id": JOB, "status": "fetching", "all_records": None})
    page = await adapter.fetch_result(JOB)
    assert page.records == []
    assert page.total_records is None
    assert page.partial is True


@pytest.mark.parametrize(
    "payload",
    [[1, 2], {"job_id": JOB, "status": "completed", "all_records": {"0": {}}}],
)
async def test_fetch_result_wrong_shape_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses, payload: Any
) -> None:
    mocked.get(PULL_URL, body=orjson.dumps(payload), content_type="application/json")
    with pytest.raises(MalformedResponse):
        await adapter.fetch_result(JOB)


async def test_continue_posts_the_new_limit(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.post(
        f"{BASE}/catchAll/continue",
        payload={"job_id": JOB, "previous_limit": 10, "new_limit": 30, "status": "processing"},
    )
    submission = await adapter.continue_(JOB, {"new_limit": 30, "job_id": "ignored"})
    assert submission.upstream_id == JOB
    assert submission.state is JobState.RUNNING
    assert submission.native_status == "processing"
    assert submission.extra == {"previous_limit": 10, "new_limit": 30, "status": "processing"}
    _, kwargs = sent(mocked, "POST")
    assert orjson.loads(kwargs["data"]) == {"job_id": JOB, "new_limit": 30}


async def test_continue_rejected(adapter: CatchAllAdapter, mocked: aioresponses) -> None:
    mocked.post(
        f"{BASE}/catchAll/continue",
        status=400,
        payload={"detail": "new_limit must be greater than the previous limit (10)"},
    )
    with pytest.raises(RequestRejected, match="previous limit"):
        await adapter.continue_(JOB, {"new_limit": 5})


def test_capabilities() -> None:
    caps = CatchAllAdapter.capabilities
    assert caps.as_dict() == {
        "submit": True,
        "adopt": True,
        "cancel": False,
        "rerun": False,
        "continue": True,
        "partial_results": True,
        "push": True,
        "result_kind": "paged",
    }
    assert caps.result_kind is ResultKind.PAGED
    assert CatchAllAdapter.name == "catchall"


def test_it_is_an_adapter(adapter: CatchAllAdapter) -> None:
    assert isinstance(adapter, Adapter)


async def test_cancel_and_rerun_are_unsupported(adapter: CatchAllAdapter) -> None:
    with pytest.raises(UnsupportedAction):
        await adapter.cancel(JOB)
    with pytest.raises(UnsupportedAction):
        await adapter.rerun(JOB)
