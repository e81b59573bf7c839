"""Who may call: credentials in, a :class:`~gateway.auth.Principal` out, and key management.

One :class:`Access` per process. It reads keys from the store through a short cache (a request
must not cost a database round trip for its key) that the store's ``keys`` signal clears at once
when any replica revokes a key; ``auth.cache_seconds`` (at most 1 s) bounds the delay when that
signal is lost. ``last_used_at`` is kept in memory and written in one batch a minute, so a busy
key does not turn every read into a write.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from gateway.auth import (
    OPEN,
    ApiKey,
    KeyHasher,
    Principal,
    Scope,
    StreamToken,
    looks_like_key,
    new_key_id,
    new_key_secret,
    public_prefix,
    valid_tenant,
)
from gateway.errors import InvalidRequest, KeyNotFound, Unauthorized
from gateway.settings import Settings
from gateway.store.base import ApiKeys

log = structlog.get_logger("jobgate.auth")

SECRET_FILE = "auth.secret"
_CACHE_LIMIT = 10_000
"""Cached lookups kept at most (unknown keys too): a flood of random keys cannot grow memory."""


class AuthNotConfigured(Exception):
    """Keys cannot be hashed: no secret is configured where one must be. One line, for an
    operator."""


def load_secret(settings: Settings) -> bytes:
    """The server secret keys are hashed with: configured, or (SQLite only) made once and kept
    beside the database, where ``jobgate keys create`` finds the same one as the gateway."""
    configured = settings.auth.secret_value()
    if configured:
        if len(configured) < 32:
            raise AuthNotConfigured("auth.secret must be at least 32 characters")
        return configured.encode()
    if settings.store.kind == "memory":
        return secrets.token_bytes(32)
    if settings.store.kind == "postgres":
        raise AuthNotConfigured(
            "auth needs a secret shared by every replica: set JOBGATE_AUTH__SECRET or "
            "auth.secret_file (at least 32 characters, e.g. `openssl rand -base64 32`)"
        )
    path = Path(settings.store.path).parent / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once agree on one secret (the loser reads it).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip().encode()


def _now() -> datetime:
    return datetime.now(UTC)


class Access:
    def __init__(
        self,
        store: ApiKeys,
        hasher: KeyHasher,
        *,
        required: bool,
        configured: Sequence[ApiKey] = (),
        cache_seconds: float = 1.0,
        token_seconds: float = 300.0,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
        on_rejected: Callable[[str], None] = lambda reason: None,
        mint: bool = True,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.required = required
        # False when the hasher's secret lives only in this process (auth off on PostgreSQL
        # without auth.secret): a key made with it would stop working at the next restart.
        self.mint = mint
        self._configured = {key.digest: key for key in configured}
        self._configured_ids = {key.id: key for key in configured}
        self._cache_seconds = cache_seconds
        self._token_ttl = timedelta(seconds=token_seconds)
        self._clock = clock
        self._monotonic = monotonic
        self._on_rejected = on_rejected
        self._by_digest: dict[str, tuple[float, ApiKey | None]] = {}
        self._by_id: dict[str, tuple[float, ApiKey | None]] = {}
        self._used: dict[str, datetime] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, store: ApiKeys, on_rejected: Callable[[str], None]
    ) -> Access:
        required = settings.auth_required()
        try:
            secret, mint = load_secret(settings), True
        except AuthNotConfigured:
            if required:
                raise
            # Open, so no key is ever checked; the keys API says what is missing.
            secret, mint = secrets.token_bytes(32), False
        return cls(
            store,
            KeyHasher(secret),
            required=required,
            mint=mint,
            configured=[key.to_key() for key in settings.auth.keys],
            cache_seconds=settings.auth.cache_seconds,
            token_seconds=settings.auth.stream_token_seconds,
            on_rejected=on_rejected,
        )

    # -- authentication ------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header; :class:`Unauthorized` if none."""
        if not self.required:
            return OPEN
        if not authorization:
            raise self._reject(
                "auth_required",
                # Worded so the problem scrubber leaves it whole: it masks whatever follows
                # "Bearer " or "Authorization:" in any detail.
                "this operation needs an API key, sent in the Authorization header (the scheme "
                "Bearer, a space, then the jg_... key)",
                None,
            )
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise self._reject(
                "invalid_key",
                "the Authorization header must be the scheme Bearer, a space, then the key",
                None,
            )
        if not looks_like_key(presented):
            raise self._reject("invalid_key", "the key is not a jobgate key (jg_...)", None)
        digest = self.hasher.digest(presented)
        key = await self._lookup(digest)
        if key is None or not self.hasher.matches(presented, key):
            raise self._reject("invalid_key", "the key is not valid", presented)
        now = self._clock()
        if key.revoked_at is not None:
            raise self._reject("key_revoked", "the key has been revoked", presented)
        if key.expires_at is not None and now >= key.expires_at:
            raise self._reject("key_expired", "the key has expired", presented)
        if key.source == "store":
            self._used[key.id] = now
        return Principal(key.tenant, key.scopes, key.id)

    async def from_stream_token(self, token: str) -> Principal:
        """A stream token's principal: its tenant, read-only; its key must still be usable."""
        if not self.required:
            return OPEN
        read = self.hasher.read_stream_token(token, self._clock())
        if read is None:
            raise self._reject(
                "invalid_stream_token",
                "the access_token is not valid or has expired: get a new one from "
                "POST /v1/stream-tokens",
                None,
            )
        tenant, key_id = read
        key = await self._lookup_id(key_id) if key_id is not None else None
        if key is None or not key.usable(self._clock()) or key.tenant != tenant:
            raise self._reject(
                "invalid_stream_token", "the key that issued the access_token is not usable", None
            )
        return Principal(tenant, frozenset({Scope.READ}), key_id, via="stream_token")

    def stream_token(self, principal: Principal) -> StreamToken:
        return self.hasher.stream_token(principal, self._clock(), self._token_ttl)

    def _reject(self, code: str, message: str, presented: str | None) -> Unauthorized:
        # Only the public prefix, and only of something shaped like our key: whatever else was
        # sent may be a credential of another system pasted by mistake.
        log.warning("auth.rejected", reason=code, key_prefix=presented and public_prefix(presented))
        self._on_rejected(code)
        return Unauthorized(code, message)

    async def _lookup(self, digest: str) -> ApiKey | None:
        configured = self._configured.get(digest)
        if configured is not None:
            return configured
        cached = self._by_digest.get(digest)
        if cached is not None and self._monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        key = await self.store.api_key_by_digest(digest)
        _remember(self._by_digest, digest, (self._monotonic(), key))
        return key

    async def _lookup_id(self, key_id: str) -> ApiKey | None:
        configured = self._configured_ids.get(key_id)
        if configured is not None:
            return configured
        cached = self._by_id.get(key_id)
        if cached is not None and self._monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        key = await self.store.api_key(key_id)
        _remember(self._by_id, key_id, (self._monotonic(), key))
        return key

    def forget(self) -> None:
        """Drop every cached key: a key was revoked (here, or by another replica)."""
        self._by_digest.clear()
        self._by_id.clear()

    # -- last use --------------------------------------------------------------------------------

    async def flush_last_used(self) -> int:
        """Write the keys used since the last flush, in one batch; the number written."""
        used, self._used = self._used, {}
        if not used:
            return 0
        await self.store.touch_api_keys(used)
        return len(used)

    async def run_flusher(self, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_last_used()
            except Exception:  # a store hiccup: the uses were lost, which only ages last_used
                log.exception("auth.last_used_failed")

    # -- management ------------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        scopes: Iterable[Scope],
        *,
        name: str = "",
        expires_in: timedelta | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is not kept anywhere and cannot be shown again."""
        if not self.mint:
            raise InvalidRequest(
                "keys cannot be made without a shared secret: set JOBGATE_AUTH__SECRET or "
                "auth.secret_file (the same on every replica) and restart"
            )
        if not valid_tenant(tenant):
            raise InvalidRequest(
                f"tenant must be 1-63 lower-case letters, digits, - or _, got {tenant!r}"
            )
        plaintext = new_key_secret()
        now = self._clock()
        key = ApiKey(
            id=new_key_id(),
            tenant=tenant,
            scopes=frozenset(scopes),
            digest=self.hasher.digest(plaintext),
            prefix=public_prefix(plaintext),
            name=name,
            created_at=now.replace(microsecond=0),
            expires_at=(now + expires_in).replace(microsecond=0) if expires_in else None,
        )
        await self.store.create_api_key(key)
        log.info("auth.key_created", key_id=key.id, tenant=tenant, key_prefix=key.prefix)
        return key, plaintext

    async def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """The keys of ``tenant`` (``None``: every tenant), configured ones first."""
        configured = [
            key for key in self._configured.values() if tenant is None or key.tenant == tenant
        ]
        return [*configured, *await self.store.list_api_keys(tenant)]

    async def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke a stored key (of ``tenant`` only, when given). Configured keys are removed from
        the configuration instead."""
        configured = self._configured_ids.get(key_id)
        if configured is not None and (tenant is None or configured.tenant == tenant):
            raise InvalidRequest(
                f"key {key_id} is defined in the configuration (auth.keys): remove it there"
            )
        now = self._clock()
        if not await self.store.revoke_api_key(key_id, now, tenant=tenant):
            raise KeyNotFound(f"no usable key with the id {key_id}")
        self.forget()
        log.info("auth.key_revoked", key_id=key_id)
        key = await self.store.api_key(key_id)
        if key is None:  # revoked, then deleted by an operator between the two statements
            raise KeyNotFound(f"no usable key with the id {key_id}")
        return replace(key, revoked_at=key.revoked_at or now)


def _remember(
    cache: dict[str, tuple[float, ApiKey | None]], name: str, entry: tuple[float, ApiKey | None]
) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[name] = entry
