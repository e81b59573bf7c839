"""Client API keys, scopes, principals and stream tokens: the pure part of authentication.

A key is ``jg_`` + 43 characters of URL-safe base64 (256 random bits from :mod:`secrets`). It is
shown once, when it is made, and stored only as ``HMAC-SHA-256(secret, key)``. A plain SHA-256
would do against guessing (nobody brute-forces 256 bits); the server secret (a pepper) is there
for the other attack: whoever can write to the keys table, through a shared database user or a
restored backup, still cannot mint a working key, because a row is worth nothing without the
secret that only the gateways hold. The same secret signs stream tokens, under a derived key.

Nothing here does I/O: the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

import orjson

KEY_PREFIX = "jg_"
STREAM_TOKEN_PREFIX = "jgs_"
PUBLIC_PREFIX_LENGTH = len(KEY_PREFIX) + 8
"""``jg_`` and the first 8 random characters: enough to tell keys apart in logs and lists, far too
few (48 bits of 256) to help anyone guess the rest."""
_KEY_LENGTH = len(KEY_PREFIX) + 43
_KEY_PATTERN = re.compile(r"^jg_[A-Za-z0-9_-]{43}$")
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""Lower-case letters, digits, ``-`` and ``_``: safe in a URL, a log field and a metric label."""
DEFAULT_TENANT = "default"


class Scope(StrEnum):
    READ = "jobs:read"
    WRITE = "jobs:write"
    ADMIN = "admin"
    """Keys (and webhook settings) of the key's own tenant, never another's."""


ALL_SCOPES = frozenset(Scope)


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names (a comma-separated string is split); ``ValueError`` names a bad
    one."""
    scopes: set[Scope] = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            try:
                scopes.add(Scope(name))
            except ValueError:
                allowed = ", ".join(s.value for s in Scope)
                raise ValueError(f"unknown scope {name!r}: scopes are {allowed}") from None
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return frozenset(scopes)


def valid_tenant(name: str) -> bool:
    return re.fullmatch(TENANT_PATTERN, name) is not None


def new_key_secret() -> str:
    """A new plaintext key: ``jg_`` + 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def public_prefix(presented: str) -> str:
    """What may be logged of a presented credential: its first characters, never the rest."""
    return presented[:PUBLIC_PREFIX_LENGTH]


def looks_like_key(presented: str) -> bool:
    return len(presented) == _KEY_LENGTH and _KEY_PATTERN.match(presented) is not None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: everything but the key itself."""

    id: str
    tenant: str
    scopes: frozenset[Scope]
    digest: str
    """``HMAC-SHA-256(secret, key)``, hex."""
    prefix: str
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    source: Literal["store", "config"] = "store"
    """``config``: defined by hash in the settings (GitOps); revoked by removing it there."""

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, object]:
        """The key as ``/v1/keys`` and ``jobgate keys list`` show it (never the digest)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": sorted(s.value for s in self.scopes),
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
            "source": self.source,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant and what it may do."""

    tenant: str
    scopes: frozenset[Scope]
    key_id: str | None = None
    via: Literal["key", "stream_token", "open"] = "key"
    """``open``: auth is off (``make run``); every caller is the default tenant with every scope."""

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


OPEN = Principal(DEFAULT_TENANT, ALL_SCOPES, via="open")


class KeyHasher:
    """The keyed hashes of keys, and the signatures of stream tokens, from one server secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the auth secret must be at least 32 bytes")
        self._keys = hmac.new(secret, b"jobgate api-key v1", hashlib.sha256).digest()
        self._tokens = hmac.new(secret, b"jobgate stream-token v1", hashlib.sha256).digest()

    def digest(self, key: str) -> str:
        return hmac.new(self._keys, key.encode(), hashlib.sha256).hexdigest()

    def matches(self, key: str, stored: ApiKey) -> bool:
        """Whether ``key`` is ``stored``'s, compared in constant time."""
        return hmac.compare_digest(self.digest(key), stored.digest)

    def stream_token(self, principal: Principal, now: datetime, ttl: timedelta) -> StreamToken:
        """A read-only token for ``principal``'s tenant, valid for ``ttl``: for ``EventSource``,
        which cannot send an ``Authorization`` header."""
        expires = now + ttl
        claims = {"t": principal.tenant, "k": principal.key_id, "e": int(expires.timestamp())}
        payload = _b64(orjson.dumps(claims))
        signature = _b64(hmac.new(self._tokens, payload.encode(), hashlib.sha256).digest())
        token = f"{STREAM_TOKEN_PREFIX}{payload}.{signature}"
        return StreamToken(token, expires.replace(microsecond=0), principal.tenant)

    def read_stream_token(self, token: str, now: datetime) -> tuple[str, str | None] | None:
        """``(tenant, key id)`` of a well-signed, unexpired token; ``None`` for anything else."""
        if not token.startswith(STREAM_TOKEN_PREFIX) or len(token) > 512:
            return None
        payload, sep, signature = token[len(STREAM_TOKEN_PREFIX) :].partition(".")
        if not sep:
            return None
        expected = _b64(hmac.new(self._tokens, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return None
        try:
            claims = orjson.loads(_unb64(payload))
            tenant, key_id, expires = claims["t"], claims["k"], claims["e"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not isinstance(tenant, str) or not isinstance(expires, int):
            return None
        if now >= datetime.fromtimestamp(expires, UTC):
            return None
        return tenant, key_id if isinstance(key_id, str) else None


@dataclass(frozen=True, slots=True)
class StreamToken:
    token: str
    expires_at: datetime
    tenant: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` or ``45s``: a key's lifetime on the command line."""
    match = re.fullmatch(r"(\d{1,6})([dhms])", text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as 90d, 12h, 30m or 45s, got {text!r}")
    amount, unit = int(match[1]), match[2]
    seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
    if amount == 0:
        raise ValueError("a key's lifetime must be longer than zero")
    return timedelta(seconds=amount * seconds)
