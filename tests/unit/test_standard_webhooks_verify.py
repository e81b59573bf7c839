"""Verifying Standard Webhooks signatures (Pulse's pushes, as Svix signs them), without sockets.

The published test vector, refusals (signature, timestamp either way, missing headers), signature
lists, the replay guard keyed by ``webhook-id`` under an injected clock, Pulse's callback bodies,
and the ``whsec_`` secret rules for ``providers.pulse.callback_secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from adapters.base import JSON
from gateway.callbacks import (
    REPLAY_TTL,
    CallbackConfig,
    CallbackInbox,
    CallbacksNotEnabled,
    Deduper,
    InvalidCallback,
    SignatureUnauthorized,
    callback_secrets,
    parse,
    signed_endpoints,
    token_matches,
)
from gateway.settings import load_settings
from gateway.signatures import (
    MAX_SIGNATURES,
    TOLERANCE,
    InvalidSignature,
    InvalidTimestamp,
    MissingHeaders,
    VerificationError,
    generate_secret,
    parse_secret,
    secret_problem,
    sign,
    signed_headers,
    verify,
)
from gateway.store.base import NewEvent
from gateway.store.memory import MemoryStore
from tests.unit.store.factories import make_job

# The Standard Webhooks specification's own example (also in the svix and standardwebhooks
# libraries' test suites).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEY = parse_secret(SECRET)
HEADERS = {
    "webhook-id": MSG_ID,
    "webhook-timestamp": str(TIMESTAMP),
    "webhook-signature": EXPECTED,
}


def _forbidden_texts() -> list[str]:
    return [SECRET, SECRET.removeprefix("whsec_"), EXPECTED, EXPECTED.removeprefix("v1,")]


# -- the test vector -----------------------------------------------------------------------------


def test_the_published_vector_is_what_an_hmac_of_id_timestamp_body_gives() -> None:
    # Computed here by hand, so the vector checks sign() rather than sign() checking itself.
    digest = hmac.new(
        base64.b64decode(SECRET.removeprefix("whsec_")),
        f"{MSG_ID}.{TIMESTAMP}.".encode() + BODY,
        hashlib.sha256,
    ).digest()
    assert "v1," + base64.b64encode(digest).decode() == EXPECTED
    assert sign(KEY, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert signed_headers(KEY, MSG_ID, TIMESTAMP, BODY) == HEADERS


def test_the_published_vector_verifies() -> None:
    assert verify(KEY, HEADERS, BODY, now=TIMESTAMP) == MSG_ID


def test_header_names_are_case_insensitive_and_svix_spellings_count() -> None:
    upper = {name.upper(): value for name, value in HEADERS.items()}
    assert verify(KEY, upper, BODY, now=TIMESTAMP) == MSG_ID
    svix = {name.replace("webhook-", "svix-"): value for name, value in HEADERS.items()}
    assert verify(KEY, svix, BODY, now=TIMESTAMP) == MSG_ID


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "key"),
    [
        pytest.param(HEADERS, BODY + b" ", KEY, id="body re-encoded"),
        pytest.param(HEADERS, b'{"test": 2432232315}', KEY, id="body changed"),
        pytest.param({**HEADERS, "webhook-id": "msg_other"}, BODY, KEY, id="another id"),
        pytest.param(
            {**HEADERS, "webhook-timestamp": str(TIMESTAMP + 1)}, BODY, KEY, id="another time"
        ),
        pytest.param(HEADERS, BODY, parse_secret(generate_secret()), id="another secret"),
        pytest.param(
            {**HEADERS, "webhook-signature": "v1," + "A" * 44}, BODY, KEY, id="another signature"
        ),
        pytest.param(
            {**HEADERS, "webhook-signature": EXPECTED.replace("v1,", "v2,")},
            BODY,
            KEY,
            id="right digest under another version",
        ),
        pytest.param(
            {**HEADERS, "webhook-signature": EXPECTED[:-2]}, BODY, KEY, id="truncated signature"
        ),
        pytest.param({**HEADERS, "webhook-signature": "garbage"}, BODY, KEY, id="no version"),
    ],
)
def test_a_wrong_signature_is_refused(headers: dict[str, str], body: bytes, key: bytes) -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify(key, headers, body, now=TIMESTAMP)
    assert caught.value.reason == "invalid_signature"
    for text in _forbidden_texts():
        assert text not in str(caught.value)


@pytest.mark.parametrize("offset", [TOLERANCE + 1, -(TOLERANCE + 1), 86_400, -86_400])
def test_a_timestamp_outside_the_tolerance_is_refused_either_way(offset: int) -> None:
    # now - timestamp = offset: positive is an old delivery, negative one from the future.
    with pytest.raises(InvalidTimestamp) as caught:
        verify(KEY, HEADERS, BODY, now=TIMESTAMP + offset)
    assert ("old" if offset > 0 else "in the future") in str(caught.value)
    assert caught.value.reason == "invalid_timestamp"


@pytest.mark.parametrize("offset", [TOLERANCE, -TOLERANCE, 0.5, -0.5])
def test_a_timestamp_within_the_tolerance_is_accepted(offset: float) -> None:
    assert verify(KEY, HEADERS, BODY, now=TIMESTAMP + offset) == MSG_ID


def test_the_timestamp_is_checked_before_the_signature() -> None:
    # A stale delivery is refused as stale even when its signature holds: the reason must say so.
    with pytest.raises(InvalidTimestamp):
        verify(KEY, HEADERS, BODY, now=TIMESTAMP + 10 * TOLERANCE)


@pytest.mark.parametrize("value", ["", "soon", "1614265330.5", "0x60376ff2"])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(value: str) -> None:
    error = MissingHeaders if value == "" else InvalidTimestamp
    with pytest.raises(error):
        verify(KEY, {**HEADERS, "webhook-timestamp": value}, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("value", ["1" + "0" * 400, "9" * 13, "-5", "+1614265330", "١٢٣"])
def test_a_timestamp_too_long_signed_or_not_ascii_is_refused_not_overflowed(value: str) -> None:
    with pytest.raises(InvalidTimestamp):
        verify(KEY, {**HEADERS, "webhook-timestamp": value}, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-signature"])
def test_header_bytes_that_are_not_utf8_are_refused_not_encoded(name: str) -> None:
    # aiohttp hands such bytes over as surrogates, which str.encode() refuses to encode.
    headers = {**HEADERS, name: HEADERS[name] + "\udcff"}
    with pytest.raises(InvalidSignature):
        verify(KEY, headers, BODY, now=TIMESTAMP)


def test_a_token_that_is_not_utf8_matches_nothing() -> None:
    assert not token_matches("secret\udcff", "secret")
    assert token_matches("secret", "secret")


@pytest.mark.parametrize("missing", sorted(HEADERS))
def test_each_missing_header_is_named(missing: str) -> None:
    headers = {name: value for name, value in HEADERS.items() if name != missing}
    with pytest.raises(MissingHeaders) as caught:
        verify(KEY, headers, BODY, now=TIMESTAMP)
    assert missing in str(caught.value)
    assert caught.value.reason == "missing_headers"


def test_no_headers_at_all_names_all_three() -> None:
    with pytest.raises(MissingHeaders, match="webhook-id, webhook-timestamp, webhook-signature"):
        verify(KEY, {}, BODY, now=TIMESTAMP)


def test_every_refusal_is_a_verification_error() -> None:
    for error in (MissingHeaders, InvalidTimestamp, InvalidSignature):
        assert issubclass(error, VerificationError)


# -- signature lists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listed",
    [
        f"v1,bm90IGl0 {EXPECTED}",
        f"{EXPECTED} v1,bm90IGl0",
        f"v1a,c2lnbmVkIHdpdGggZWQyNTUxOQ== v1,bm90IGl0  {EXPECTED} v2,whatever",
        f"  {EXPECTED}  ",
    ],
)
def test_one_valid_entry_among_several_is_enough(listed: str) -> None:
    headers = {**HEADERS, "webhook-signature": listed}
    assert verify(KEY, headers, BODY, now=TIMESTAMP) == MSG_ID


def test_a_list_of_only_wrong_entries_is_refused() -> None:
    other = sign(parse_secret(generate_secret()), MSG_ID, TIMESTAMP, BODY)
    headers = {**HEADERS, "webhook-signature": f"v1,bm90IGl0 {other}"}
    with pytest.raises(InvalidSignature):
        verify(KEY, headers, BODY, now=TIMESTAMP)


def test_an_overlong_list_is_refused_without_trying_it() -> None:
    listed = " ".join(["v1,bm90IGl0"] * MAX_SIGNATURES + [EXPECTED])
    with pytest.raises(InvalidSignature, match="more than"):
        verify(KEY, {**HEADERS, "webhook-signature": listed}, BODY, now=TIMESTAMP)


# -- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (SECRET, None),
        (generate_secret(), None),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with whsec_"),
        ("whsec_not base64!", "must be base64"),
        ("whsec_", "is empty"),
    ],
)
def test_secret_rules(secret: str, problem: str | None) -> None:
    found = secret_problem(secret)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def _settings(tmp_path: Path, *, embedded: bool, **sections: Any) -> Any:
    providers = {
        name: {"base_url": "http://127.0.0.1:9/x", "api_key": "k"}
        for name in ("extract", "catchall", "pulse")
    }
    providers["pulse"].update(sections.pop("pulse", {}))
    return load_settings(
        tmp_path / "none.toml",
        sandbox={"embedded": embedded},
        providers=providers,
        **sections,
    )


def test_a_pulse_secret_that_is_not_whsec_is_refused_as_the_settings_load_unquoted(
    tmp_path: Path,
) -> None:
    wrong = "plain-token-7c1e9b"
    with pytest.raises(ValidationError) as caught:
        _settings(tmp_path, embedded=False, pulse={"callback_secret": wrong})
    # What `jobgate serve` prints: each error's message, never its input.
    (error,) = caught.value.errors(include_input=False, include_url=False)
    assert "providers.pulse.callback_secret" in error["msg"]
    assert "whsec_" in error["msg"]
    assert wrong not in str(error)


def test_a_configured_pulse_secret_is_used_as_it_is(tmp_path: Path) -> None:
    settings = _settings(tmp_path, embedded=True, pulse={"callback_secret": SECRET})
    assert callback_secrets(settings, ["pulse"]) == {"pulse": SECRET}


def test_the_embedded_sandbox_gets_a_whsec_secret_for_pulse_once_per_process(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, embedded=True)
    first = callback_secrets(settings, ["pulse"])["pulse"]
    assert secret_problem(first) is None
    assert len(parse_secret(first)) >= 24
    assert callback_secrets(settings, ["pulse"])["pulse"] == first


def test_signed_endpoints_point_at_the_pulse_inbox_without_a_token(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        embedded=True,
        pulse={"callback_secret": SECRET},
        server={"public_base_url": "https://gw.example.test/base/"},
    )
    assert signed_endpoints(settings) == [
        ("https://gw.example.test/base/v1/callbacks/pulse", SECRET)
    ]
    assert signed_endpoints(_settings(tmp_path, embedded=True)) == [], "no public URL, no push"
    disabled = _settings(
        tmp_path,
        embedded=True,
        pulse={"enabled": False},
        server={"public_base_url": "https://gw.example.test"},
    )
    assert signed_endpoints(disabled) == []


# -- Pulse's bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "job.completed", "data": {"job_id": "j1", "status": "completed"}}, "completed"),
        ({"type": "job.failed", "data": {"jobId": "j1"}}, "failed"),
        ({"type": "job.cancelled", "data": {"id": "j1"}}, "cancelled"),
        ({"event": "job.processing", "job_id": "j1"}, "processing"),
        ({"job_id": "j1", "status": "completed", "data": None}, "completed"),
        ({"id": "j1"}, None),
    ],
)
def test_pulse_bodies_name_their_job(body: JSON, expected: str | None) -> None:
    notice = parse("pulse", body)
    assert (notice.upstream_id, notice.status) == ("j1", expected)


@pytest.mark.parametrize(
    "body", [None, [], "job.completed", {"type": "job.completed"}, {"data": {"job_id": 7}}]
)
def test_a_pulse_body_without_a_job_is_invalid(body: JSON) -> None:
    with pytest.raises(InvalidCallback):
        parse("pulse", body)


# -- the inbox: signature, then replay guard -----------------------------------------------------


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Refresher:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, job_id: str, tenant: str, final: bool = True) -> None:
        self.calls.append(job_id)


async def _inbox(
    *, secrets: dict[str, str] | None = None, replays: Deduper | None = None
) -> tuple[CallbackInbox, Refresher, str]:
    store = MemoryStore()
    job = make_job(provider="pulse", upstream_id="up_1")
    await store.create(job, [NewEvent("created", job.public())])
    refresh = Refresher()
    config = CallbackConfig("https://gw", {"pulse": SECRET} if secrets is None else secrets)
    inbox = CallbackInbox(
        config, store, refresh, replays=replays, wall_clock=lambda: float(TIMESTAMP)
    )
    return inbox, refresh, job.id


def _event(status: str, job_id: str = "up_1") -> JSON:
    return {"type": f"job.{status}", "data": {"job_id": job_id, "status": status}}


async def test_the_inbox_verifies_with_the_pulse_secret_and_its_own_wall_clock() -> None:
    inbox, _, _ = await _inbox()
    assert inbox.signs("pulse")
    assert not inbox.signs("extract")
    assert inbox.verify("pulse", HEADERS, BODY) == MSG_ID


async def test_the_inbox_refuses_with_a_reason_and_never_the_secret_or_signature() -> None:
    inbox, _, _ = await _inbox()
    cases = {
        "missing_headers": {k: v for k, v in HEADERS.items() if k != "webhook-signature"},
        "invalid_signature": {**HEADERS, "webhook-id": "msg_forged"},
        "invalid_timestamp": {**HEADERS, "webhook-timestamp": str(TIMESTAMP - TOLERANCE - 60)},
    }
    for reason, headers in cases.items():
        with capture_logs() as logs, pytest.raises(SignatureUnauthorized) as caught:
            inbox.verify("pulse", headers, BODY)
        assert caught.value.status == 401
        assert caught.value.code == "callback_unauthorized"
        assert caught.value.extra == {"reason": reason}
        assert [entry["event"] for entry in logs] == ["callback.unauthorized"]
        for text in _forbidden_texts():
            assert text not in caught.value.message
            assert text not in str(logs)


async def test_a_token_is_no_way_into_a_signing_provider() -> None:
    inbox, _, _ = await _inbox()
    with pytest.raises(SignatureUnauthorized):
        inbox.authenticate("pulse", SECRET)


async def test_pulse_without_a_secret_or_with_a_non_whsec_one_is_not_enabled() -> None:
    for secrets in ({}, {"pulse": "not-a-whsec"}):
        inbox, _, _ = await _inbox(secrets=secrets)
        with pytest.raises(CallbacksNotEnabled):
            inbox.verify("pulse", HEADERS, BODY)


async def test_a_replayed_webhook_id_is_a_duplicate_with_no_second_refresh() -> None:
    inbox, refresh, job_id = await _inbox()
    body = _event("completed")
    assert await inbox.receive("pulse", body, message_id="msg_1") == {
        "matched": True,
        "duplicate": False,
    }
    # The same id is a replay, whatever the body says (a later event under a reused id too).
    for again in (body, _event("failed")):
        assert await inbox.receive("pulse", again, message_id="msg_1") == {
            "matched": True,
            "duplicate": True,
        }
    assert refresh.calls == [job_id]
    # A new message about the same job is a new hint.
    assert await inbox.receive("pulse", _event("failed"), message_id="msg_2") == {
        "matched": True,
        "duplicate": False,
    }
    assert refresh.calls == [job_id, job_id]
    assert inbox.refreshes == 2


async def test_the_replay_guard_remembers_for_twice_the_tolerance_then_forgets() -> None:
    clock = Clock(1000.0)
    replays = Deduper(ttl=REPLAY_TTL, size=100, clock=clock)
    inbox, refresh, _ = await _inbox(replays=replays)
    await inbox.receive("pulse", _event("completed"), message_id="msg_1")
    # A delivery stamped t can verify until t + TOLERANCE and arrive first at t - TOLERANCE.
    assert REPLAY_TTL >= 2 * TOLERANCE
    clock.now += REPLAY_TTL - 1
    answer = await inbox.receive("pulse", _event("processing"), message_id="msg_1")
    assert answer["duplicate"] is True
    assert len(refresh.calls) == 1
    clock.now += 2
    answer = await inbox.receive("pulse", _event("failed"), message_id="msg_1")
    assert answer["duplicate"] is False, "past the window the signature check refuses it anyway"
    assert len(refresh.calls) == 2


async def test_the_replay_guard_is_bounded() -> None:
    clock = Clock()
    replays = Deduper(ttl=REPLAY_TTL, size=3, clock=clock)
    inbox, refresh, _ = await _inbox(replays=replays)
    for n in range(5):
        await inbox.receive("pulse", _event("processing", "up_other"), message_id=f"msg_{n}")
    assert len(replays) == 3
    assert refresh.calls == [], "unmatched: nothing to refresh"
    assert not replays.first("pulse\x00msg_4")
    assert replays.first("pulse\x00msg_0"), "the oldest id was evicted"
