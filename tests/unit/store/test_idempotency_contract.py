"""The idempotency keys' contract, for every store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyRecord,
    JobStore,
)
from tests.unit.store.factories import T0

# -- idempotency keys --------------------------------------------------------------------------


async def test_idempotency_claim_then_replay(store: JobStore) -> None:
    assert await store.claim_idempotency("k1", "fp", T0) == ClaimedIdempotency("k1")
    with pytest.raises(IdempotencyInFlight):
        await store.claim_idempotency("k1", "fp", T0)
    with pytest.raises(IdempotencyConflict):
        await store.claim_idempotency("k1", "other", T0)
    body = {"id": "job_1", "nested": {"ok": True}}
    await store.finish_idempotency(
        "k1", status=201, body=body, job_id="job_1", now=T0 + timedelta(seconds=1)
    )
    replay = await store.claim_idempotency("k1", "fp", T0 + timedelta(seconds=2))
    assert replay == IdempotencyRecord(
        key="k1", fingerprint="fp", status=201, body=body, job_id="job_1", created_at=T0
    )
    with pytest.raises(IdempotencyConflict):
        await store.claim_idempotency("k1", "other", T0)


async def test_idempotency_replays_an_answer_without_a_job(store: JobStore) -> None:
    await store.claim_idempotency("k", "fp", T0)
    await store.finish_idempotency("k", status=422, body={"code": "bad"}, job_id=None, now=T0)
    replay = await store.claim_idempotency("k", "fp", T0)
    assert isinstance(replay, IdempotencyRecord)
    assert (replay.status, replay.body, replay.job_id) == (422, {"code": "bad"}, None)


async def test_idempotency_release_frees_only_pending_keys(store: JobStore) -> None:
    await store.claim_idempotency("k", "fp", T0)
    await store.release_idempotency("k")
    assert await store.claim_idempotency("k", "other", T0) == ClaimedIdempotency("k")
    await store.finish_idempotency("k", status=200, body={}, job_id=None, now=T0)
    await store.release_idempotency("k")
    assert isinstance(await store.claim_idempotency("k", "other", T0), IdempotencyRecord)
    await store.release_idempotency("never-claimed")


async def test_finishing_a_purged_key_keeps_nothing(store: JobStore) -> None:
    await store.finish_idempotency("gone", status=200, body={}, job_id=None, now=T0)
    assert await store.claim_idempotency("gone", "fp", T0) == ClaimedIdempotency("gone")


async def test_idempotency_purge(store: JobStore) -> None:
    await store.claim_idempotency("old-done", "fp", T0)
    await store.finish_idempotency("old-done", status=200, body={}, job_id=None, now=T0)
    await store.claim_idempotency("old-pending", "fp", T0 + timedelta(seconds=1))
    await store.claim_idempotency("new", "fp", T0 + timedelta(hours=1))
    assert await store.purge_idempotency(T0 + timedelta(minutes=1)) == 2
    assert await store.purge_idempotency(T0 + timedelta(minutes=1)) == 0
    assert await store.claim_idempotency("old-done", "x", T0) == ClaimedIdempotency("old-done")
    assert await store.claim_idempotency("old-pending", "x", T0) == ClaimedIdempotency(
        "old-pending"
    )
    with pytest.raises(IdempotencyInFlight):
        await store.claim_idempotency("new", "fp", T0)
