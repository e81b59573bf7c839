"""The CatchAll adapter and the official CatchAll SDK against the CatchAll sandbox, over sockets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from newscatcher_catchall import AsyncCatchAllApi
from newscatcher_catchall.errors import ForbiddenError, NotFoundError, UnprocessableEntityError

from adapters.base import (
    TRANSIENT_ERRORS,
    AuthRejected,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultKind,
    ResultPage,
    StatusReport,
    UpstreamUnavailable,
)
from adapters.catchall.adapter import CatchAllAdapter
from adapters.catchall.sandbox import JOBS_KEY, LARGE_POOL, create_app
from adapters.http import Connection
from adapters.simulator import PREFIX_KEY, SETTINGS_KEY, SandboxSettings
from gateway.states import JobState

pytestmark = pytest.mark.integration

Serve = Callable[[web.Application], Awaitable[str]]
KEY = "test-key"
MAX_POLLS = 500
# Stage boundaries at speed 1, in seconds from submit.
ENRICHING_AT = 30 + 90 + 240 + 150
DONE_AT = ENRICHING_AT + 210
CONTINUE_SECONDS = 180


class FakeClock:
    """A monotonic clock the test moves by hand, so stage boundaries are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def start(serve: Serve, settings: SandboxSettings) -> tuple[str, web.Application]:
    app = create_app(settings)
    return await serve(app), app


def adapter_for(session: aiohttp.ClientSession, base: str, key: str = KEY) -> CatchAllAdapter:
    return CatchAllAdapter(session, Connection(base_url=base, api_key=key))


async def poll_until_finished(adapter: CatchAllAdapter, job_id: str) -> list[StatusReport]:
    """Poll on the real clock until the job is finished; transient errors are retried."""
    reports: list[StatusReport] = []
    for _ in range(MAX_POLLS):
        try:
            report = await adapter.fetch_status(job_id)
        except TRANSIENT_ERRORS:
            await asyncio.sleep(0.02)
            continue
        reports.append(report)
        if report.state in (JobState.SUCCEEDED, JobState.FAILED):
            return reports
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {MAX_POLLS} polls")


async def drain(adapter: CatchAllAdapter, job_id: str, page_size: int) -> list[ResultPage]:
    first = await adapter.fetch_result(job_id, page=1, page_size=page_size)
    pages = [first]
    for number in range(2, first.total_pages + 1):
        pages.append(await adapter.fetch_result(job_id, page=number, page_size=page_size))
    return pages


def ids(pages: list[ResultPage]) -> list[str]:
    return [record["record_id"] for page in pages for record in page.records]


# --------------------------------------------------------------------------------------------------
# Whole lives


async def test_whole_life_to_completed_drains_every_page(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> None:
    base, app = await start(serve, fast_sandbox)
    adapter = adapter_for(http_session, base)
    submission = await adapter.submit({"query": "Battery plant openings sandbox=large"})
    assert submission.state is JobState.QUEUED
    assert len(app[JOBS_KEY]) == 1

    reports = await poll_until_finished(adapter, submission.upstream_id)
    final = reports[-1]
    assert final.state is JobState.SUCCEEDED
    assert final.native_status == "completed"
    assert final.result is not None
    assert final.result.kind is ResultKind.PAGED
    assert final.result.partial is False
    fractions = [r.progress.fraction for r in reports if r.progress.fraction is not None]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert all(r.progress.step_count == 5 for r in reports)
    assert {r.state for r in reports} <= {JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED}

    pages = await drain(adapter, submission.upstream_id, 1000)
    assert len(pages) == pages[0].total_pages == 3
    records = ids(pages)
    assert len(records) == pages[0].total_records == LARGE_POOL
    assert len(set(records)) == len(records)
    assert all(not page.partial for page in pages)
    assert pages[0].meta["valid_records"] == LARGE_POOL
    assert pages[0].meta["status"] == "completed"
    again = await adapter.fetch_result(submission.upstream_id, page=2, page_size=1000)
    assert again.records == pages[1].records
    beyond = await adapter.fetch_result(submission.upstream_id, page=4, page_size=1000)
    assert beyond.records == []


async def test_default_page_size_and_record_shape(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> None:
    base, _ = await start(serve, fast_sandbox)
    adapter = adapter_for(http_session, base)
    submission = await adapter.submit({"query": "Fintech acquisitions sandbox=expire"})
    assert (await poll_until_finished(adapter, submission.upstream_id))[-1].state is (
        JobState.SUCCEEDED
    )
    first = await adapter.fetch_result(submission.upstream_id)
    assert first.page_size == 100
    assert first.total_records is not None
    assert 120 <= first.total_records < 200
    pages = await drain(adapter, submission.upstream_id, 100)
    assert len(ids(pages)) == first.total_records
    sample = first.records[0]
    assert set(sample) == {"record_id", "record_title", "enrichment", "citations"}
    assert sample["enrichment"]["enrichment_confidence"] in {"low", "medium", "high"}
    assert sample["citations"]
    assert {"title", "link", "published_date"} <= set(sample["citations"][0])


async def test_partial_pull_during_enriching(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, seed=3, clock=clock))
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "Data centre deals", "limit": 100})).upstream_id

    clock.advance(ENRICHING_AT - 1)
    before = await adapter.fetch_status(job_id)
    assert before.native_status == "clustering"
    assert before.result is None
    assert (await adapter.fetch_result(job_id)).records == []

    clock.advance(1 + 105)
    report = await adapter.fetch_status(job_id)
    assert report.state is JobState.RUNNING
    assert report.native_status == "enriching"
    assert report.progress.step_index == 5
    assert report.result is not None
    assert report.result.partial is True
    early = await adapter.fetch_result(job_id)
    assert early.partial is True
    assert early.total_records is not None
    assert 0 < early.total_records < 100
    assert len(early.records) == early.total_records
    assert early.meta["progress_validated"] < early.meta["candidate_records"]

    clock.advance(50)
    later = await adapter.fetch_result(job_id)
    assert later.total_records is not None
    assert later.total_records > early.total_records
    assert later.records[: len(early.records)] == early.records

    clock.advance(DONE_AT)
    done = await adapter.fetch_result(job_id)
    assert done.partial is False
    assert done.total_records == 100
    assert (await adapter.fetch_status(job_id)).state is JobState.SUCCEEDED


async def test_continue_brings_more_records(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, seed=4, clock=clock))
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "Chip export rules", "limit": 10})).upstream_id

    with pytest.raises(RequestRejected, match="completed"):
        await adapter.continue_(job_id, {"new_limit": 20})
    clock.advance(DONE_AT)
    assert (await adapter.fetch_status(job_id)).state is JobState.SUCCEEDED
    first = await drain(adapter, job_id, 1000)
    assert len(ids(first)) == first[0].total_records == 10

    with pytest.raises(RequestRejected, match="greater than the previous limit"):
        await adapter.continue_(job_id, {"new_limit": 10})
    with pytest.raises(RequestRejected):
        await adapter.continue_(job_id, {"new_limit": "lots"})

    resumed = await adapter.continue_(job_id, {"new_limit": 25})
    assert resumed.upstream_id == job_id
    assert resumed.state is JobState.RUNNING
    assert resumed.extra["previous_limit"] == 10
    assert resumed.extra["new_limit"] == 25

    again = await adapter.fetch_status(job_id)
    assert again.state is JobState.RUNNING
    assert again.native_status == "enriching"
    assert again.result is not None
    assert again.result.partial is True
    assert again.progress.fraction == pytest.approx(0.8)

    clock.advance(CONTINUE_SECONDS / 2)
    middle = await adapter.fetch_result(job_id, page_size=1000)
    assert middle.total_records is not None
    assert 10 <= middle.total_records < 25
    assert middle.partial is True

    clock.advance(CONTINUE_SECONDS)
    assert (await adapter.fetch_status(job_id)).state is JobState.SUCCEEDED
    after = await drain(adapter, job_id, 1000)
    assert len(ids(after)) == after[0].total_records == 25
    assert ids(after)[:10] == ids(first)
    assert after[0].meta["limit"] == 25


async def test_continue_needs_a_limit(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, clock=clock))
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "No limit here"})).upstream_id
    clock.advance(DONE_AT)
    with pytest.raises(RequestRejected, match="without a limit"):
        await adapter.continue_(job_id, {"new_limit": 50})


async def test_fail_scenario(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> None:
    base, _ = await start(serve, fast_sandbox)
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "Doomed search sandbox=fail"})).upstream_id
    reports = await poll_until_finished(adapter, job_id)
    final = reports[-1]
    assert final.state is JobState.FAILED
    assert final.native_status == "failed"
    assert final.error is not None
    assert final.result is None
    assert final.progress.step == "enriching"
    assert all(r.native_status != "enriching" for r in reports)
    page = await adapter.fetch_result(job_id)
    assert page.records == []
    assert page.total_records == 0
    assert "clustering" in page.meta["error"]


async def test_scenario_header_is_honoured(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> None:
    base, _ = await start(serve, fast_sandbox)
    async with http_session.post(
        f"{base}/catchAll/submit",
        json={"query": "An innocent query"},
        headers={"x-api-key": KEY, "X-Sandbox-Scenario": "fail"},
    ) as response:
        assert response.status == 200
        job_id = (await response.json())["job_id"]
    adapter = adapter_for(http_session, base)
    assert (await poll_until_finished(adapter, job_id))[-1].state is JobState.FAILED


async def test_slow_scenario_takes_longer(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, clock=clock))
    adapter = adapter_for(http_session, base)
    quick = (await adapter.submit({"query": "Quick one"})).upstream_id
    slow = (await adapter.submit({"query": "Slow one sandbox=slow"})).upstream_id
    clock.advance(DONE_AT)
    assert (await adapter.fetch_status(quick)).state is JobState.SUCCEEDED
    assert (await adapter.fetch_status(slow)).state in (JobState.QUEUED, JobState.RUNNING)
    clock.advance(DONE_AT * 3)
    assert (await adapter.fetch_status(slow)).state is JobState.SUCCEEDED


# --------------------------------------------------------------------------------------------------
# Faults


async def test_every_fault_is_typed(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    settings = SandboxSettings(speed=1.0, faults=1.0, seed=11, clock=FakeClock())
    base, _ = await start(serve, settings)
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "Faulty"})).upstream_id
    outcomes: dict[str, list[Any]] = {}
    for _ in range(40):
        try:
            report = await adapter.fetch_status(job_id)
        except RateLimited as exc:
            outcomes.setdefault("rate_limited", []).append(exc.retry_after)
        except UpstreamUnavailable as exc:
            outcomes.setdefault("server_error", []).append((exc.status, exc.message))
        except MalformedResponse as exc:
            outcomes.setdefault("malformed", []).append(exc.code)
        else:
            outcomes.setdefault("unknown_status", []).append((report.state, report.native_status))
    assert set(outcomes) == {"rate_limited", "server_error", "malformed", "unknown_status"}
    assert all(0.0 < wait <= 1.0 for wait in outcomes["rate_limited"])
    assert all(
        status == 500 and "Internal Server Error" in message
        for status, message in outcomes["server_error"]
    )
    assert set(outcomes["unknown_status"]) == {(None, "reticulating_splines")}
    # Results are not a status call: they never misbehave.
    assert (await adapter.fetch_result(job_id)).records == []
    settings.faults = 0.0
    assert (await adapter.fetch_status(job_id)).state is JobState.QUEUED


async def test_flaky_scenario_still_completes(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, seed=5, clock=clock))
    adapter = adapter_for(http_session, base)
    job_id = (await adapter.submit({"query": "Wobbly sandbox=flaky"})).upstream_id
    troubles = 0
    final: StatusReport | None = None
    for _ in range(MAX_POLLS):
        clock.advance(30)
        try:
            report = await adapter.fetch_status(job_id)
        except TRANSIENT_ERRORS:
            troubles += 1
            continue
        if report.state is None:
            troubles += 1
            continue
        if report.state is JobState.SUCCEEDED:
            final = report
            break
    assert final is not None
    assert troubles > 0
    assert final.result is not None
    assert final.result.partial is False


async def test_concurrency_cap(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    base, app = await start(serve, SandboxSettings(speed=1.0, clock=clock))
    adapter = adapter_for(http_session, base)
    for n in range(20):
        await adapter.submit({"query": f"Job {n}"})
    with pytest.raises(RateLimited) as caught:
        await adapter.submit({"query": "One too many"})
    assert caught.value.status == 429
    assert caught.value.retry_after > 600
    assert "Concurrent job limit" in caught.value.message
    assert len(app[JOBS_KEY]) == 20
    other = adapter_for(http_session, base, key="another-key")
    await other.submit({"query": "Another tenant"})
    clock.advance(DONE_AT)
    await adapter.submit({"query": "Room again"})
    assert len(app[JOBS_KEY]) == 22


# --------------------------------------------------------------------------------------------------
# Auth, unknown jobs, validation, listing


async def test_403_without_a_key(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    base, _ = await start(serve, SandboxSettings(speed=1000.0, api_keys=frozenset({KEY})))
    good = adapter_for(http_session, base)
    job_id = (await good.submit({"query": "Mine"})).upstream_id
    for key in ("", "wrong-key"):
        bad = adapter_for(http_session, base, key=key)
        with pytest.raises(AuthRejected) as caught:
            await bad.fetch_status(job_id)
        assert caught.value.status == 403
        assert "Invalid API key" in caught.value.message
        with pytest.raises(AuthRejected):
            await bad.submit({"query": "q"})
    async with http_session.get(f"{base}/catchAll/status/{job_id}") as response:
        assert response.status == 403
        assert await response.json() == {"detail": "Invalid API key"}
    for path, body in (("/health", {"healthy": True}), ("/version", {"version": "1.6.3"})):
        async with http_session.get(base + path) as response:
            assert response.status == 200
            assert await response.json() == body


async def test_404_unknown_job(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    base, _ = await start(serve, SandboxSettings(speed=1000.0))
    adapter = adapter_for(http_session, base)
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFound, match="not found"):
        await adapter.fetch_status(unknown)
    with pytest.raises(NotFound):
        await adapter.fetch_result(unknown)
    with pytest.raises(NotFound):
        await adapter.continue_(unknown, {"new_limit": 20})
    theirs = (await adapter_for(http_session, base, "other").submit({"query": "x"})).upstream_id
    with pytest.raises(NotFound):
        await adapter.fetch_status(theirs)
    async with http_session.get(f"{base}/catchAll/nowhere", headers={"x-api-key": KEY}) as response:
        assert response.status == 404
        assert await response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize(
    ("request_body", "locs"),
    [
        ({"limit": 5}, {("body", "query"), ("body", "limit")}),
        ({"query": "q", "limit": "ten"}, {("body", "limit")}),
        ({"query": "q", "mode": "turbo"}, {("body", "mode")}),
        ({"query": "q", "start_date": "last tuesday"}, {("body", "start_date")}),
        (
            {"query": "q", "validators": [{"name": "v", "description": "d", "type": "text"}]},
            {("body", "validators", 0, "type")},
        ),
        (
            {"query": "q", "enrichments": [{"name": "e", "description": "d"}]},
            {("body", "enrichments", 0, "type")},
        ),
        ({"query": "q", "webhook_ids": ["w"] * 6}, {("body", "webhook_ids")}),
    ],
)
async def test_submit_validation_is_422(
    serve: Serve,
    http_session: aiohttp.ClientSession,
    request_body: dict[str, Any],
    locs: set[tuple[Any, ...]],
) -> None:
    base, app = await start(serve, SandboxSettings(speed=1000.0))
    adapter = adapter_for(http_session, base)
    with pytest.raises(RequestRejected) as caught:
        await adapter.submit(request_body)
    assert caught.value.status == 422
    assert isinstance(caught.value.detail, list)
    assert {tuple(issue["loc"]) for issue in caught.value.detail} == locs
    assert all({"loc", "msg", "type"} <= set(issue) for issue in caught.value.detail)
    assert len(app[JOBS_KEY]) == 0


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (
            {
                "query": "q",
                "start_date": "2026-01-10T00:00:00Z",
                "end_date": "2026-01-01T00:00:00Z",
            },
            "after start_date",
        ),
        ({"query": "q", "start_date": "2000-01-01T00:00:00Z"}, "search depth"),
        ({"query": "q", "connected_dataset_ids": ["ds_1"]}, "Dataset"),
    ],
)
async def test_submit_business_rules_are_400(
    serve: Serve, http_session: aiohttp.ClientSession, request_body: dict[str, Any], message: str
) -> None:
    base, _ = await start(serve, SandboxSettings(speed=1000.0))
    with pytest.raises(RequestRejected, match=message) as caught:
        await adapter_for(http_session, base).submit(request_body)
    assert caught.value.status == 400


async def test_pull_page_size_is_capped(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    base, _ = await start(serve, SandboxSettings(speed=1000.0))
    job_id = (await adapter_for(http_session, base).submit({"query": "q"})).upstream_id
    async with http_session.get(
        f"{base}/catchAll/pull/{job_id}", params={"page_size": 1001}, headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 422
        body = await response.json()
    assert body["detail"][0]["loc"] == ["query", "page_size"]


async def test_list_newest_first_and_soft_delete(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    base, app = await start(serve, SandboxSettings(speed=1000.0))
    adapter = adapter_for(http_session, base)
    made = [(await adapter.submit({"query": f"Query {n}"})).upstream_id for n in range(3)]
    headers = {"x-api-key": KEY}
    async with http_session.get(f"{base}/catchAll/jobs/user", headers=headers) as response:
        listing = await response.json()
    assert listing["total"] == 3
    assert [job["job_id"] for job in listing["jobs"]] == made[::-1]
    async with http_session.delete(f"{base}/catchAll/jobs/{made[1]}", headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["success"] is True
    async with http_session.get(
        f"{base}/catchAll/jobs/user", params={"page": 1, "page_size": 1}, headers=headers
    ) as response:
        listing = await response.json()
    assert (listing["total"], listing["total_pages"]) == (2, 2)
    assert [job["job_id"] for job in listing["jobs"]] == [made[2]]
    # A soft delete keeps the job: it still answers, and the store still holds it.
    assert (await adapter.fetch_status(made[1])).native_status
    assert len(app[JOBS_KEY]) == 3


async def test_mounted_under_a_prefix(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> None:
    root = web.Application()
    root[SETTINGS_KEY] = fast_sandbox
    sub = create_app(fast_sandbox)
    sub[PREFIX_KEY] = "/catchall"
    root.add_subapp("/catchall", sub)
    base = await serve(root)
    adapter = adapter_for(http_session, f"{base}/catchall")
    job_id = (await adapter.submit({"query": "Mounted", "limit": 10})).upstream_id
    assert len(sub[JOBS_KEY]) == 1
    assert (await poll_until_finished(adapter, job_id))[-1].state is JobState.SUCCEEDED
    assert (await adapter.fetch_result(job_id)).total_records == 10
    async with http_session.get(f"{base}/catchall/health") as response:
        assert await response.json() == {"healthy": True}


# --------------------------------------------------------------------------------------------------
# The official SDK, unmodified, against the sandbox


async def test_official_sdk_whole_job_life(serve: Serve) -> None:
    clock = FakeClock()
    base, _ = await start(serve, SandboxSettings(speed=1.0, seed=9, clock=clock))
    async with httpx.AsyncClient(timeout=10) as transport:
        client = AsyncCatchAllApi(base_url=base, api_key=KEY, httpx_client=transport)
        assert (await client.meta.health_check()).healthy is True
        assert (await client.meta.get_version()).version == "1.6.3"

        suggestions = await client.jobs.initialize(query="EV battery recalls")
        assert suggestions.validators
        assert suggestions.enrichments

        created = await client.jobs.create_job(
            query="EV battery recalls",
            limit=10,
            validators=suggestions.validators,
            enrichments=suggestions.enrichments,
            mode="base",
        )
        job_id = created.job_id
        status = await client.jobs.get_job_status(job_id)
        assert status.status == "submitted"
        assert status.steps is not None
        assert [s.order for s in status.steps] == list(range(1, 8))

        clock.advance(ENRICHING_AT + 100)
        status = await client.jobs.get_job_status(job_id)
        assert status.status == "enriching"
        partial = await client.jobs.get_job_results(job_id, page=1, page_size=5)
        assert partial.status == "enriching"
        assert partial.valid_records is not None
        assert partial.valid_records < 10

        clock.advance(DONE_AT)
        status = await client.jobs.get_job_status(job_id)
        assert status.status == "completed"
        assert status.steps is not None
        assert [s.completed for s in status.steps] == [True] * 6 + [False]
        seen: list[str] = []
        page_number = 1
        while True:
            page = await client.jobs.get_job_results(job_id, page=page_number, page_size=3)
            assert page.all_records is not None
            seen.extend(record.record_id for record in page.all_records)
            assert page.total_pages is not None
            if page_number >= page.total_pages:
                break
            page_number += 1
        assert len(seen) == page.valid_records == 10
        record = page.all_records[0]
        assert record.citations[0].published_date.tzinfo is not None
        assert page.date_range is not None
        assert page.date_range.start_date is not None

        resumed = await client.jobs.continue_job(job_id=job_id, new_limit=20)
        assert (resumed.previous_limit, resumed.new_limit) == (10, 20)
        assert (await client.jobs.get_job_status(job_id)).status == "enriching"
        clock.advance(CONTINUE_SECONDS)
        assert (await client.jobs.get_job_status(job_id)).status == "completed"
        final = await client.jobs.get_job_results(job_id, page_size=1000)
        assert final.valid_records == 20

        jobs = await client.jobs.get_user_jobs(page=1, page_size=10)
        assert [job.job_id for job in jobs.jobs] == [job_id]
        assert jobs.jobs[0].created_at.tzinfo is not None
        deleted = await client.jobs.delete_job(job_id)
        assert deleted.success is True
        assert (await client.jobs.get_user_jobs()).total == 0

        with pytest.raises(UnprocessableEntityError):
            await client.jobs.create_job(query="too small", limit=5)
        with pytest.raises(NotFoundError):
            await client.jobs.get_job_status(str(uuid.uuid4()))
        stranger = AsyncCatchAllApi(base_url=base, api_key="", httpx_client=transport)
        with pytest.raises(ForbiddenError):
            await stranger.jobs.get_job_status(job_id)
