"""``gateway/access.py`` against the in-memory store: authentication, its cache, expiry and
revocation by injected clocks, stream tokens, batched last use, key management and the secret."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.access import SECRET_FILE, Access, AuthNotConfigured, load_secret
from gateway.auth import OPEN, ApiKey, KeyHasher, Principal, Scope, new_key_secret, public_prefix
from gateway.errors import InvalidRequest, KeyNotFound, Unauthorized
from gateway.settings import load_settings
from gateway.store.memory import MemoryStore

SECRET = b"k" * 32
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class CountingStore(MemoryStore):
    """The real in-memory store, counting the key reads and writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.digest_reads = 0
        self.touches: list[dict[str, datetime]] = []

    async def api_key_by_digest(self, digest: str) -> ApiKey | None:
        self.digest_reads += 1
        return await super().api_key_by_digest(digest)

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        self.touches.append(dict(used))
        await super().touch_api_keys(used)


@dataclass
class Clocks:
    now: datetime = START
    mono: float = 1000.0
    rejected: list[str] = field(default_factory=list)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def make_access(
    store: MemoryStore,
    clocks: Clocks,
    *,
    required: bool = True,
    configured: tuple[ApiKey, ...] = (),
    cache_seconds: float = 1.0,
) -> Access:
    return Access(
        store,
        KeyHasher(SECRET),
        required=required,
        configured=configured,
        cache_seconds=cache_seconds,
        token_seconds=300.0,
        clock=lambda: clocks.now,
        monotonic=lambda: clocks.mono,
        on_rejected=clocks.rejected.append,
    )


async def refused(access: Access, header: str | None, code: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await access.authenticate(header)
    assert caught.value.code == code, caught.value.message
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="jobgate"')
    return caught.value


# -- authentication ------------------------------------------------------------------------------


async def test_auth_off_is_the_open_principal_whatever_is_sent() -> None:
    access = make_access(MemoryStore(), Clocks(), required=False)
    for header in (None, "", "Bearer nonsense", "Basic abc"):
        assert await access.authenticate(header) is OPEN
    assert await access.from_stream_token("jgs_forged.x") is OPEN


async def test_a_key_authenticates_as_its_tenant_and_scopes() -> None:
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks)
    key, plaintext = await access.create("acme", {Scope.READ, Scope.WRITE}, name="ci")
    assert plaintext not in repr(key)
    assert key.digest == KeyHasher(SECRET).digest(plaintext)
    assert key.prefix == public_prefix(plaintext)
    stored = await store.api_key(key.id)
    assert stored is not None
    assert stored.digest == key.digest
    principal = await access.authenticate(f"Bearer {plaintext}")
    assert principal == Principal("acme", frozenset({Scope.READ, Scope.WRITE}), key.id)
    # The scheme is case-insensitive (RFC 7235); surrounding blanks are tolerated.
    assert (await access.authenticate(f"bearer  {plaintext} ")).tenant == "acme"


async def test_each_kind_of_bad_credential_has_its_code() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    _, plaintext = await access.create("acme", {Scope.READ})
    await refused(access, None, "auth_required")
    await refused(access, "", "auth_required")
    for header in (
        plaintext,  # no scheme
        f"Basic {plaintext}",
        "Bearer",
        "Bearer ",
        "Bearer jg_short",
        f"Bearer {plaintext}x",
        f"Bearer {plaintext[:-1]}",
        f"Token {plaintext}",
        f"Bearer {new_key_secret()}",  # well formed, unknown
    ):
        error = await refused(access, header, "invalid_key")
        assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]
        assert plaintext not in error.message
    assert clocks.rejected.count("invalid_key") == 9
    assert clocks.rejected.count("auth_required") == 2


async def test_a_failed_attempt_logs_the_public_prefix_only() -> None:
    access = make_access(MemoryStore(), Clocks())
    wrong = new_key_secret()
    with capture_logs() as logs:
        await refused(access, f"Bearer {wrong}", "invalid_key")
        await refused(access, "Bearer not-a-jobgate-credential-xyz", "invalid_key")
    assert [entry["key_prefix"] for entry in logs] == [wrong[:11], None]
    assert wrong[11:] not in repr(logs)
    assert "not-a-jobgate-credential" not in repr(logs)


async def test_an_expired_key_is_refused_from_its_expiry_on() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    key, plaintext = await access.create("acme", {Scope.READ}, expires_in=timedelta(hours=1))
    assert key.expires_at == START + timedelta(hours=1)
    clocks.advance(3599)
    assert (await access.authenticate(f"Bearer {plaintext}")).key_id == key.id
    clocks.advance(1)
    await refused(access, f"Bearer {plaintext}", "key_expired")
    # Expiry needs no store read: a cached key expires too.
    clocks.mono -= 3600  # the cache entry is still fresh by the monotonic clock
    await refused(access, f"Bearer {plaintext}", "key_expired")


async def test_revocation_through_access_is_immediate() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    key, plaintext = await access.create("acme", {Scope.READ})
    await access.authenticate(f"Bearer {plaintext}")  # cached now
    revoked = await access.revoke(key.id)
    assert revoked.revoked_at == START
    await refused(access, f"Bearer {plaintext}", "key_revoked")


async def test_another_replicas_revocation_is_seen_within_the_cache_window() -> None:
    """A revocation this process did not make (another replica, ``jobgate keys revoke``) is seen
    once the cached entry ages past ``cache_seconds``, or at once after ``forget()`` (the store's
    ``keys`` signal)."""
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks)
    other = make_access(store, clocks)  # another replica on the same store
    key, plaintext = await access.create("acme", {Scope.READ})
    header = f"Bearer {plaintext}"
    await access.authenticate(header)
    reads = store.digest_reads
    await other.revoke(key.id)
    clocks.mono += 0.999
    assert (await access.authenticate(header)).key_id == key.id  # cached: still accepted
    assert store.digest_reads == reads  # no store read within the window
    clocks.mono += 0.001
    await refused(access, header, "key_revoked")
    assert store.digest_reads == reads + 1

    second, plaintext2 = await access.create("acme", {Scope.READ})
    header2 = f"Bearer {plaintext2}"
    await access.authenticate(header2)
    await other.revoke(second.id)
    assert (await access.authenticate(header2)).key_id == second.id
    access.forget()
    await refused(access, header2, "key_revoked")


async def test_a_zero_cache_reads_the_store_every_time() -> None:
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks, cache_seconds=0)
    _, plaintext = await access.create("acme", {Scope.READ})
    for _ in range(3):
        await access.authenticate(f"Bearer {plaintext}")
    assert store.digest_reads == 3


async def test_an_unknown_key_is_cached_too_but_within_the_window_only() -> None:
    """A flood of one wrong key costs one store read per window; a key made meanwhile by another
    process works once the window passes."""
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks)
    # A key another process stores under a digest this process already looked up and missed.
    hasher = KeyHasher(SECRET)
    plaintext = new_key_secret()
    for _ in range(5):
        await refused(access, f"Bearer {plaintext}", "invalid_key")
    assert store.digest_reads == 1
    await store.create_api_key(
        ApiKey(
            id="key_late",
            tenant="acme",
            scopes=frozenset({Scope.READ}),
            digest=hasher.digest(plaintext),
            prefix=public_prefix(plaintext),
            name="",
            created_at=START,
        )
    )
    await refused(access, f"Bearer {plaintext}", "invalid_key")
    clocks.mono += 1.0
    assert (await access.authenticate(f"Bearer {plaintext}")).key_id == "key_late"


# -- last use ------------------------------------------------------------------------------------


async def test_last_use_is_kept_in_memory_and_written_in_one_batch() -> None:
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks)
    one, plain_one = await access.create("acme", {Scope.READ})
    two, plain_two = await access.create("beta", {Scope.READ})
    for _ in range(50):
        await access.authenticate(f"Bearer {plain_one}")
    clocks.advance(5)
    await access.authenticate(f"Bearer {plain_two}")
    clocks.advance(5)
    await access.authenticate(f"Bearer {plain_one}")
    # Nothing written per request.
    assert store.touches == []
    assert all(key.last_used_at is None for key in await store.list_api_keys())

    assert await access.flush_last_used() == 2
    assert store.touches == [
        {one.id: START + timedelta(seconds=10), two.id: START + timedelta(seconds=5)}
    ]
    stored_one, stored_two = await store.api_key(one.id), await store.api_key(two.id)
    assert stored_one is not None
    assert stored_one.last_used_at == START + timedelta(seconds=10)
    assert stored_two is not None
    assert stored_two.last_used_at == START + timedelta(seconds=5)
    # Nothing used since: no write at all.
    assert await access.flush_last_used() == 0
    assert len(store.touches) == 1


async def test_failed_attempts_do_not_count_as_use() -> None:
    store, clocks = CountingStore(), Clocks()
    access = make_access(store, clocks)
    _key, plaintext = await access.create("acme", {Scope.READ}, expires_in=timedelta(seconds=10))
    clocks.advance(10)
    await refused(access, f"Bearer {plaintext}", "key_expired")
    assert await access.flush_last_used() == 0
    assert store.touches == []


# -- configured keys (GitOps) --------------------------------------------------------------------


def configured_key(plaintext: str, **changes: object) -> ApiKey:
    fields: dict[str, object] = {
        "id": "ops",
        "tenant": "ops",
        "scopes": frozenset({Scope.ADMIN, Scope.READ}),
        "digest": KeyHasher(SECRET).digest(plaintext),
        "prefix": public_prefix(plaintext),
        "name": "from the config",
        "created_at": datetime(1970, 1, 1, tzinfo=UTC),
        "source": "config",
        **changes,
    }
    return ApiKey(**fields)  # type: ignore[arg-type]


async def test_a_configured_key_authenticates_without_the_store() -> None:
    store, clocks = CountingStore(), Clocks()
    plaintext = new_key_secret()
    access = make_access(store, clocks, configured=(configured_key(plaintext),))
    principal = await access.authenticate(f"Bearer {plaintext}")
    assert principal == Principal("ops", frozenset({Scope.ADMIN, Scope.READ}), "ops")
    assert store.digest_reads == 0
    assert await access.flush_last_used() == 0  # nothing to write: it has no row
    assert [key.id for key in await access.keys("ops")] == ["ops"]
    assert await access.keys("other") == []
    with pytest.raises(InvalidRequest, match=r"auth\.keys"):
        await access.revoke("ops")


async def test_a_configured_key_expires() -> None:
    clocks = Clocks()
    plaintext = new_key_secret()
    expiring = configured_key(plaintext, expires_at=START + timedelta(minutes=1))
    access = make_access(MemoryStore(), clocks, configured=(expiring,))
    assert (await access.authenticate(f"Bearer {plaintext}")).tenant == "ops"
    clocks.advance(60)
    await refused(access, f"Bearer {plaintext}", "key_expired")


# -- stream tokens -------------------------------------------------------------------------------


async def test_a_stream_token_is_read_only_for_its_tenant() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    key, plaintext = await access.create("acme", {Scope.READ, Scope.WRITE, Scope.ADMIN})
    principal = await access.authenticate(f"Bearer {plaintext}")
    token = access.stream_token(principal)
    assert token.expires_at == START + timedelta(seconds=300)
    streamed = await access.from_stream_token(token.token)
    assert streamed == Principal("acme", frozenset({Scope.READ}), key.id, via="stream_token")
    assert not streamed.allows(Scope.WRITE)


async def test_a_stream_token_expires_and_dies_with_its_key() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    key, plaintext = await access.create("acme", {Scope.READ})
    token = access.stream_token(await access.authenticate(f"Bearer {plaintext}")).token
    clocks.advance(299)
    assert (await access.from_stream_token(token)).tenant == "acme"
    clocks.advance(1)
    with pytest.raises(Unauthorized) as caught:
        await access.from_stream_token(token)
    assert caught.value.code == "invalid_stream_token"

    clocks.advance(1)
    fresh = access.stream_token(await access.authenticate(f"Bearer {plaintext}")).token
    assert (await access.from_stream_token(fresh)).tenant == "acme"
    await access.revoke(key.id)
    with pytest.raises(Unauthorized) as caught:
        await access.from_stream_token(fresh)
    assert caught.value.code == "invalid_stream_token"


async def test_a_stream_token_of_another_secret_or_an_expired_key_is_refused() -> None:
    clocks = Clocks()
    access = make_access(MemoryStore(), clocks)
    key, plaintext = await access.create("acme", {Scope.READ}, expires_in=timedelta(seconds=60))
    principal = await access.authenticate(f"Bearer {plaintext}")
    foreign = KeyHasher(b"z" * 32).stream_token(principal, START, timedelta(minutes=5)).token
    token = access.stream_token(principal).token
    for candidate, advance in ((foreign, 0), ("", 0), (token, 60)):
        clocks.advance(advance)
        with pytest.raises(Unauthorized) as caught:
            await access.from_stream_token(candidate)
        assert caught.value.code == "invalid_stream_token"
    assert key.expires_at is not None
    assert clocks.now >= key.expires_at


# -- management ----------------------------------------------------------------------------------


async def test_keys_are_listed_by_tenant_and_revoked_within_their_tenant_only() -> None:
    access = make_access(MemoryStore(), Clocks())
    mine, _ = await access.create("acme", {Scope.READ}, name="a")
    theirs, _ = await access.create("beta", {Scope.READ}, name="b")
    assert [key.id for key in await access.keys("acme")] == [mine.id]
    assert {key.id for key in await access.keys()} == {mine.id, theirs.id}
    with pytest.raises(KeyNotFound):
        await access.revoke(theirs.id, "acme")
    stored = await access.store.api_key(theirs.id)
    assert stored is not None
    assert stored.revoked_at is None
    assert (await access.revoke(mine.id, "acme")).revoked_at is not None
    with pytest.raises(KeyNotFound):
        await access.revoke(mine.id, "acme")  # already revoked
    with pytest.raises(KeyNotFound):
        await access.revoke("key_nope")


@pytest.mark.parametrize("tenant", ["", "Acme", "a:b", "-x", "a" * 64])
async def test_a_bad_tenant_name_is_refused(tenant: str) -> None:
    access = make_access(MemoryStore(), Clocks())
    with pytest.raises(InvalidRequest, match="tenant must be"):
        await access.create(tenant, {Scope.READ})
    assert await access.keys() == []


# -- the secret ----------------------------------------------------------------------------------


def test_sqlite_makes_one_secret_beside_the_database_and_keeps_it(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "none.toml", store={"path": str(tmp_path / "db" / "j.db")})
    first = load_secret(settings)
    assert len(first) >= 32
    path = tmp_path / "db" / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(settings) == first


def test_a_configured_secret_wins_and_must_be_long_enough(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "none.toml",
        store={"path": str(tmp_path / "j.db")},
        auth={"secret": "x" * 32},
    )
    assert load_secret(settings) == b"x" * 32
    assert not (tmp_path / SECRET_FILE).exists()
    short = load_settings(tmp_path / "none.toml", auth={"secret": "x" * 31})
    with pytest.raises(AuthNotConfigured, match="at least 32"):
        load_secret(short)


def test_postgres_needs_a_shared_secret(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "none.toml", store={"kind": "postgres", "dsn": "postgresql://h/db"}
    )
    with pytest.raises(AuthNotConfigured, match="JOBGATE_AUTH__SECRET"):
        load_secret(settings)


def test_memory_stores_get_a_random_secret(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "none.toml", store={"kind": "memory"})
    assert load_secret(settings) != load_secret(settings)
