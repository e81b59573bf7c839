"""The pure part of authentication (``gateway/auth.py``) and the per-tenant limit rules
(``gateway/limits.py``): key shape, keyed digests, stream tokens, parsing, and ``breach``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from gateway import auth
from gateway.auth import (
    ALL_SCOPES,
    OPEN,
    PUBLIC_PREFIX_LENGTH,
    ApiKey,
    KeyHasher,
    Principal,
    Scope,
    looks_like_key,
    new_key_id,
    new_key_secret,
    parse_duration,
    parse_scopes,
    public_prefix,
    valid_tenant,
)
from gateway.limits import ACTIVE_RETRY_AFTER, WINDOW, TenantLimits, breach
from gateway.settings import LimitSettings

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def stored(hasher: KeyHasher, key: str, **changes: object) -> ApiKey:
    fields: dict[str, object] = {
        "id": "key_1",
        "tenant": "acme",
        "scopes": frozenset({Scope.READ}),
        "digest": hasher.digest(key),
        "prefix": public_prefix(key),
        "name": "",
        "created_at": NOW,
        **changes,
    }
    return ApiKey(**fields)  # type: ignore[arg-type]


# -- keys ------------------------------------------------------------------------------------------


def test_a_key_is_jg_and_43_urlsafe_characters_carrying_256_random_bits() -> None:
    keys = {new_key_secret() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"jg_[A-Za-z0-9_-]{43}", key), key
        assert looks_like_key(key)
        raw = base64.urlsafe_b64decode(key[3:] + "=")
        assert len(raw) == 32  # 256 bits, from secrets.token_urlsafe(32)
    # Every character position varies across keys: nothing is fixed but the prefix.
    for position in range(3, 3 + 42):
        assert len({key[position] for key in keys}) > 8, position


@pytest.mark.parametrize(
    "text",
    [
        "",
        "jg_",
        "jg_" + "a" * 42,
        "jg_" + "a" * 44,
        "jx_" + "a" * 43,
        "JG_" + "a" * 43,
        "jg_" + "a" * 42 + "=",
        "jg_" + "a" * 42 + "+",
        "jg_" + "a" * 42 + "/",
        "jg_" + "a" * 42 + " ",
        "jgs_" + "a" * 42,
        " jg_" + "a" * 43,
        "jg_" + "a" * 43 + "\n",
    ],
)
def test_anything_else_does_not_look_like_a_key(text: str) -> None:
    assert not looks_like_key(text)


def test_the_public_prefix_is_jg_and_eight_characters() -> None:
    key = new_key_secret()
    assert PUBLIC_PREFIX_LENGTH == 11
    assert public_prefix(key) == key[:11]
    assert public_prefix("short") == "short"


def test_key_ids_are_distinct_and_opaque() -> None:
    ids = {new_key_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"key_[0-9a-f]{16}", key_id) for key_id in ids)


def test_the_digest_is_an_hmac_keyed_by_the_secret() -> None:
    key = new_key_secret()
    one, same, other = KeyHasher(SECRET), KeyHasher(SECRET), KeyHasher(OTHER_SECRET)
    digest = one.digest(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert same.digest(key) == digest  # deterministic: a lookup by digest works
    assert other.digest(key) != digest  # a row is worth nothing without the secret
    assert one.digest(new_key_secret()) != digest
    # Neither a plain hash of the key, nor an HMAC keyed directly by the secret.
    assert digest != hashlib.sha256(key.encode()).hexdigest()
    assert digest != hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert key not in digest


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        KeyHasher(b"x" * 31)


def test_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = KeyHasher(SECRET)
    key = new_key_secret()
    record = stored(hasher, key)
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: str | bytes, b: str | bytes) -> bool:
        calls.append((a, b))
        return real(a, b)  # type: ignore[type-var]

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert hasher.matches(key, record)
    assert not hasher.matches(new_key_secret(), record)
    assert calls[0] == (hasher.digest(key), record.digest)
    assert len(calls) == 2
    # The stream token's signature is compared the same way.
    token = hasher.stream_token(Principal("acme", ALL_SCOPES, "key_1"), NOW, timedelta(minutes=5))
    calls.clear()
    assert hasher.read_stream_token(token.token, NOW) is not None
    assert len(calls) == 1


def test_an_api_key_is_usable_until_revoked_or_expired() -> None:
    hasher = KeyHasher(SECRET)
    key = new_key_secret()
    assert stored(hasher, key).usable(NOW)
    expiring = stored(hasher, key, expires_at=NOW + timedelta(seconds=1))
    assert expiring.usable(NOW)
    assert not expiring.usable(NOW + timedelta(seconds=1))
    assert not stored(hasher, key, revoked_at=NOW).usable(NOW - timedelta(days=1))


def test_the_public_view_has_neither_key_nor_digest() -> None:
    hasher = KeyHasher(SECRET)
    key = new_key_secret()
    record = stored(hasher, key, scopes=frozenset({Scope.WRITE, Scope.READ}), name="ci")
    public = record.public()
    assert set(public) == {
        "id",
        "tenant",
        "name",
        "prefix",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "source",
    }
    text = orjson.dumps(public).decode()
    assert key not in text
    assert record.digest not in text
    assert key[PUBLIC_PREFIX_LENGTH:] not in text
    assert public["prefix"] == key[:11]
    assert public["scopes"] == ["jobs:read", "jobs:write"]
    assert public["created_at"] == "2026-11-22T10:00:00Z"


def test_principals_allow_their_scopes_and_open_allows_all() -> None:
    reader = Principal("acme", frozenset({Scope.READ}), "key_1")
    assert reader.allows(Scope.READ)
    assert not reader.allows(Scope.WRITE)
    assert not reader.allows(Scope.ADMIN)
    assert OPEN.tenant == "default"
    assert OPEN.via == "open"
    assert all(OPEN.allows(scope) for scope in Scope)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("acme", True),
        ("a", True),
        ("team-1_b", True),
        ("9lives", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("Acme", False),
        ("-acme", False),
        ("_acme", False),
        ("ac:me", False),
        ("ac me", False),
        ("acme\n", False),
        ("acmé", False),
    ],
)
def test_tenant_names(name: str, valid: bool) -> None:
    assert valid_tenant(name) is valid


# -- stream tokens ---------------------------------------------------------------------------------

PRINCIPAL = Principal("acme", frozenset({Scope.READ, Scope.WRITE}), "key_1")
TTL = timedelta(minutes=5)


def test_a_stream_token_reads_back_its_tenant_and_key_until_it_expires() -> None:
    hasher = KeyHasher(SECRET)
    token = hasher.stream_token(PRINCIPAL, NOW, TTL)
    assert token.token.startswith("jgs_")
    assert token.tenant == "acme"
    assert token.expires_at == NOW + TTL
    assert hasher.read_stream_token(token.token, NOW) == ("acme", "key_1")
    assert hasher.read_stream_token(token.token, NOW + TTL - timedelta(seconds=1)) == (
        "acme",
        "key_1",
    )
    assert hasher.read_stream_token(token.token, NOW + TTL) is None
    assert hasher.read_stream_token(token.token, NOW + TTL + timedelta(days=1)) is None


def test_a_stream_token_from_another_secret_is_refused() -> None:
    token = KeyHasher(OTHER_SECRET).stream_token(PRINCIPAL, NOW, TTL)
    assert KeyHasher(SECRET).read_stream_token(token.token, NOW) is None


def _resigned(payload: dict[str, object], signature: str) -> str:
    encoded = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
    return f"jgs_{encoded}.{signature}"


def test_a_tampered_stream_token_is_refused() -> None:
    hasher = KeyHasher(SECRET)
    token = hasher.stream_token(PRINCIPAL, NOW, TTL).token
    payload, _, signature = token[4:].partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["t"] == "acme"
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    forged = [
        _resigned({**claims, "t": "other"}, signature),  # another tenant, old signature
        _resigned({**claims, "e": claims["e"] + 86400}, signature),  # a longer life
        _resigned({**claims, "k": "key_2"}, signature),
        f"jgs_{payload}.{flipped}",
        f"jgs_{payload}.",
        f"jgs_{payload}",
        f"jgs_.{signature}",
        token[4:],  # no prefix
        "jg_" + token[4:],
        token + "x",
        token[:-1],
        token + "." + signature,
        "jgs_" + "a" * 600,
        "",
    ]
    for candidate in forged:
        assert hasher.read_stream_token(candidate, NOW) is None, candidate


def test_well_signed_but_malformed_claims_are_refused() -> None:
    """Only the server can sign, but a reader must not trust a signed payload's shape blindly."""
    hasher = KeyHasher(SECRET)
    token_key = hmac.new(SECRET, b"jobgate stream-token v1", hashlib.sha256).digest()

    def signed(raw: bytes) -> str:
        payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        mac = hmac.new(token_key, payload.encode(), hashlib.sha256).digest()
        return f"jgs_{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    expires = int((NOW + TTL).timestamp())
    # The signing key is what the module derives: a good payload signed so is accepted.
    assert hasher.read_stream_token(
        signed(orjson.dumps({"t": "acme", "k": None, "e": expires})), NOW
    ) == ("acme", None)
    for raw in (
        b"not json",
        b"[]",
        orjson.dumps({"t": "acme", "e": expires}),
        orjson.dumps({"t": 5, "k": None, "e": expires}),
        orjson.dumps({"t": "acme", "k": None, "e": "soon"}),
        orjson.dumps({"t": "acme", "k": None, "e": float(expires)}),
    ):
        assert hasher.read_stream_token(signed(raw), NOW) is None, raw


# -- parsing ---------------------------------------------------------------------------------------


def test_parse_scopes() -> None:
    assert parse_scopes(["jobs:read"]) == {Scope.READ}
    assert parse_scopes(["jobs:read,jobs:write", " admin "]) == ALL_SCOPES
    assert parse_scopes(["jobs:read, ,jobs:read,"]) == {Scope.READ}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["jobs:delete"], "unknown scope 'jobs:delete'"),
        (["jobs:read,root"], "unknown scope 'root'"),
        (["Jobs:Read"], "unknown scope 'Jobs:Read'"),
        ([], "at least one scope"),
        ([""], "at least one scope"),
        ([" , "], "at least one scope"),
    ],
)
def test_parse_scopes_names_what_is_wrong(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_scopes(values)
    if "unknown" in message:
        assert "jobs:read, jobs:write, admin" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), (" 1d ", 86400)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0d", "longer than zero"),
        ("0s", "longer than zero"),
        ("1w", "expected a duration"),
        ("", "expected a duration"),
        ("d", "expected a duration"),
        ("-1d", "expected a duration"),
        ("1.5d", "expected a duration"),
        ("90", "expected a duration"),
        ("90 d", "expected a duration"),
        ("1234567d", "expected a duration"),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


# -- limits ----------------------------------------------------------------------------------------


def test_no_limits_never_breach() -> None:
    assert not TenantLimits().any
    assert breach(TenantLimits(), active=10**6, recent=10**6, oldest_recent=NOW, now=NOW) is None


def test_under_both_limits_passes() -> None:
    limits = TenantLimits(max_active_jobs=3, submits_per_minute=5)
    assert limits.any
    assert breach(limits, active=2, recent=4, oldest_recent=NOW, now=NOW) is None


def test_the_rate_limit_frees_a_place_when_the_oldest_job_leaves_the_window() -> None:
    limits = TenantLimits(submits_per_minute=2)
    oldest = NOW - timedelta(seconds=20)
    found = breach(limits, active=0, recent=2, oldest_recent=oldest, now=NOW)
    assert found is not None
    assert found.code == "tenant_rate_limited"
    assert found.retry_after == pytest.approx((oldest + WINDOW - NOW).total_seconds())
    assert found.retry_after == pytest.approx(40.0)
    assert "2 jobs per minute" in found.message
    # Never less than a second, even when the window is about to free a place.
    almost = breach(limits, active=0, recent=2, oldest_recent=NOW - WINDOW, now=NOW)
    assert almost is not None
    assert almost.retry_after == 1.0
    # Without the oldest's time, a whole window.
    unknown = breach(limits, active=0, recent=3, oldest_recent=None, now=NOW)
    assert unknown is not None
    assert unknown.retry_after == 60.0


def test_the_active_limit() -> None:
    limits = TenantLimits(max_active_jobs=1)
    assert breach(limits, active=0, recent=100, oldest_recent=NOW, now=NOW) is None
    found = breach(limits, active=1, recent=0, oldest_recent=None, now=NOW)
    assert found is not None
    assert found.code == "tenant_active_limit"
    assert found.retry_after == ACTIVE_RETRY_AFTER
    assert "1 unfinished jobs" in found.message


def test_the_rate_is_reported_first_when_both_are_broken() -> None:
    limits = TenantLimits(max_active_jobs=1, submits_per_minute=1)
    found = breach(limits, active=1, recent=1, oldest_recent=NOW, now=NOW)
    assert found is not None
    assert found.code == "tenant_rate_limited"


def test_limits_per_tenant_override_the_defaults() -> None:
    settings = LimitSettings(
        max_active_jobs=10,
        submits_per_minute=100,
        tenants={"big": {"submits_per_minute": 1000}, "small": {"max_active_jobs": 1}},
    )
    assert settings.of("anyone") == TenantLimits(10, 100)
    assert settings.of("big") == TenantLimits(10, 1000)
    assert settings.of("small") == TenantLimits(1, 100)
    assert not LimitSettings().of("anyone").any
