"""The platform adapter against its sandbox over real sockets on 127.0.0.1.

Some tests run on the real clock and poll in a small bounded loop; the ones that need an exact
stage use a manual clock, so they never depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.base import (
    TRANSIENT_ERRORS,
    AuthRejected,
    InlineResult,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultKind,
    StatusReport,
    UpstreamUnavailable,
)
from adapters.http import Connection
from adapters.platform.adapter import PlatformAdapter
from adapters.platform.sandbox import JOBS_KEY, create_app
from adapters.simulator import PREFIX_KEY, UNKNOWN_STATUS_VALUE, SandboxSettings
from gateway.states import JobState

pytestmark = pytest.mark.integration

Serve = Callable[[web.Application], Awaitable[str]]
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RANK = {
    JobState.QUEUED: 0,
    JobState.RUNNING: 1,
    JobState.SUCCEEDED: 2,
    JobState.FAILED: 2,
    JobState.CANCELED: 2,
}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class ManualClock:
    """A sandbox clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Rig:
    app: web.Application
    base: str
    session: aiohttp.ClientSession
    adapter: PlatformAdapter

    def adapter_with(self, key: str) -> PlatformAdapter:
        return PlatformAdapter(self.session, Connection(base_url=self.base, api_key=key))

    async def raw(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Raw:
        async with self.session.request(
            method, self.base + path, headers=AUTH if headers is None else headers, **kwargs
        ) as response:
            text = await response.text()
            body = await response.json() if text else None
            return Raw(response.status, dict(response.headers), body)

    async def create(self, headers: dict[str, str] | None = None, **body: Any) -> str:
        reply = await self.raw(
            "POST", "/sandbox/jobs", json=body, headers={**AUTH, **(headers or {})}
        )
        assert reply.status == 201, reply.body
        data = reply.body["data"]
        assert data["status"] == "pending"
        assert data["id"].startswith("job_")
        job_id: str = data["id"]
        return job_id

    def job_count(self) -> int:
        return len(self.app[JOBS_KEY])


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(serve: Serve, http_session: aiohttp.ClientSession) -> RigFactory:
    async def make(settings: SandboxSettings, **options: Any) -> Rig:
        app = create_app(settings, **options)
        base = await serve(app)
        adapter = PlatformAdapter(http_session, Connection(base_url=base, api_key=KEY))
        return Rig(app, base, http_session, adapter)

    return make


async def poll_until_finished(
    adapter: PlatformAdapter, job_id: str, *, max_polls: int = 300
) -> list[StatusReport]:
    """Poll like a runner would (tolerating transient errors) until the job finishes."""
    reports: list[StatusReport] = []
    for _ in range(max_polls):
        try:
            report = await adapter.fetch_status(job_id)
        except TRANSIENT_ERRORS:
            await asyncio.sleep(0.02)
            continue
        if report.state is not None:
            reports.append(report)
            if RANK[report.state] == 2:
                return reports
        await asyncio.sleep(0.02)
    raise AssertionError(f"{job_id} did not finish; last report: {reports[-1:]}")


def assert_moves_forward(reports: list[StatusReport]) -> None:
    ranks = [RANK[r.state] for r in reports if r.state is not None]
    assert ranks == sorted(ranks)
    fractions = [r.progress.fraction for r in reports if r.progress.fraction is not None]
    assert fractions == sorted(fractions)


# -- whole lives -----------------------------------------------------------------------------------


async def test_whole_life_then_rerun_runs_to_its_end(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=200.0, seed=7))
    job_id = await rig.create(type="document_processing", input={"files": ["a.pdf"]})
    reports = await poll_until_finished(rig.adapter, job_id)
    assert_moves_forward(reports)
    last = reports[-1]
    assert last.state is JobState.SUCCEEDED
    assert last.native_status == "completed"
    assert last.progress.fraction == 1.0
    assert last.job_type == "document_processing"
    assert last.result is not None
    assert last.result.kind is ResultKind.INLINE
    assert last.result.inline == {"documentsProcessed": 50, "errors": 0}
    assert last.times.created_at is not None
    assert last.times.finished_at is not None
    assert last.times.finished_at >= last.times.created_at
    assert last.hints.limit == 1000
    assert last.hints.remaining is not None
    assert last.hints.remaining < 1000
    assert await rig.adapter.fetch_result(job_id) == InlineResult(last.result.inline)

    rerun = await rig.adapter.rerun(job_id)
    assert rerun.upstream_id != job_id
    assert rerun.upstream_id.startswith("job_")
    assert rerun.original_id == job_id
    assert rerun.native_status == "pending"
    assert rerun.state is JobState.QUEUED
    assert rig.job_count() == 2
    again = await poll_until_finished(rig.adapter, rerun.upstream_id)
    assert_moves_forward(again)
    assert again[-1].state is JobState.SUCCEEDED
    assert again[-1].job_type == "document_processing"
    assert await rig.adapter.fetch_result(rerun.upstream_id) == InlineResult(
        {"documentsProcessed": 50, "errors": 0}
    )
    # The original is untouched by its rerun.
    assert (await rig.adapter.fetch_status(job_id)).state is JobState.SUCCEEDED


async def test_stages_on_a_manual_clock(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create(type="document_processing")

    first = await rig.adapter.fetch_status(job_id)
    assert (first.state, first.native_status, first.progress.fraction) == (
        JobState.QUEUED,
        "pending",
        0.0,
    )
    assert first.result is None
    assert first.times.finished_at is None

    clock.advance(30.0)  # 5 s pending, then 25 of 55 s running
    middle = await rig.adapter.fetch_status(job_id)
    assert middle.state is JobState.RUNNING
    assert middle.progress.fraction == pytest.approx(0.45)
    assert middle.progress.step == "running"
    with pytest.raises(RequestRejected, match="running"):
        await rig.adapter.fetch_result(job_id)

    clock.advance(31.0)
    last = await rig.adapter.fetch_status(job_id)
    assert last.state is JobState.SUCCEEDED
    assert last.progress.fraction == 1.0
    assert last.times.finished_at is not None
    assert last.times.created_at is not None
    assert last.times.finished_at > last.times.created_at


@pytest.mark.parametrize(
    ("job_type", "seconds", "result_key"),
    [
        ("document_processing", 60, "documentsProcessed"),
        ("web_crawling", 120, "pagesCrawled"),
        ("batch_embedding", 90, "embeddingsGenerated"),
        ("export", 30, "recordsExported"),
        ("import", 45, "recordsImported"),
    ],
)
async def test_each_job_type_runs_its_own_length(
    make_rig: RigFactory, job_type: str, seconds: float, result_key: str
) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create(type=job_type)
    clock.advance(seconds - 1)
    report = await rig.adapter.fetch_status(job_id)
    assert report.state is JobState.RUNNING
    assert report.job_type == job_type
    clock.advance(1.5)
    report = await rig.adapter.fetch_status(job_id)
    assert report.state is JobState.SUCCEEDED
    result = await rig.adapter.fetch_result(job_id)
    assert isinstance(result, InlineResult)
    assert result_key in result.data


# -- failure and rerun -----------------------------------------------------------------------------


async def test_failed_job_then_rerun_succeeds(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=200.0, seed=7))
    job_id = await rig.create(type="export", headers={"X-Sandbox-Scenario": "fail"})
    reports = await poll_until_finished(rig.adapter, job_id)
    assert_moves_forward(reports)
    last = reports[-1]
    assert last.state is JobState.FAILED
    assert last.native_status == "failed"
    assert last.progress.fraction == pytest.approx(0.6)
    assert last.error is not None
    assert last.error.code == "ProcessingError"
    assert "Export" in last.error.message
    assert last.result is None
    with pytest.raises(RequestRejected, match="failed"):
        await rig.adapter.fetch_result(job_id)

    rerun = await rig.adapter.rerun(job_id)
    assert rerun.original_id == job_id
    assert rerun.state is JobState.QUEUED
    again = await poll_until_finished(rig.adapter, rerun.upstream_id)
    assert again[-1].state is JobState.SUCCEEDED
    assert again[-1].job_type == "export"
    assert (await rig.adapter.fetch_status(job_id)).state is JobState.FAILED


async def test_rerun_keeps_the_scenario_unless_told(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    slow = await rig.create(type="export", scenario="slow")
    clock.advance(121.0)
    assert (await rig.adapter.fetch_status(slow)).state is JobState.SUCCEEDED
    rerun = await rig.adapter.rerun(slow)
    clock.advance(31.0)
    assert (await rig.adapter.fetch_status(rerun.upstream_id)).state is JobState.RUNNING

    told = await rig.raw(
        "POST", f"/jobs/{slow}/rerun", headers={**AUTH, "X-Sandbox-Scenario": "fail"}
    )
    assert told.status == 200
    new_id = told.body["data"]["id"]
    assert told.body["data"]["originalJobId"] == slow
    clock.advance(31.0)
    assert (await rig.adapter.fetch_status(new_id)).state is JobState.FAILED


async def test_rerun_of_unfinished_or_cancelled_job_conflicts(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create()
    with pytest.raises(RequestRejected, match="ConflictError") as caught:
        await rig.adapter.rerun(job_id)
    assert caught.value.status == 409
    clock.advance(30.0)
    with pytest.raises(RequestRejected, match="running"):
        await rig.adapter.rerun(job_id)
    cancelled = await rig.raw("POST", f"/sandbox/jobs/{job_id}/cancel")
    assert cancelled.status == 200
    with pytest.raises(RequestRejected, match="cancelled"):
        await rig.adapter.rerun(job_id)
    assert rig.job_count() == 1


# -- cancelled -------------------------------------------------------------------------------------


async def test_cancelled_status_is_observed_and_sticks(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create(type="web_crawling")
    clock.advance(60.0)
    running = await rig.adapter.fetch_status(job_id)
    assert running.state is JobState.RUNNING

    reply = await rig.raw("POST", f"/sandbox/jobs/{job_id}/cancel")
    assert reply.status == 200
    assert reply.body["data"]["status"] == "cancelled"
    assert reply.body["data"]["completedAt"] is not None

    report = await rig.adapter.fetch_status(job_id)
    assert report.state is JobState.CANCELED
    assert report.native_status == "cancelled"
    assert report.progress.fraction == running.progress.fraction
    assert report.result is None
    assert report.error is None
    assert report.times.finished_at is not None

    clock.advance(600.0)
    later = await rig.adapter.fetch_status(job_id)
    assert later.state is JobState.CANCELED
    assert later.progress.fraction == running.progress.fraction
    again = await rig.raw("POST", f"/sandbox/jobs/{job_id}/cancel")
    assert again.status == 200


async def test_a_finished_job_cannot_be_cancelled(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create(type="export")
    clock.advance(31.0)
    reply = await rig.raw("POST", f"/sandbox/jobs/{job_id}/cancel")
    assert reply.status == 409
    assert reply.body["data"] is None
    assert reply.body["error"]["name"] == "ConflictError"
    assert (await rig.adapter.fetch_status(job_id)).state is JobState.SUCCEEDED


# -- rate limits -----------------------------------------------------------------------------------


async def test_quota_gives_429_with_reset_then_recovers(make_rig: RigFactory) -> None:
    clock = ManualClock()
    # speed 1000: the hour-long window lasts 3.6 s of the (manual) sandbox clock.
    rig = await make_rig(SandboxSettings(speed=1000.0, seed=7, clock=clock), hourly_limit=3)
    job_id = await rig.create()
    remaining = [(await rig.adapter.fetch_status(job_id)).hints.remaining for _ in range(3)]
    assert remaining == [2, 1, 0]

    with pytest.raises(RateLimited) as caught:
        await rig.adapter.fetch_status(job_id)
    error = caught.value
    assert error.status == 429
    assert error.retry_after > 0
    assert error.hints.reset_at is not None
    assert error.hints.reset_at > datetime.now(UTC)
    assert error.hints.remaining == 0
    assert error.hints.limit == 3
    assert error.hints.retry_at is None  # no Retry-After: the platform documents none
    assert "RateLimitError" in str(error)
    with pytest.raises(RateLimited):
        await rig.adapter.rerun(job_id)

    # The sandbox-only endpoints do not consume the quota.
    assert await rig.create()
    raw = await rig.raw("GET", f"/jobs/{job_id}")
    assert raw.status == 429
    assert raw.body["error"]["name"] == "RateLimitError"
    assert "Retry-After" not in raw.headers

    clock.advance(3.6)
    report = await rig.adapter.fetch_status(job_id)
    assert report.hints.remaining == 2


async def test_quota_is_per_key(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7), hourly_limit=1)
    job_id = await rig.create()
    await rig.adapter.fetch_status(job_id)
    with pytest.raises(RateLimited):
        await rig.adapter.fetch_status(job_id)
    other = rig.adapter_with("another-key")
    assert (await other.fetch_status(job_id)).hints.remaining == 0


async def test_rate_headers_on_every_response(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7))
    job_id = await rig.create()
    replies = [
        await rig.raw("POST", "/sandbox/jobs", json={"type": "export"}),
        await rig.raw("GET", f"/jobs/{job_id}"),
        await rig.raw("POST", f"/jobs/{job_id}/rerun"),
        await rig.raw("GET", "/jobs/job_missing"),
        await rig.raw("GET", "/no/such/path"),
        await rig.raw("POST", "/sandbox/jobs", json={"type": "nope"}),
        await rig.raw("GET", f"/jobs/{job_id}", headers={}),
    ]
    assert [r.status for r in replies] == [201, 200, 409, 404, 404, 400, 401]
    now = datetime.now(UTC).timestamp()
    for reply in replies:
        for name in RATE_HEADERS:
            assert name in reply.headers, (reply.status, name)
        assert int(reply.headers["X-RateLimit-Limit"]) == 1000
        assert int(reply.headers["X-RateLimit-Reset"]) > now - 1
        assert set(reply.body) == {"data", "error"}


# -- faults ----------------------------------------------------------------------------------------


async def test_every_fault_maps_to_its_typed_outcome(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, faults=1.0))
    job_id = await rig.create()
    outcomes: list[StatusReport | Exception] = []
    for _ in range(60):
        try:
            outcomes.append(await rig.adapter.fetch_status(job_id))
        except TRANSIENT_ERRORS as exc:
            outcomes.append(exc)
        if len({type(o) for o in outcomes}) == 4:
            break
    server_errors = [o for o in outcomes if isinstance(o, UpstreamUnavailable)]
    malformed = [o for o in outcomes if isinstance(o, MalformedResponse)]
    limited = [o for o in outcomes if isinstance(o, RateLimited)]
    unknown = [o for o in outcomes if isinstance(o, StatusReport)]
    assert server_errors
    assert malformed
    assert limited
    assert unknown
    assert all(e.status == 500 and "InternalServerError" in str(e) for e in server_errors)
    for error in limited:
        assert error.retry_after > 0
        assert error.hints.reset_at is not None
        assert error.hints.remaining == 0
    assert all(r.state is None and r.native_status == UNKNOWN_STATUS_VALUE for r in unknown)


async def test_faults_hit_status_calls_only(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, faults=1.0, clock=clock))
    job_id = await rig.create()
    clock.advance(61.0)
    for _ in range(5):
        assert (await rig.raw("POST", "/sandbox/jobs", json={})).status == 201
    rerun = await rig.adapter.rerun(job_id)
    assert rerun.original_id == job_id
    with pytest.raises(NotFound):
        await rig.adapter.fetch_status("job_missing")


async def test_flaky_job_misbehaves_and_still_finishes(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    job_id = await rig.create(type="import", input={"source": "s3://bucket/x.csv sandbox=flaky"})
    clock.advance(20.0)
    faults = 0
    good: list[StatusReport] = []
    for _ in range(40):
        try:
            report = await rig.adapter.fetch_status(job_id)
        except TRANSIENT_ERRORS:
            faults += 1
            continue
        if report.state is None:
            faults += 1
        else:
            good.append(report)
    assert faults > 0
    assert good
    assert all(r.state is JobState.RUNNING for r in good)

    clock.advance(60.0)
    finished = await poll_until_finished(rig.adapter, job_id, max_polls=60)
    assert finished[-1].state is JobState.SUCCEEDED


# -- auth and unknown ids --------------------------------------------------------------------------


async def test_401_without_or_with_a_bad_key(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, api_keys=frozenset({KEY})))
    job_id = await rig.create()
    with pytest.raises(AuthRejected, match="AuthenticationError") as caught:
        await rig.adapter_with("").fetch_status(job_id)
    assert caught.value.status == 401
    bad = "wrong-secret-key"
    with pytest.raises(AuthRejected) as caught:
        await rig.adapter_with(bad).fetch_status(job_id)
    assert bad not in str(caught.value)
    assert bad not in repr(caught.value)
    with pytest.raises(AuthRejected):
        await rig.adapter_with(bad).rerun(job_id)

    for headers in ({}, {"Authorization": KEY}, {"Authorization": "Basic dGVzdA=="}):
        reply = await rig.raw("GET", f"/jobs/{job_id}", headers=headers)
        assert reply.status == 401
        assert reply.body["data"] is None
        assert reply.body["error"]["name"] == "AuthenticationError"
        assert reply.body["error"]["details"] == {}
    assert (await rig.adapter.fetch_status(job_id)).state is JobState.QUEUED


async def test_404_for_an_unknown_id(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7))
    missing = "job_00000000000000000000000000000000"
    with pytest.raises(NotFound, match="NotFoundError"):
        await rig.adapter.fetch_status(missing)
    with pytest.raises(NotFound):
        await rig.adapter.fetch_result(missing)
    with pytest.raises(NotFound):
        await rig.adapter.rerun(missing)
    with pytest.raises(NotFound):
        await rig.adapter.fetch_status("a/b c")
    assert rig.job_count() == 0


# -- scenarios -------------------------------------------------------------------------------------


async def test_slow_large_and_expire(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    plain = await rig.create(type="export")
    slow = await rig.create(type="export", input={"note": "sandbox=slow"})
    large = await rig.create(type="export", headers={"X-Sandbox-Scenario": "large"})
    expire = await rig.create(type="export", scenario="expire")
    clock.advance(31.0)
    assert (await rig.adapter.fetch_status(plain)).state is JobState.SUCCEEDED
    assert (await rig.adapter.fetch_status(slow)).state is JobState.RUNNING
    assert (await rig.adapter.fetch_status(expire)).state is JobState.SUCCEEDED
    big = await rig.adapter.fetch_status(large)
    assert big.state is JobState.SUCCEEDED
    assert big.result is not None
    assert big.result.kind is ResultKind.INLINE
    small = await rig.adapter.fetch_result(plain)
    full = await rig.adapter.fetch_result(large)
    assert isinstance(small, InlineResult)
    assert isinstance(full, InlineResult)
    assert "items" not in small.data
    assert len(full.data["items"]) == 2000
    assert full.data["recordsExported"] == small.data["recordsExported"]
    clock.advance(90.0)
    assert (await rig.adapter.fetch_status(slow)).state is JobState.SUCCEEDED


async def test_duration_override_and_scenario_precedence(make_rig: RigFactory) -> None:
    clock = ManualClock()
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7, clock=clock))
    quick = await rig.create(type="web_crawling", durationSeconds=10)
    # The body's scenario wins over the header, which wins over a token in the input.
    body_wins = await rig.create(
        scenario="succeed", headers={"X-Sandbox-Scenario": "fail"}, durationSeconds=10
    )
    header_wins = await rig.create(
        headers={"X-Sandbox-Scenario": "fail"}, input="sandbox=succeed", durationSeconds=10
    )
    token = await rig.create(
        input={"pages": [{"url": "https://x.test/?sandbox=fail"}]}, durationSeconds=10
    )
    clock.advance(10.5)
    assert (await rig.adapter.fetch_status(quick)).state is JobState.SUCCEEDED
    assert (await rig.adapter.fetch_status(body_wins)).state is JobState.SUCCEEDED
    assert (await rig.adapter.fetch_status(header_wins)).state is JobState.FAILED
    assert (await rig.adapter.fetch_status(token)).state is JobState.FAILED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "video_rendering"}, "type"),
        ({"scenario": "explode"}, "scenario"),
        ({"durationSeconds": 0}, "durationSeconds"),
        ({"durationSeconds": "10"}, "durationSeconds"),
        ({"durationSeconds": True}, "durationSeconds"),
    ],
)
async def test_sandbox_create_validates(
    make_rig: RigFactory, body: dict[str, Any], field: str
) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7))
    reply = await rig.raw("POST", "/sandbox/jobs", json=body)
    assert reply.status == 400
    assert reply.body["data"] is None
    assert reply.body["error"]["name"] == "ValidationError"
    assert reply.body["error"]["details"]["field"] == field
    assert rig.job_count() == 0


async def test_sandbox_create_rejects_non_json(make_rig: RigFactory) -> None:
    rig = await make_rig(SandboxSettings(speed=1.0, seed=7))
    for data in (b"{not json", b"[1, 2]"):
        reply = await rig.raw("POST", "/sandbox/jobs", data=data)
        assert reply.status == 400
        assert reply.body["error"]["name"] == "ValidationError"
    assert rig.job_count() == 0


async def test_mounted_under_its_prefix(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    root = web.Application()
    sub = create_app(SandboxSettings(speed=200.0, seed=7))
    sub[PREFIX_KEY] = "/platform/v1/api"
    root.add_subapp("/platform/v1/api", sub)
    base = await serve(root) + "/platform/v1/api"
    adapter = PlatformAdapter(http_session, Connection(base_url=base, api_key=KEY))
    async with http_session.post(
        base + "/sandbox/jobs", json={"type": "export"}, headers=AUTH
    ) as response:
        assert response.status == 201
        job_id = (await response.json())["data"]["id"]
    reports = await poll_until_finished(adapter, job_id)
    assert reports[-1].state is JobState.SUCCEEDED
    assert len(sub[JOBS_KEY]) == 1
    async with http_session.get(base + "/nothing/here", headers=AUTH) as response:
        assert response.status == 404
        assert (await response.json())["error"]["name"] == "NotFoundError"
