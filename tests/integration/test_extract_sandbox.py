"""The extract adapter against its sandbox over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from adapters.base import (
    TRANSIENT_ERRORS,
    AdapterError,
    AuthRejected,
    InlineResult,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    StatusReport,
    UpstreamUnavailable,
)
from adapters.extract.adapter import ExtractAdapter
from adapters.extract.sandbox import (
    FAIL_MESSAGE,
    JOBS_KEY,
    LARGE_ITEMS,
    RateLimit,
    create_app,
)
from adapters.http import Connection
from adapters.simulator import (
    PREFIX_KEY,
    SCENARIO_HEADER,
    UNKNOWN_STATUS_VALUE,
    SandboxSettings,
)
from gateway.states import FINISHED, JobState

pytestmark = pytest.mark.integration

Serve = Callable[[web.Application], Awaitable[str]]
KEY = "sk_ks_integration_key"
SITE = "https://linear.app/"
MAX_POLLS = 400


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def start(
    serve: Serve,
    session: aiohttp.ClientSession,
    settings: SandboxSettings,
    *,
    key: str = KEY,
    **app_options: Any,
) -> tuple[ExtractAdapter, web.Application, str]:
    app = create_app(settings, **app_options)
    base = await serve(app)
    return ExtractAdapter(session, Connection(base_url=base, api_key=key)), app, base


async def poll_until_finished(adapter: ExtractAdapter, job_id: str) -> list[StatusReport]:
    """Every report until the job finishes; transient errors are skipped, as the runner would."""
    reports: list[StatusReport] = []
    for _ in range(MAX_POLLS):
        try:
            report = await adapter.fetch_status(job_id)
        except TRANSIENT_ERRORS:
            await asyncio.sleep(0.02)
            continue
        reports.append(report)
        if report.state in FINISHED:
            return reports
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish; last report {reports[-1:]}")


# -- a whole life ----------------------------------------------------------------------------------


async def test_whole_life_to_completed(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, app, _ = await start(serve, http_session, SandboxSettings(speed=100.0, seed=3))
    submission = await adapter.submit({"url": SITE, "maxPages": 10})
    assert submission.upstream_id.startswith("job_")
    assert submission.state is JobState.QUEUED
    assert len(app[JOBS_KEY]) == 1

    reports = await poll_until_finished(adapter, submission.upstream_id)
    states = [r.state for r in reports]
    assert states[-1] is JobState.SUCCEEDED
    assert JobState.RUNNING in states
    assert states.index(JobState.RUNNING) < states.index(JobState.SUCCEEDED)
    fractions = [r.progress.fraction for r in reports if r.state is JobState.RUNNING]
    assert any(f is not None and 0.0 < f < 1.0 for f in fractions), fractions
    known = [f for f in fractions if f is not None]
    assert known == sorted(known)
    running = next(r for r in reports if r.state is JobState.RUNNING)
    assert running.progress.step_count == 10
    assert running.progress.step
    assert running.times.started_at is not None
    assert running.times.finished_at is None

    final = reports[-1]
    assert final.upstream_id == submission.upstream_id
    assert final.progress.fraction == 1.0
    assert final.progress.step == "Complete"
    assert final.times.finished_at is not None
    assert final.times.started_at is not None
    assert final.times.finished_at > final.times.started_at
    assert final.result is not None

    payload = await adapter.fetch_result(submission.upstream_id)
    assert isinstance(payload, InlineResult)
    assert payload.data == final.result.inline
    assert payload.data["business"]["domain"] == "linear.app"
    assert payload.data["pagesScraped"] == 10
    assert len(payload.data["knowledgeItems"]) == 20
    assert payload.data["urlsDiscovered"] >= 10
    assert len(app[JOBS_KEY]) == 1


async def test_pending_first_with_null_progress(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=1.0, clock=clock))
    submission = await adapter.submit({"url": SITE, "singlePage": True})
    report = await adapter.fetch_status(submission.upstream_id)
    assert report.state is JobState.QUEUED
    assert report.native_status == "pending"
    assert report.progress.fraction is None
    assert report.times.started_at is None
    clock.now += 10.0
    report = await adapter.fetch_status(submission.upstream_id)
    assert report.state is JobState.RUNNING
    assert report.progress.step_count == 1
    clock.now += 600.0
    report = await adapter.fetch_status(submission.upstream_id)
    assert report.state is JobState.SUCCEEDED
    assert report.progress.step_index == 1
    assert isinstance(await adapter.fetch_result(submission.upstream_id), InlineResult)
    pending = await adapter.submit({"url": SITE})
    with pytest.raises(RequestRejected) as caught:
        await adapter.fetch_result(pending.upstream_id)
    assert caught.value.detail == {"status": "pending"}


# -- scenarios -------------------------------------------------------------------------------------


async def test_fail_scenario(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=200.0, seed=3))
    submission = await adapter.submit({"url": f"{SITE}?sandbox=fail", "maxPages": 10})
    reports = await poll_until_finished(adapter, submission.upstream_id)
    final = reports[-1]
    assert final.state is JobState.FAILED
    assert final.native_status == "failed"
    assert final.error is not None
    assert final.error.code == "extract_failed"
    assert final.error.message == FAIL_MESSAGE
    assert final.result is None
    assert final.progress.step == "Failed"
    assert final.progress.step_index == 2
    assert final.progress.step_count == 10
    with pytest.raises(RequestRejected, match="no result"):
        await adapter.fetch_result(submission.upstream_id)


async def test_scenario_header(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    _, app, base = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    async with http_session.post(
        f"{base}/v1/extract/async",
        json={"url": SITE, "maxPages": 4},
        headers={"x-api-key": KEY, SCENARIO_HEADER: "fail"},
    ) as response:
        assert response.status == 200
        job_id = (await response.json())["jobId"]
    adapter = ExtractAdapter(http_session, Connection(base_url=base, api_key=KEY))
    reports = await poll_until_finished(adapter, job_id)
    assert reports[-1].state is JobState.FAILED
    assert app[JOBS_KEY].jobs[job_id].scenario == "fail"


async def test_large_scenario(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    submission = await adapter.submit({"url": f"{SITE}?sandbox=large", "maxPages": 3})
    reports = await poll_until_finished(adapter, submission.upstream_id)
    assert reports[-1].state is JobState.SUCCEEDED
    assert reports[-1].progress.step_count == 20
    payload = await adapter.fetch_result(submission.upstream_id)
    assert isinstance(payload, InlineResult)
    assert len(payload.data["knowledgeItems"]) == LARGE_ITEMS
    assert payload.data["pagesScraped"] == 20


async def test_flaky_scenario_misbehaves_yet_completes(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=500.0, seed=11))
    submission = await adapter.submit({"url": f"{SITE}?sandbox=flaky"})
    seen: set[type[AdapterError]] = set()
    unknown = 0
    completed = False
    for _ in range(MAX_POLLS):
        try:
            report = await adapter.fetch_status(submission.upstream_id)
        except TRANSIENT_ERRORS as exc:
            seen.add(type(exc))
        else:
            unknown += report.state is None
            completed = completed or report.state is JobState.SUCCEEDED
        if completed and len(seen) == 3 and unknown:
            break
        await asyncio.sleep(0.005)
    assert completed
    assert seen == {UpstreamUnavailable, RateLimited, MalformedResponse}
    assert unknown > 0


async def test_every_fault_kind(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, _ = await start(
        serve, http_session, SandboxSettings(speed=1000.0, seed=5, faults=1.0)
    )
    submission = await adapter.submit({"url": SITE})
    errors: list[AdapterError] = []
    reports: list[StatusReport] = []
    for _ in range(40):
        try:
            reports.append(await adapter.fetch_status(submission.upstream_id))
        except TRANSIENT_ERRORS as exc:
            errors.append(exc)
    kinds = {type(e) for e in errors}
    assert kinds == {RateLimited, UpstreamUnavailable, MalformedResponse}
    assert reports
    for error in errors:
        if isinstance(error, RateLimited):
            assert error.status == 429
            assert error.retry_after == pytest.approx(1.0, abs=0.5)
            assert error.hints.retry_at is not None
            assert "Rate limit" in error.message
        elif isinstance(error, UpstreamUnavailable):
            assert error.status == 500
            assert error.detail["statusCode"] == 500
    for report in reports:
        assert report.state is None
        assert report.native_status == UNKNOWN_STATUS_VALUE
        assert report.upstream_id == submission.upstream_id


# -- rate limit ------------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    adapter, _, _ = await start(
        serve,
        http_session,
        SandboxSettings(speed=1.0, clock=clock),
        rate_limit=RateLimit(requests=3, per=60.0),
    )
    submission = await adapter.submit({"url": SITE})
    await adapter.fetch_status(submission.upstream_id)
    clock.now += 20.0
    await adapter.fetch_status(submission.upstream_id)
    with pytest.raises(RateLimited) as caught:
        await adapter.fetch_status(submission.upstream_id)
    # The oldest of the three requests leaves the window 40 s from now.
    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(40.0, abs=1.5)
    assert caught.value.hints.retry_at is not None
    assert caught.value.detail["error"] == "Too Many Requests"
    with pytest.raises(RateLimited):
        await adapter.submit({"url": SITE})
    clock.now += 41.0
    report = await adapter.fetch_status(submission.upstream_id)
    assert report.upstream_id == submission.upstream_id


async def test_rate_limit_is_per_key(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, base = await start(
        serve,
        http_session,
        SandboxSettings(speed=1.0, clock=FakeClock()),
        rate_limit=RateLimit(requests=1, per=60.0),
    )
    other = ExtractAdapter(http_session, Connection(base_url=base, api_key="sk_ks_other"))
    job_id = (await adapter.submit({"url": SITE})).upstream_id
    with pytest.raises(RateLimited):
        await adapter.fetch_status(job_id)
    assert (await other.fetch_status(job_id)).upstream_id == job_id


async def test_default_rate_limit_allows_bursts_at_high_speed(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=1))
    job_id = (await adapter.submit({"url": SITE})).upstream_id
    reports = await asyncio.gather(*(adapter.fetch_status(job_id) for _ in range(150)))
    assert len(reports) == 150


# -- callbacks -------------------------------------------------------------------------------------


def receiver(bodies: list[Any], failures: int = 0) -> tuple[web.Application, asyncio.Event]:
    """A tiny callback receiver that answers 500 ``failures`` times, then 204."""
    got = asyncio.Event()
    calls = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= failures:
            return web.Response(status=500)
        bodies.append(await request.json())
        got.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app, got


async def test_callback_is_posted_when_the_job_ends(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    bodies: list[Any] = []
    hook_app, got = receiver(bodies)
    hook_base = await serve(hook_app)
    adapter, app, _ = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    submission = await adapter.submit({"url": SITE, "callbackUrl": f"{hook_base}/hook"})
    await asyncio.wait_for(got.wait(), timeout=5.0)
    (body,) = bodies
    assert set(body) == {"jobId", "status", "result"}
    assert body["jobId"] == submission.upstream_id
    assert body["status"] == "completed"
    assert body["result"]["business"]["domain"] == "linear.app"
    report = ExtractAdapter.parse_callback(body)
    assert report.state is JobState.SUCCEEDED
    assert report.result is not None
    final = await adapter.fetch_status(submission.upstream_id)
    assert final.result is not None
    assert report.result.inline == final.result.inline
    assert app[JOBS_KEY].jobs[submission.upstream_id].callback.attempts == 1


async def test_callback_for_a_failed_job_is_retried(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    bodies: list[Any] = []
    hook_app, got = receiver(bodies, failures=1)
    hook_base = await serve(hook_app)
    adapter, app, _ = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    with capture_logs() as logs:
        submission = await adapter.submit(
            {"url": f"{SITE}?sandbox=fail", "callbackUrl": f"{hook_base}/hook"}
        )
        await asyncio.wait_for(got.wait(), timeout=5.0)
    assert bodies == [{"jobId": submission.upstream_id, "status": "failed", "result": None}]
    state = app[JOBS_KEY].jobs[submission.upstream_id].callback
    assert state.attempts == 2
    assert state.delivered
    failed = [e for e in logs if e["event"] == "extract_callback_failed"]
    assert len(failed) == 1
    assert failed[0]["outcome"] == "HTTP 500"


async def test_unreachable_callback_gives_up_quietly(
    serve: Serve, http_session: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    adapter, app, _ = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    hook = f"http://127.0.0.1:{unused_tcp_port}/hook"
    submission = await adapter.submit({"url": SITE, "callbackUrl": hook})
    state = app[JOBS_KEY].jobs[submission.upstream_id].callback
    for _ in range(MAX_POLLS):
        if state.gave_up:
            break
        await asyncio.sleep(0.02)
    assert state.gave_up
    assert not state.delivered
    assert state.attempts == 3
    # The sandbox still serves the job.
    assert (await adapter.fetch_status(submission.upstream_id)).state is JobState.SUCCEEDED


# -- aliases, streaming ----------------------------------------------------------------------------


async def test_business_async_alias(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, app, base = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    async with http_session.post(
        f"{base}/v1/business/async", json={"url": SITE, "maxPages": 2}, headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert set(body) == {"jobId"}
    assert len(app[JOBS_KEY]) == 1
    reports = await poll_until_finished(adapter, body["jobId"])
    assert reports[-1].state is JobState.SUCCEEDED
    assert reports[-1].progress.step_count == 2


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    text = await response.text()
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


@pytest.mark.parametrize("path", ["/v1/extract/stream", "/v1/business/stream"])
async def test_stream_delivers_complete(
    serve: Serve, http_session: aiohttp.ClientSession, path: str
) -> None:
    _, app, base = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    async with http_session.post(
        f"{base}{path}", json={"url": SITE, "maxPages": 5}, headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = await read_events(response)
    names = [name for name, _ in events]
    assert names[0] == "connected"
    assert names[-1] == "complete"
    for expected in ("business_classified", "pages_planned", "urls_triaged", "progress"):
        assert expected in names
    assert names.index("pages_planned") < names.index("page_scraped")
    pages = [data for name, data in events if name == "page_scraped"]
    assert [p["index"] for p in pages] == [0, 1, 2, 3, 4]
    assert all(p["total"] == 5 and p["status"] == "success" for p in pages)
    assert pages[0]["url"] == SITE
    result = events[-1][1]["result"]
    assert result["pagesScraped"] == 5
    assert result["business"]["domain"] == "linear.app"
    assert len(app[JOBS_KEY]) == 0


async def test_stream_of_a_failing_run_ends_with_error(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    _, _, base = await start(serve, http_session, SandboxSettings(speed=1000.0, seed=3))
    async with http_session.post(
        f"{base}/v1/extract/stream",
        json={"url": f"{SITE}?sandbox=fail", "maxPages": 8},
        headers={"x-api-key": KEY},
    ) as response:
        events = await read_events(response)
    assert events[-1] == ("error", {"error": FAIL_MESSAGE})
    scraped = [data for name, data in events if name == "page_scraped"]
    assert [p["status"] for p in scraped] == ["success", "success", "failed"]
    assert "complete" not in [name for name, _ in events]


# -- auth, not found, validation -------------------------------------------------------------------


async def test_missing_key_is_401(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, base = await start(serve, http_session, SandboxSettings(speed=1000.0), key="")
    with pytest.raises(AuthRejected) as caught:
        await adapter.submit({"url": SITE})
    assert caught.value.status == 401
    assert caught.value.detail == {
        "statusCode": 401,
        "error": "Unauthorized",
        "message": "Missing API key",
    }
    async with http_session.get(f"{base}/v1/jobs/job_x") as response:
        assert response.status == 401


async def test_unknown_key_is_401_and_never_echoed(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    settings = SandboxSettings(speed=1000.0, api_keys=frozenset({"sk_ks_good"}))
    bad = "sk_ks_wrong_secret"
    adapter, _, _ = await start(serve, http_session, settings, key=bad)
    with pytest.raises(AuthRejected) as caught:
        await adapter.fetch_status("job_x")
    assert "Invalid API key" in str(caught.value)
    assert bad not in str(caught.value)
    assert bad not in repr(caught.value.detail)


async def test_unknown_job_is_404(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    adapter, _, _ = await start(serve, http_session, SandboxSettings(speed=1000.0))
    with pytest.raises(NotFound) as caught:
        await adapter.fetch_status("job_doesnotexist")
    assert caught.value.detail == {
        "statusCode": 404,
        "error": "Not Found",
        "message": "Job not found",
    }
    with pytest.raises(NotFound):
        await adapter.fetch_result("job_doesnotexist")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"maxPages": 3}, "url"),
        ({"url": "ftp://linear.app"}, "url"),
        ({"url": 7}, "url"),
        ({"url": SITE, "maxPages": 0}, "maxPages"),
        ({"url": SITE, "maxPages": 21}, "maxPages"),
        ({"url": SITE, "maxPages": "5"}, "maxPages"),
        ({"url": SITE, "singlePage": "yes"}, "singlePage"),
        ({"url": SITE, "includePatterns": "/docs"}, "includePatterns"),
        ({"url": SITE, "callbackUrl": "not a url"}, "callbackUrl"),
    ],
)
async def test_invalid_bodies_are_400(
    serve: Serve, http_session: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    adapter, app, _ = await start(serve, http_session, SandboxSettings(speed=1000.0))
    with pytest.raises(RequestRejected) as caught:
        await adapter.submit(body)
    assert caught.value.status == 400
    assert caught.value.detail["validation"]["keys"] == [field]
    assert f'"{field}"' in caught.value.message
    assert len(app[JOBS_KEY]) == 0


async def test_mounted_under_a_prefix(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    """As the combined sandbox mounts it: the sub-application's callbacks still run."""
    bodies: list[Any] = []
    hook_app, got = receiver(bodies)
    hook_base = await serve(hook_app)
    root = web.Application()
    sub = create_app(SandboxSettings(speed=1000.0, seed=3))
    sub[PREFIX_KEY] = "/extract"
    root.add_subapp("/extract", sub)
    base = await serve(root)
    adapter = ExtractAdapter(http_session, Connection(base_url=f"{base}/extract", api_key=KEY))
    submission = await adapter.submit({"url": SITE, "callbackUrl": f"{hook_base}/hook"})
    reports = await poll_until_finished(adapter, submission.upstream_id)
    assert reports[-1].state is JobState.SUCCEEDED
    await asyncio.wait_for(got.wait(), timeout=5.0)
    assert bodies[0]["jobId"] == submission.upstream_id
