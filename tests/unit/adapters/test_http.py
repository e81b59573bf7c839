"""The shared HTTP plumbing: header parsing, and transport faults mapped onto typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import aiohttp
import pytest
from aioresponses import aioresponses

from adapters.base import (
    AuthRejected,
    Capabilities,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestRejected,
    ResultExpired,
    UnsupportedAction,
    UpstreamUnavailable,
)
from adapters.http import (
    Connection,
    HttpAdapter,
    lookup_status,
    parse_rate_hints,
    parse_retry_after,
    parse_time,
)
from gateway.states import JobState

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
BASE = "https://api.example.test"
SECRET = "sk_canary_do_not_leak"


class Probe(HttpAdapter):
    name = "probe"
    capabilities: ClassVar[Capabilities] = Capabilities(submit=False)
    status_table: ClassVar[dict[str, JobState]] = {"done": JobState.SUCCEEDED}


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    async with aiohttp.ClientSession() as session:
        yield Probe(session, Connection(BASE, SECRET), clock=lambda: NOW)


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7", NOW) == NOW + timedelta(seconds=7)
    assert parse_retry_after("Sun, 22 Nov 2026 10:00:30 GMT", NOW) == NOW + timedelta(seconds=30)
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-3", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_rate_limit_reset_epoch_and_delta() -> None:
    epoch = int((NOW + timedelta(seconds=90)).timestamp())
    hints = parse_rate_hints(
        {
            "X-RateLimit-Reset": str(epoch),
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "0",
        },
        NOW,
    )
    assert hints.reset_at == NOW + timedelta(seconds=90)
    assert (hints.limit, hints.remaining) == (1000, 0)
    assert parse_rate_hints({"X-RateLimit-Reset": "12"}, NOW).reset_at == NOW + timedelta(
        seconds=12
    )
    assert parse_rate_hints({}, NOW).empty


def test_parse_time_variants() -> None:
    assert parse_time("2026-03-20T10:00:00.000Z") == datetime(2026, 3, 20, 10, tzinfo=UTC)
    assert parse_time("2026-03-20T10:00:00") == datetime(2026, 3, 20, 10, tzinfo=UTC)
    assert parse_time(1_700_000_000) == datetime.fromtimestamp(1_700_000_000, UTC)
    assert parse_time(1_700_000_000_000) == datetime.fromtimestamp(1_700_000_000, UTC)
    assert parse_time("yesterday") is None
    assert parse_time(None) is None
    assert parse_time(True) is None
    assert parse_time(1.25e21) is None


def test_lookup_status_is_case_insensitive_and_total() -> None:
    table = {"done": JobState.SUCCEEDED}
    assert lookup_status(table, " DONE ") is JobState.SUCCEEDED
    assert lookup_status(table, "weird") is None
    assert lookup_status(table, 3) is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthRejected),
        (403, AuthRejected),
        (404, NotFound),
        (410, ResultExpired),
        (400, RequestRejected),
        (422, RequestRejected),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
    ],
)
async def test_status_codes_map_to_typed_errors(
    probe: Probe, status: int, error: type[Exception]
) -> None:
    with aioresponses() as mock:
        mock.get(f"{BASE}/x", status=status, payload={"message": "nope"})
        with pytest.raises(error) as info:
            await probe.call("GET", "/x", operation="status")
    assert SECRET not in str(info.value)


async def test_429_carries_retry_after(probe: Probe) -> None:
    with aioresponses() as mock:
        mock.get(f"{BASE}/x", status=429, payload={}, headers={"Retry-After": "12"})
        with pytest.raises(RateLimited) as info:
            await probe.call("GET", "/x", operation="status")
    assert info.value.retry_after == pytest.approx(12.0)


async def test_undecodable_body_is_malformed(probe: Probe) -> None:
    with aioresponses() as mock:
        mock.get(f"{BASE}/x", status=200, body=b'{"status": ', content_type="application/json")
        with pytest.raises(MalformedResponse):
            await probe.call("GET", "/x", operation="status")


async def test_html_5xx_page_is_unavailable_not_malformed(probe: Probe) -> None:
    with aioresponses() as mock:
        mock.get(f"{BASE}/x", status=502, body=b"<html>bad gateway</html>")
        with pytest.raises(UpstreamUnavailable):
            await probe.call("GET", "/x", operation="status")


async def test_timeout_and_connection_errors_are_unavailable(probe: Probe) -> None:
    with aioresponses() as mock:
        mock.get(f"{BASE}/t", exception=TimeoutError())
        mock.get(f"{BASE}/c", exception=aiohttp.ClientConnectionError("refused"))
        with pytest.raises(UpstreamUnavailable, match="timed out"):
            await probe.call("GET", "/t", operation="status")
        with pytest.raises(UpstreamUnavailable, match="ClientConnectionError"):
            await probe.call("GET", "/c", operation="status")


async def test_observer_sees_each_call_and_its_outcome(probe: Probe) -> None:
    seen: list[tuple[str, str, str]] = []

    def observer(provider: str, operation: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        seen.append((provider, operation, outcome))

    probe.observer = observer
    with aioresponses() as mock:
        mock.get(f"{BASE}/ok", payload={"a": 1})
        mock.get(f"{BASE}/limited", status=429, payload={})
        await probe.call("GET", "/ok", operation="status")
        with pytest.raises(RateLimited):
            await probe.call("GET", "/limited", operation="status")
    assert seen == [("probe", "status", "ok"), ("probe", "status", "rate_limited")]


async def test_unsupported_actions_raise(probe: Probe) -> None:
    for call in (probe.cancel("a"), probe.rerun("a"), probe.continue_("a", {}), probe.submit({})):
        with pytest.raises(UnsupportedAction):
            await call


def test_key_is_not_in_repr() -> None:
    connection = Connection(BASE, SECRET)
    assert SECRET not in repr(connection)
