"""The API keys' contract, for every store: keys are found by digest and by id, listed oldest
first, revoked once and only by their tenant, and touched forward only; no plaintext is kept."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gateway.auth import ALL_SCOPES, Scope, new_key_secret
from gateway.store.base import JobStore
from gateway.store.postgres import PostgresStore
from tests.unit.store.conftest import Heard, PgStores
from tests.unit.store.factories import HASHER, T0, make_key

SECOND = timedelta(seconds=1)


def on_disk(directory: Path) -> bytes:
    """Every byte of the SQLite store's files (the main file and its write-ahead log)."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob("j.db*")))


async def test_a_key_is_found_by_digest_and_by_id(store: JobStore) -> None:
    plaintext = new_key_secret()
    key = make_key(plaintext)
    await store.create_api_key(key)
    assert await store.api_key_by_digest(HASHER.digest(plaintext)) == key
    assert await store.api_key(key.id) == key
    assert await store.api_key_by_digest(HASHER.digest(new_key_secret())) is None
    assert await store.api_key("key_missing") is None


async def test_every_field_round_trips(store: JobStore) -> None:
    # Odd microseconds, every optional time set, every scope: nothing rounded, nothing dropped.
    key = make_key(
        scopes=ALL_SCOPES,
        name="ünïcode ✓ name",
        created_at=T0 + timedelta(microseconds=1),
        expires_at=T0 + timedelta(days=90, microseconds=3),
        revoked_at=T0 + timedelta(days=1, microseconds=5),
        last_used_at=T0 + timedelta(hours=1, microseconds=7),
    )
    minimal = make_key(scopes=frozenset({Scope.READ}))
    await store.create_api_key(key)
    await store.create_api_key(minimal)
    assert await store.api_key(key.id) == key
    assert await store.api_key_by_digest(minimal.digest) == minimal
    stored = await store.api_key(minimal.id)
    assert stored is not None
    assert (stored.expires_at, stored.revoked_at, stored.last_used_at) == (None, None, None)
    assert stored.source == "store"


async def test_a_duplicate_digest_or_id_is_refused_and_changes_nothing(store: JobStore) -> None:
    key = make_key()
    await store.create_api_key(key)
    same_digest = make_key(digest=key.digest, tenant="other", name="thief")
    with pytest.raises(ValueError, match="exists"):
        await store.create_api_key(same_digest)
    same_id = make_key(id=key.id, tenant="other")
    with pytest.raises(ValueError, match="exists"):
        await store.create_api_key(same_id)
    assert await store.api_key_by_digest(key.digest) == key
    assert await store.api_key(key.id) == key
    assert await store.api_key(same_digest.id) is None
    assert await store.list_api_keys() == [key]


async def test_keys_are_listed_oldest_first_by_tenant_or_all(store: JobStore) -> None:
    # Made out of order, and two at the same moment (then by id).
    second = make_key(id="key_b", tenant="acme", created_at=T0 + 2 * SECOND)
    first = make_key(id="key_z", tenant="acme", created_at=T0)
    other = make_key(id="key_c", tenant="globex", created_at=T0 + SECOND)
    tied = make_key(id="key_a", tenant="acme", created_at=T0 + 2 * SECOND)
    for key in (second, first, other, tied):
        await store.create_api_key(key)
    assert await store.list_api_keys("acme") == [first, tied, second]
    assert await store.list_api_keys("globex") == [other]
    assert await store.list_api_keys("nobody") == []
    assert await store.list_api_keys() == [first, other, tied, second]
    assert await store.list_api_keys(None) == await store.list_api_keys()


async def test_a_key_is_revoked_once_and_only_within_its_tenant(store: JobStore) -> None:
    key = make_key(tenant="acme")
    await store.create_api_key(key)
    assert await store.revoke_api_key(key.id, T0 + SECOND, tenant="globex") is False
    assert await store.api_key(key.id) == key  # another tenant's revocation changed nothing
    assert await store.revoke_api_key("key_missing", T0 + SECOND) is False
    assert await store.revoke_api_key(key.id, T0 + SECOND, tenant="acme") is True
    revoked = await store.api_key(key.id)
    assert revoked is not None
    assert revoked.revoked_at == T0 + SECOND
    assert not revoked.usable(T0 + 2 * SECOND)
    # Already revoked: no second revocation, and the first time stands.
    assert await store.revoke_api_key(key.id, T0 + 9 * SECOND, tenant="acme") is False
    assert await store.revoke_api_key(key.id, T0 + 9 * SECOND) is False
    assert await store.api_key_by_digest(key.digest) == revoked  # still found: the caller decides


async def test_an_operator_revokes_any_tenants_key(store: JobStore) -> None:
    key = make_key(tenant="globex")
    await store.create_api_key(key)
    assert await store.revoke_api_key(key.id, T0) is True
    assert [k.revoked_at for k in await store.list_api_keys("globex")] == [T0]


async def test_last_used_only_moves_forward(store: JobStore) -> None:
    a, b, c = make_key(), make_key(), make_key(last_used_at=T0 + 5 * SECOND)
    for key in (a, b, c):
        await store.create_api_key(key)
    await store.touch_api_keys({})
    await store.touch_api_keys(
        {a.id: T0 + 2 * SECOND, b.id: T0 + 3 * SECOND, c.id: T0 + SECOND, "key_gone": T0}
    )
    used = {key.id: key.last_used_at for key in await store.list_api_keys()}
    assert used == {a.id: T0 + 2 * SECOND, b.id: T0 + 3 * SECOND, c.id: T0 + 5 * SECOND}
    await store.touch_api_keys({a.id: T0 + SECOND, b.id: T0 + 4 * SECOND})  # a's is older
    used = {key.id: key.last_used_at for key in await store.list_api_keys()}
    assert used == {a.id: T0 + 2 * SECOND, b.id: T0 + 4 * SECOND, c.id: T0 + 5 * SECOND}
    # Touching changes nothing else, a revoked key included.
    await store.revoke_api_key(a.id, T0 + 6 * SECOND)
    await store.touch_api_keys({a.id: T0 + 7 * SECOND})
    touched = await store.api_key(a.id)
    assert touched is not None
    assert (touched.revoked_at, touched.last_used_at) == (T0 + 6 * SECOND, T0 + 7 * SECOND)
    assert (touched.digest, touched.scopes, touched.name) == (a.digest, a.scopes, a.name)


async def test_no_plaintext_is_kept(store: JobStore, store_kind: str, tmp_path: Path) -> None:
    plaintext = new_key_secret()
    await store.create_api_key(make_key(plaintext, created_at=T0))
    if store_kind.startswith("sqlite"):
        kept = on_disk(tmp_path)
        assert HASHER.digest(plaintext).encode() in kept  # the rows are there
        assert plaintext.encode() not in kept
        assert plaintext[len("jg_") :].encode() not in kept
    elif isinstance(store, PostgresStore):
        async with store._db.acquire() as conn:
            rows = [str(row[0]) for row in await conn.fetch("SELECT k::text FROM api_keys AS k")]
        assert len(rows) == 1
        assert plaintext not in rows[0]
        assert plaintext[len("jg_") :] not in rows[0]
    for key in await store.list_api_keys():
        assert plaintext not in repr(key)


async def test_a_revocation_is_signalled_to_the_other_replicas(pg_stores: PgStores) -> None:
    a, b = await pg_stores(), await pg_stores()
    heard = Heard()
    b.subscribe(heard)
    key = make_key()
    await a.create_api_key(key)
    assert await a.revoke_api_key(key.id, T0, tenant=key.tenant)
    await heard.wait_for("keys")
    revoked = await b.api_key(key.id)
    assert revoked is not None
    assert revoked.revoked_at == T0
