"""The Pulse adapter and the official ``pulse-python-sdk`` against the Pulse sandbox (sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web
from pulse import AsyncPulse, Pulse
from pulse.core.api_error import ApiError
from pulse.errors.gone_error import GoneError
from pulse.errors.not_found_error import NotFoundError as SdkNotFound
from pulse.errors.unauthorized_error import UnauthorizedError as SdkUnauthorized
from pulse.types.extract_request_structured_output import ExtractRequestStructuredOutput

from adapters.base import (
    AuthRejected,
    InlineResult,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ResultKind,
    ResultPointer,
    StatusReport,
    UpstreamUnavailable,
)
from adapters.http import Connection
from adapters.pulse import sandbox as pulse_sandbox
from adapters.pulse.adapter import PulseAdapter
from adapters.pulse.sandbox import JOBS_KEY, create_app
from adapters.simulator import PREFIX_KEY, UNKNOWN_STATUS_VALUE, SandboxSettings
from gateway.states import FINISHED, JobState

pytestmark = pytest.mark.integration

Serve = Callable[[web.Application], Awaitable[str]]
DOC = "https://docs.example.test/annual-report.pdf"
KEY = "pulse-test-key"


class FakeClock:
    """A monotonic clock the test moves by hand, so that expiry can be reached at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sandbox:
    app: web.Application
    base: str
    adapter: PulseAdapter
    clock: FakeClock | None = None

    @property
    def job_count(self) -> int:
        return len(self.app[JOBS_KEY])


@pytest.fixture
async def manual(serve: Serve, http_session: aiohttp.ClientSession) -> Sandbox:
    """A sandbox at speed 1 on a hand-moved clock: durations are the real ones (50 s a job)."""
    clock = FakeClock()
    app = create_app(SandboxSettings(speed=1.0, seed=3, clock=clock))
    base = await serve(app)
    adapter = PulseAdapter(http_session, Connection(base_url=base, api_key=KEY))
    return Sandbox(app, base, adapter, clock)


@pytest.fixture
async def fast(
    serve: Serve, http_session: aiohttp.ClientSession, fast_sandbox: SandboxSettings
) -> Sandbox:
    app = create_app(fast_sandbox)
    base = await serve(app)
    adapter = PulseAdapter(http_session, Connection(base_url=base, api_key=KEY))
    return Sandbox(app, base, adapter)


@pytest.fixture
async def sdk(manual: Sandbox) -> AsyncIterator[AsyncPulse]:
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        yield AsyncPulse(base_url=manual.base, api_key=KEY, httpx_client=client, max_retries=0)


async def poll_to_end(adapter: PulseAdapter, upstream_id: str) -> list[StatusReport]:
    reports: list[StatusReport] = []
    for _ in range(300):
        report = await adapter.fetch_status(upstream_id)
        reports.append(report)
        if report.state in FINISHED:
            return reports
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {upstream_id} never finished: last {reports[-1]!r}")


async def finish(sandbox: Sandbox, file_url: str) -> str:
    """Submit on the manual clock and move the clock past the job's end."""
    assert sandbox.clock is not None
    submission = await sandbox.adapter.submit({"fileUrl": file_url})
    sandbox.clock.advance(51.0)
    return submission.upstream_id


# --------------------------------------------------------------------------------------------------
# A whole job life


async def test_whole_life_inline_on_the_real_clock(fast: Sandbox) -> None:
    submission = await fast.adapter.submit({"fileUrl": DOC, "pages": "1-3"})
    assert submission.native_status == "pending"
    assert submission.state is JobState.QUEUED
    assert "queuedAt" in submission.extra
    assert fast.job_count == 1

    reports = await poll_to_end(fast.adapter, submission.upstream_id)
    ranks = [list(JobState).index(r.state) for r in reports if r.state is not None]
    assert ranks == sorted(ranks), "states must never move backwards"
    last = reports[-1]
    assert last.state is JobState.SUCCEEDED
    assert last.upstream_id == submission.upstream_id
    assert last.native_status == "completed"
    assert last.times.created_at is not None
    assert last.times.finished_at is not None
    assert last.times.finished_at >= last.times.created_at
    assert last.result is not None
    assert last.result.kind is ResultKind.INLINE
    assert last.result.inline["page_count"] == 3
    assert DOC in last.result.inline["markdown"]

    payload = await fast.adapter.fetch_result(submission.upstream_id)
    assert isinstance(payload, InlineResult)
    assert payload.data["extraction_id"] == last.result.inline["extraction_id"]


async def test_stages_follow_the_clock(manual: Sandbox) -> None:
    assert manual.clock is not None
    submission = await manual.adapter.submit({"fileUrl": DOC})
    first = await manual.adapter.fetch_status(submission.upstream_id)
    assert (first.state, first.progress.step) == (JobState.QUEUED, "pending")
    assert first.result is None

    manual.clock.advance(6.0)
    second = await manual.adapter.fetch_status(submission.upstream_id)
    assert (second.state, second.progress.step) == (JobState.RUNNING, "processing")
    assert second.times.updated_at is not None
    assert first.times.updated_at is not None
    assert second.times.updated_at > first.times.updated_at
    with pytest.raises(NotFound):
        await manual.adapter.fetch_result(submission.upstream_id)

    manual.clock.advance(45.0)
    third = await manual.adapter.fetch_status(submission.upstream_id)
    assert third.state is JobState.SUCCEEDED
    assert third.progress.step is None


async def test_fail_scenario_reports_the_error(manual: Sandbox) -> None:
    upstream_id = await finish(manual, DOC + "?sandbox=fail")
    report = await manual.adapter.fetch_status(upstream_id)
    assert report.state is JobState.FAILED
    assert report.error is not None
    assert "could not be read" in report.error.message
    assert report.result is None
    with pytest.raises(NotFound):
        await manual.adapter.fetch_result(upstream_id)


async def test_slow_scenario_takes_four_times_as_long(manual: Sandbox) -> None:
    assert manual.clock is not None
    upstream_id = await finish(manual, DOC + "?sandbox=slow")
    assert (await manual.adapter.fetch_status(upstream_id)).state is JobState.RUNNING
    manual.clock.advance(150.0)
    assert (await manual.adapter.fetch_status(upstream_id)).state is JobState.SUCCEEDED


async def test_scenario_header_is_honoured(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    assert manual.clock is not None
    async with http_session.post(
        manual.base + "/extract",
        json={"fileUrl": DOC, "async": True},
        headers={"x-api-key": KEY, "X-Sandbox-Scenario": "fail"},
    ) as response:
        assert response.status == 200
        upstream_id = (await response.json())["job_id"]
    manual.clock.advance(51.0)
    assert (await manual.adapter.fetch_status(upstream_id)).state is JobState.FAILED


# --------------------------------------------------------------------------------------------------
# Large results


async def test_large_result_behind_a_presigned_url(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    assert manual.clock is not None
    upstream_id = await finish(manual, DOC + "?sandbox=large")
    report = await manual.adapter.fetch_status(upstream_id)
    assert report.state is JobState.SUCCEEDED
    locator = report.result
    assert locator is not None
    assert locator.kind is ResultKind.POINTER
    assert locator.url is not None
    assert "/presigned/" in locator.url
    assert locator.needs_provider_key is False
    assert locator.meta["page_count"] == 120

    payload = await manual.adapter.fetch_result(upstream_id)
    assert isinstance(payload, ResultPointer)
    assert payload.url == locator.url
    assert payload.needs_provider_key is False

    # No key at all: a presigned URL carries its own authorisation. Reusable until it expires.
    for _ in range(2):
        async with http_session.get(payload.url) as response:
            assert response.status == 200
            raw = await response.read()
            assert response.content_length == len(raw)
    assert len(raw) >= 5_000_000
    document = orjson.loads(raw)
    assert document["page_count"] == 120
    assert document["extraction_id"] == locator.meta["extraction_id"]
    assert document["markdown"].startswith("## Page 1\n")

    tampered = payload.url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    async with http_session.get(tampered) as response:
        assert response.status == 403
        assert "<Code>SignatureDoesNotMatch</Code>" in await response.text()
    longer = payload.url.replace("X-Amz-Expires=86400", "X-Amz-Expires=999999")
    async with http_session.get(longer) as response:
        assert response.status == 403

    manual.clock.advance(86_400.0)
    async with http_session.get(payload.url) as response:
        assert response.status == 403
        assert "Request has expired" in await response.text()


async def test_large_result_behind_the_single_use_proxy(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    upstream_id = await finish(manual, DOC + "?sandbox=large&sandbox_pointer=proxy")
    payload = await manual.adapter.fetch_result(upstream_id)
    assert isinstance(payload, ResultPointer)
    assert payload.url == manual.adapter.large_result_url(upstream_id)
    assert payload.needs_provider_key is True

    async with http_session.get(payload.url) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "MISSING_API_KEY"
    async with http_session.get(payload.url, headers={"x-api-key": KEY}) as response:
        assert response.status == 200
        document = orjson.loads(await response.read())
    assert document["page_count"] == 120
    assert len(document["markdown"]) > 5_000_000

    # Single-use: the second download is gone, and the adapter's call maps that to ResultExpired.
    with pytest.raises(ResultExpired):
        await manual.adapter.call("GET", f"/large_results/{upstream_id}", operation="large")


async def test_proxy_url_is_gone_an_hour_after_completion(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    assert manual.clock is not None
    upstream_id = await finish(manual, DOC + "?sandbox=large&sandbox_pointer=proxy")
    manual.clock.advance(3_600.0)
    async with http_session.get(
        manual.adapter.large_result_url(upstream_id), headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 410
        assert (await response.json())["error"]["code"] == "GONE"
    # The job itself still reports its pointer: only the download has expired.
    report = await manual.adapter.fetch_status(upstream_id)
    assert report.state is JobState.SUCCEEDED
    assert report.result is not None


async def test_inline_job_has_no_large_result(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    upstream_id = await finish(manual, DOC)
    async with http_session.get(
        manual.adapter.large_result_url(upstream_id), headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 404


async def test_pointer_kinds_under_a_mount_prefix(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    """Mounted as in the combined sandbox: the proxy is under the base path and gets the key."""
    clock = FakeClock()
    root = web.Application()
    sub = create_app(SandboxSettings(speed=1.0, clock=clock))
    sub[PREFIX_KEY] = "/pulse"
    root.add_subapp("/pulse", sub)
    base = await serve(root) + "/pulse"
    adapter = PulseAdapter(http_session, Connection(base_url=base, api_key=KEY))

    proxy = await adapter.submit({"fileUrl": DOC + "?sandbox=large&sandbox_pointer=proxy"})
    presigned = await adapter.submit({"fileUrl": DOC + "?sandbox=large"})
    clock.advance(51.0)
    proxy_ptr = await adapter.fetch_result(proxy.upstream_id)
    presigned_ptr = await adapter.fetch_result(presigned.upstream_id)
    assert isinstance(proxy_ptr, ResultPointer)
    assert isinstance(presigned_ptr, ResultPointer)
    assert proxy_ptr.url.startswith(base + "/large_results/")
    assert proxy_ptr.needs_provider_key
    assert presigned_ptr.url.startswith(base + "/presigned/")
    assert not presigned_ptr.needs_provider_key
    async with http_session.get(presigned_ptr.url) as response:
        assert response.status == 200
        await response.read()


# --------------------------------------------------------------------------------------------------
# Cancel and expiry


async def test_cancel_a_running_job(manual: Sandbox, http_session: aiohttp.ClientSession) -> None:
    assert manual.clock is not None
    submission = await manual.adapter.submit({"fileUrl": DOC})
    manual.clock.advance(10.0)
    assert (await manual.adapter.fetch_status(submission.upstream_id)).state is JobState.RUNNING

    answer = await manual.adapter.cancel(submission.upstream_id)
    assert answer.upstream_id == submission.upstream_id
    assert "cancel" in answer.extra["message"].lower()
    manual.clock.advance(100.0)
    report = await manual.adapter.fetch_status(submission.upstream_id)
    assert report.state is JobState.CANCELED
    assert report.native_status == "canceled"
    assert report.result is None
    assert report.times.finished_at is not None

    # The deprecated path answers the same way and changes nothing more.
    async with http_session.post(
        f"{manual.base}/cancel/{submission.upstream_id}", headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 200
        assert (await response.json())["job_id"] == submission.upstream_id


async def test_cancel_leaves_a_completed_job_completed(manual: Sandbox) -> None:
    upstream_id = await finish(manual, DOC)
    answer = await manual.adapter.cancel(upstream_id)
    assert "completed" in answer.extra["message"]
    report = await manual.adapter.fetch_status(upstream_id)
    assert report.state is JobState.SUCCEEDED
    assert isinstance(await manual.adapter.fetch_result(upstream_id), InlineResult)


async def test_expire_scenario_purges_the_result(manual: Sandbox) -> None:
    assert manual.clock is not None
    upstream_id = await finish(manual, DOC + "?sandbox=expire")
    assert (await manual.adapter.fetch_status(upstream_id)).state is JobState.SUCCEEDED
    manual.clock.advance(61.0)
    report = await manual.adapter.fetch_status(upstream_id)
    assert report.state is JobState.EXPIRED
    assert report.native_status == "expired"
    assert report.result is None
    with pytest.raises(ResultExpired):
        await manual.adapter.fetch_result(upstream_id)


# --------------------------------------------------------------------------------------------------
# Faults, auth and errors


def describe_fault(exc: RateLimited | UpstreamUnavailable | MalformedResponse) -> str:
    """Which sandbox fault produced ``exc``, checking what the adapter made of it on the way."""
    if isinstance(exc, RateLimited):
        assert exc.status == 429
        assert exc.retry_after == pytest.approx(1.0, abs=0.5)
        assert exc.hints.retry_at is not None
        return "rate_limited"
    if isinstance(exc, UpstreamUnavailable):
        assert exc.status == 500
        assert "INTERNAL_ERROR" in exc.message
        return "server_error"
    return "malformed"


async def test_faults_on_status_calls(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    app = create_app(SandboxSettings(speed=1000.0, faults=1.0, seed=11))
    base = await serve(app)
    adapter = PulseAdapter(http_session, Connection(base_url=base, api_key=KEY))
    upstream_id = (await adapter.submit({"fileUrl": DOC})).upstream_id  # submit never faults

    seen: set[str] = set()
    for _ in range(40):
        try:
            report = await adapter.fetch_status(upstream_id)
        except (RateLimited, UpstreamUnavailable, MalformedResponse) as exc:
            seen.add(describe_fault(exc))
        else:
            assert report.state is None
            assert report.native_status == UNKNOWN_STATUS_VALUE
            seen.add("unknown_status")
    assert seen == {"rate_limited", "server_error", "malformed", "unknown_status"}

    # The 429 carries the provider's error body and Retry-After in seconds.
    for _ in range(40):
        async with http_session.get(
            f"{base}/job/{upstream_id}", headers={"x-api-key": KEY}
        ) as response:
            if response.status == 429:
                assert response.headers["Retry-After"] == "1"
                assert (await response.json())["error"]["code"] == "RATE_LIMITED"
                break
    else:
        raise AssertionError("no 429 in 40 faulty calls")


async def test_flaky_job_misbehaves_sometimes_and_still_finishes(manual: Sandbox) -> None:
    assert manual.clock is not None
    upstream_id = await finish(manual, DOC + "?sandbox=flaky")
    failures = successes = 0
    for _ in range(30):
        try:
            report = await manual.adapter.fetch_status(upstream_id)
        except (RateLimited, UpstreamUnavailable, MalformedResponse):
            failures += 1
        else:
            if report.state is JobState.SUCCEEDED:
                successes += 1
            else:
                assert report.state is None  # the unknown-status fault
                failures += 1
    assert failures > 0
    assert successes > 0


async def test_polling_a_flaky_job_on_the_real_clock(fast: Sandbox) -> None:
    upstream_id = (await fast.adapter.submit({"fileUrl": DOC + "?sandbox=flaky"})).upstream_id
    for _ in range(300):
        try:
            report = await fast.adapter.fetch_status(upstream_id)
        except (RateLimited, UpstreamUnavailable, MalformedResponse):
            pass
        else:
            if report.state is JobState.SUCCEEDED:
                break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the flaky job never reported success")
    assert report.result is not None
    assert report.result.kind is ResultKind.INLINE


async def test_missing_and_wrong_keys(
    serve: Serve, http_session: aiohttp.ClientSession, manual: Sandbox
) -> None:
    async with http_session.get(f"{manual.base}/job/anything") as response:
        assert response.status == 401
        body = await response.json()
    assert body == {
        "error": {
            "code": "MISSING_API_KEY",
            "message": "Missing API key: send it in the x-api-key header",
            "details": None,
        }
    }

    app = create_app(SandboxSettings(speed=1000.0, api_keys=frozenset({"the-right-key"})))
    base = await serve(app)
    secret = "sk-wrong-but-secret"
    adapter = PulseAdapter(http_session, Connection(base_url=base, api_key=secret))
    with pytest.raises(AuthRejected) as caught:
        await adapter.submit({"fileUrl": DOC})
    assert caught.value.status == 401
    assert "INVALID_API_KEY" in caught.value.message
    assert secret not in str(caught.value)
    assert secret not in repr(adapter)
    assert len(app[JOBS_KEY]) == 0


async def test_unknown_job_is_not_found(
    manual: Sandbox, http_session: aiohttp.ClientSession
) -> None:
    with pytest.raises(NotFound) as caught:
        await manual.adapter.fetch_status("00000000-0000-0000-0000-000000000000")
    assert "JOB_NOT_FOUND" in caught.value.message
    with pytest.raises(NotFound):
        await manual.adapter.cancel("no-such-job")
    async with http_session.get(
        f"{manual.base}/no/such/path", headers={"x-api-key": KEY}
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NOT_FOUND"


async def test_submit_validation(manual: Sandbox) -> None:
    with pytest.raises(RequestRejected) as caught:
        await manual.adapter.submit({"model": "default"})
    assert caught.value.status == 400
    assert "fileUrl" in caught.value.message
    assert caught.value.detail == {"fields": ["fileUrl", "file"]}
    with pytest.raises(RequestRejected) as caught:
        await manual.adapter.submit({"fileUrl": DOC, "pages": "one to three"})
    assert caught.value.detail == {"field": "pages"}
    assert manual.job_count == 0


# --------------------------------------------------------------------------------------------------
# The official SDK, unmodified, for a whole job life


async def test_sdk_multipart_submit_poll_and_result(sdk: AsyncPulse, manual: Sandbox) -> None:
    assert manual.clock is not None
    accepted = await sdk.extract(
        file_url=DOC,
        async_=True,
        pages="1-2,5",
        schema_prompt="the totals",
        schema={"type": "object", "properties": {"total": {"type": "number"}}},
        structured_output=ExtractRequestStructuredOutput(schema={"type": "object"}, effort=True),
    )
    assert accepted.job_id is not None
    job = manual.app[JOBS_KEY].jobs[accepted.job_id]
    assert job.source == DOC
    assert "'schema' is deprecated and will be removed in a future version" in job.warnings
    # Text fields arrive as strings, JSON-valued parts decoded, exactly as the SDK encoded them.
    assert job.options["async"] == "true"
    assert job.options["pages"] == "1-2,5"
    assert job.options["schemaPrompt"] == "the totals"
    assert job.options["schema"]["properties"] == {"total": {"type": "number"}}
    assert job.options["structuredOutput"] == {"schema": {"type": "object"}, "effort": True}

    pending = await sdk.jobs.get_job(accepted.job_id)
    assert pending.status == "pending"
    assert pending.result is None
    manual.clock.advance(51.0)
    done = await sdk.jobs.get_job(accepted.job_id)
    assert done.status == "completed"
    assert done.updated_at is not None
    assert done.updated_at > done.created_at
    assert done.result is not None
    assert done.result["page_count"] == 3
    assert done.result["markdown"].startswith("## Page 1")


async def test_sdk_file_upload_and_deprecated_async_path(sdk: AsyncPulse, manual: Sandbox) -> None:
    accepted = await sdk.extract_async(
        file=("ledger sandbox=fail.pdf", b"%PDF-1.7 sandbox test", "application/pdf")
    )
    assert accepted.status == "pending"
    assert accepted.queued_at is not None
    job = manual.app[JOBS_KEY].jobs[accepted.job_id]
    assert job.source == "ledger sandbox=fail.pdf"
    assert job.scenario.value == "fail"
    assert manual.clock is not None
    manual.clock.advance(51.0)
    failed = await sdk.jobs.get_job(accepted.job_id)
    assert failed.status == "failed"
    assert failed.error is not None


async def test_sdk_upload_too_large(
    sdk: AsyncPulse, manual: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pulse_sandbox, "MAX_UPLOAD_BYTES", 16)
    with pytest.raises(ApiError) as caught:
        await sdk.extract(file=("big.pdf", b"x" * 64, "application/pdf"), async_=True)
    assert caught.value.status_code == 413
    assert manual.job_count == 0


async def test_sdk_cancel_and_synchronous_extract(sdk: AsyncPulse, manual: Sandbox) -> None:
    accepted = await sdk.extract(file_url=DOC, async_=True)
    assert accepted.job_id is not None
    cancelled = await sdk.jobs.cancel_job(accepted.job_id)
    assert cancelled.job_id == accepted.job_id
    assert cancelled.message
    assert (await sdk.jobs.get_job(accepted.job_id)).status == "canceled"

    inline = await sdk.extract(file_url=DOC)
    assert inline.page_count == 3
    assert inline.markdown is not None
    assert inline.extraction_id is not None
    assert inline.plan_info is not None


async def test_sdk_large_result_is_single_use(sdk: AsyncPulse, manual: Sandbox) -> None:
    accepted = await sdk.extract(file_url=DOC + "?sandbox=large", async_=True)
    assert accepted.job_id is not None
    assert manual.clock is not None
    manual.clock.advance(51.0)
    done = await sdk.jobs.get_job(accepted.job_id)
    assert done.result is not None
    assert done.result["is_url"] is True

    full = await sdk.large_results.get_large_result(accepted.job_id)
    assert full.page_count == 120
    assert full.markdown is not None
    assert len(full.markdown) > 5_000_000
    with pytest.raises(GoneError) as caught:
        await sdk.large_results.get_large_result(accepted.job_id)
    assert caught.value.body.error is not None
    assert caught.value.body.error.code == "GONE"


async def test_sdk_errors(sdk: AsyncPulse, manual: Sandbox) -> None:
    with pytest.raises(SdkNotFound):
        await sdk.jobs.get_job("no-such-job")
    async with httpx.AsyncClient(trust_env=False) as client:
        keyless = AsyncPulse(base_url=manual.base, api_key="", httpx_client=client, max_retries=0)
        with pytest.raises(SdkUnauthorized):
            await keyless.jobs.get_job("no-such-job")


def sync_sdk_life(base: str, clock: FakeClock) -> tuple[str, str, str, str]:
    """The blocking client, as most users call it: submit, poll, cancel, poll (runs in a thread)."""
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        sdk = Pulse(base_url=base, api_key=KEY, httpx_client=client, max_retries=0)
        accepted = sdk.extract(file_url=DOC, async_=True, model="default")
        assert accepted.job_id is not None
        first = sdk.jobs.get_job(accepted.job_id).status
        clock.advance(6.0)
        second = sdk.jobs.get_job(accepted.job_id).status
        message = sdk.jobs.cancel_job(accepted.job_id).message
        third = sdk.jobs.get_job(accepted.job_id).status
    return first, second, message, third


async def test_blocking_sdk_client(manual: Sandbox) -> None:
    assert manual.clock is not None
    first, second, message, third = await asyncio.to_thread(
        sync_sdk_life, manual.base, manual.clock
    )
    assert (first, second, third) == ("pending", "processing", "canceled")
    assert message == "Job cancelled successfully"
    assert manual.job_count == 1
