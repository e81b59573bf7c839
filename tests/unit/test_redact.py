"""``adapters.redact``, the one scrubber: its patterns, its secrets, and the doors it guards (what
an adapter raises or returns, the problem renderer, the secrets the settings hold)."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import ClassVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from aioresponses import aioresponses

from adapters.base import (
    JSON,
    Adapter,
    Capabilities,
    InlineResult,
    JobError,
    MalformedResponse,
    Progress,
    RequestRejected,
    ResultPayload,
    StatusReport,
    Submission,
)
from adapters.http import OUTWARD_METHODS, Connection, HttpAdapter
from adapters.redact import MASK, Scrubber, redact_text
from adapters.registry import PROVIDERS
from gateway.errors import ServiceError, UpstreamProblem
from gateway.logs import secrets_of
from gateway.settings import load_settings
from gateway.states import JobState
from gateway.web.problems import MAX_BODY_KEY, problem_middleware
from gateway.web.state import COMPONENTS_KEY, Components
from tests.conftest import Serve

KEY = "sk_live_7Hq2xR9vLm4Tz8Wc"
BASE = "https://api.example.test"


# -- patterns -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Invalid API key provided: sk_live_abcdef0123456789", f"Invalid API key provided: {MASK}"),
        ("key 'canary-sk_ks_DO_NOT_LEAK_7f3a' rejected", f"key '{MASK}' rejected"),
        ("api key sk-ABCDEFGHIJKLMNOP1 is revoked", f"api key {MASK} is revoked"),
        ("TOKEN WAS XYZXYZXYZXYZXYZXYZ9Q", f"TOKEN WAS {MASK}"),
        ("x-api-key: abc123", f"x-api-key: {MASK}"),
        ("{'x-api-key': 'abc123'}", f"{{'x-api-key': '{MASK}'}}"),
        ("callback https://gw/cb?token=s3cr3t&x=1", f"callback https://gw/cb?token={MASK}&x=1"),
        ("Authorization: Bearer abc.def", f"Authorization: {MASK}"),
    ],
)
def test_credential_shapes_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the token bucket refilled",
        "idempotency key demo-1",
        "key rotation scheduled for job_01JD8X7Y6Z5W4V3U2T",
        "job job_01JD8X7Y6Z5W4V3U2T failed: the source page was empty",
        "api_key_file=/run/secrets/k",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_masking_twice_changes_nothing() -> None:
    once = redact_text(f"token={KEY}; Bearer {KEY}; key {KEY}")
    assert redact_text(once) == once


# -- configured secrets ---------------------------------------------------------------------------


def test_a_secret_is_masked_however_it_was_quoted_back() -> None:
    secret = 'p@ss/w0rd+&"x'
    scrub = Scrubber([secret])
    for spelling in (
        secret,
        "p%40ss%2Fw0rd%2B%26%22x",
        "p%40ss%2Fw0rd%2B%26%22x",
        'p@ss/w0rd+&\\"x',
    ):
        assert scrub.text(f"at {spelling} end") == f"at {MASK} end", spelling


def test_short_and_missing_secrets_are_not_searched_for() -> None:
    scrub = Scrubber(["ab", "", None, KEY])
    assert scrub.text("abc ab") == "abc ab"
    assert scrub.text(KEY) == MASK


def test_a_secret_containing_another_is_masked_whole() -> None:
    assert Scrubber(["abcdef", "abcdef-123456"]).text("k abcdef-123456") == f"k {MASK}"


def test_masked_bytes_stay_valid_json() -> None:
    raw = orjson.dumps({"message": f"bad key {KEY}", "echo": [KEY, f"{KEY}!"], "n": 1})
    masked = Scrubber([KEY]).mask_bytes(raw)
    assert KEY.encode() not in masked
    assert orjson.loads(masked) == {
        "message": f"bad key {MASK}",
        "echo": [MASK, f"{MASK}!"],
        "n": 1,
    }


def test_the_scrubber_never_shows_its_secrets() -> None:
    scrub = Scrubber([KEY])
    assert KEY not in repr(scrub)


# -- the adapter door -----------------------------------------------------------------------------


class Echo(HttpAdapter):
    """An adapter whose answers quote the key back, built without any upstream."""

    name = "echo"
    capabilities: ClassVar[Capabilities] = Capabilities(submit=True)
    status_table: ClassVar[dict[str, JobState]] = {}

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        key = self.connection.api_key
        return Submission(upstream_id="u1", native_status=f"queued:{key}", extra={"note": key})

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        key = self.connection.api_key
        if upstream_id == "raise":
            try:
                raise ValueError("the cause")
            except ValueError as exc:
                raise MalformedResponse(f"body said {key}", detail={"token": "t"}) from exc
        return StatusReport(
            upstream_id=upstream_id,
            state=JobState.FAILED,
            native_status=f"failed ({key})",
            progress=Progress(fraction=0.5, step=f"auth {key}"),
            error=JobError(code=f"E_{key}", message=f"the key {key} is revoked"),
            job_type=f"type-{key}",
        )

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        return InlineResult({"text": "token=abc, the client's own data"})

    async def rerun(self, upstream_id: str) -> Submission:
        await self.call("POST", "/rerun", operation="rerun")
        return Submission(upstream_id="u2")


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with aiohttp.ClientSession() as session:
        yield Echo(session, Connection(BASE, KEY), secrets=["other-secret-42"])


async def test_a_report_leaves_the_adapter_masked(echo: Echo) -> None:
    report = await echo.fetch_status("u1")
    assert KEY not in repr(report)
    assert report.native_status == f"failed ({MASK})"
    assert report.progress == Progress(fraction=0.5, step=f"auth {MASK}")
    assert report.error == JobError(code=f"E_{MASK}", message=f"the key {MASK} is revoked")
    assert report.job_type == f"type-{MASK}"
    assert report.state is JobState.FAILED


async def test_a_submission_leaves_the_adapter_masked(echo: Echo) -> None:
    submission = await echo.submit({})
    assert (submission.native_status, submission.extra) == (f"queued:{MASK}", {"note": MASK})


async def test_an_error_raised_outside_call_is_masked_in_place(echo: Echo) -> None:
    with pytest.raises(MalformedResponse) as caught:
        await echo.fetch_status("raise")
    assert str(caught.value) == caught.value.message == f"body said {MASK}"
    assert caught.value.detail == {"token": MASK}
    assert isinstance(caught.value.__cause__, ValueError)


async def test_results_are_the_clients_data_and_stay_as_sent(echo: Echo) -> None:
    assert await echo.fetch_result("u1") == InlineResult(
        {"text": "token=abc, the client's own data"}
    )


async def test_an_error_body_is_masked_before_it_is_cut_to_length(echo: Echo) -> None:
    """A message cut at 500 characters must not keep the head of a key that straddles the cut."""
    text = "x" * 490 + f" {KEY} and other-secret-42"
    with aioresponses() as mock:
        mock.post(f"{BASE}/rerun", status=400, body=json.dumps(text))
        with pytest.raises(RequestRejected) as caught:
            await echo.rerun("u1")
    assert KEY[:6] not in caught.value.message
    assert "other-secret-42" not in caught.value.message


def test_every_protocol_call_is_guarded() -> None:
    """A call added to the protocol must be added to the guarded list, or its answers go out raw."""
    calls = {name for name, value in vars(Adapter).items() if inspect.iscoroutinefunction(value)}
    assert calls <= set(OUTWARD_METHODS)
    for spec in PROVIDERS.values():
        for name in calls & set(vars(spec.adapter)):
            assert hasattr(vars(spec.adapter)[name], "__wrapped__"), (spec.name, name)


# -- the gateway's doors --------------------------------------------------------------------------


def test_an_upstream_problem_masks_credential_shapes() -> None:
    problem = UpstreamProblem(RequestRejected("provider said Authorization: Bearer abc123"))
    assert problem.message == f"provider said Authorization: {MASK}"


async def test_every_problem_body_passes_the_last_line(
    serve: Serve, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = load_settings(
        tmp_path / "none.toml",
        providers={
            "extract": {"base_url": "http://y", "api_key": KEY, "callback_secret": "cb-0042x"}
        },
    )
    app = web.Application(middlewares=[problem_middleware])
    app[COMPONENTS_KEY] = Components(settings=settings)
    app[MAX_BODY_KEY] = 1024

    async def leak(request: web.Request) -> web.Response:
        raise ServiceError(f"quoted {KEY} and cb-0042x", where=[KEY])

    app.router.add_get("/leak", leak)
    url = await serve(app)
    async with http_session.get(f"{url}/leak") as response:
        body = await response.json()
    assert body["detail"] == f"quoted {MASK} and {MASK}"
    assert body["where"] == [MASK]


def test_secrets_of_holds_every_configured_secret(tmp_path: Path) -> None:
    dsn = "postgresql://jobgate:p%40ss-word-9@db:5432/jobs"
    settings = load_settings(
        tmp_path / "none.toml",
        providers={
            "extract": {"base_url": "http://y", "api_key": KEY, "callback_secret": "cb-0042x"}
        },
        webhooks={"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        store={"kind": "postgres", "dsn": dsn},
    )
    assert set(secrets_of(settings)) == {
        KEY,
        "cb-0042x",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        dsn,
        "p%40ss-word-9",
        "p@ss-word-9",
    }
