"""The idempotency keys' contract, for every store: claims, recovery points, takeover, replay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    JobStore,
)
from tests.unit.store.factories import LEASE, T0, claim_key

Phase = IdempotencyPhase


async def claimed(store: JobStore, key: str, *args: object, **kwargs: object) -> ClaimedIdempotency:
    claim = await claim_key(store, key, *args, **kwargs)  # type: ignore[arg-type]
    assert isinstance(claim, ClaimedIdempotency)
    return claim


async def test_idempotency_claim_then_replay(store: JobStore) -> None:
    claim = await claimed(store, "k1")
    assert (claim.key, claim.job_id, claim.phase, claim.recovered) == (
        "k1",
        "job_for_k1",
        Phase.CLAIMED,
        False,
    )
    with pytest.raises(IdempotencyInFlight) as in_flight:
        await claim_key(store, "k1", now=T0 + timedelta(seconds=1))
    assert in_flight.value.lease_until == T0 + LEASE
    with pytest.raises(IdempotencyConflict):
        await claim_key(store, "k1", "other")
    body = {"id": "job_1", "nested": {"ok": True}}
    assert await store.finish_idempotency(
        claim, status=201, body=body, job_id="job_1", now=T0 + timedelta(seconds=1)
    )
    replay = await claim_key(store, "k1", now=T0 + timedelta(seconds=2))
    assert replay == IdempotencyRecord(
        key="k1", fingerprint="fp", status=201, body=body, job_id="job_1", created_at=T0
    )
    # A finished key is replayed even long after its lease.
    assert isinstance(await claim_key(store, "k1", now=T0 + 10 * LEASE), IdempotencyRecord)
    with pytest.raises(IdempotencyConflict):
        await claim_key(store, "k1", "other")


async def test_idempotency_replays_an_answer_without_a_job(store: JobStore) -> None:
    claim = await claimed(store, "k")
    await store.finish_idempotency(claim, status=422, body={"code": "bad"}, job_id=None, now=T0)
    replay = await claim_key(store, "k")
    assert isinstance(replay, IdempotencyRecord)
    assert (replay.status, replay.body, replay.job_id) == (422, {"code": "bad"}, None)


async def test_idempotency_release_frees_only_unfinished_keys(store: JobStore) -> None:
    claim = await claimed(store, "k")
    await store.release_idempotency(claim)
    again = await claimed(store, "k", "other")
    assert again.phase is Phase.CLAIMED
    await store.finish_idempotency(again, status=200, body={}, job_id=None, now=T0)
    await store.release_idempotency(again)
    assert isinstance(await claim_key(store, "k", "other"), IdempotencyRecord)
    await store.release_idempotency(ClaimedIdempotency("never-claimed", "tok", "job"))


async def test_finishing_a_purged_key_keeps_nothing(store: JobStore) -> None:
    gone = ClaimedIdempotency("gone", "tok", "job")
    assert not await store.finish_idempotency(gone, status=200, body={}, job_id=None, now=T0)
    assert not await store.advance_idempotency(gone, Phase.CALLING, now=T0)
    assert (await claimed(store, "gone")).phase is Phase.CLAIMED


async def test_idempotency_purge(store: JobStore) -> None:
    done = await claimed(store, "old-done")
    await store.finish_idempotency(done, status=200, body={}, job_id=None, now=T0)
    await claim_key(store, "old-pending", now=T0 + timedelta(seconds=1))
    await claim_key(store, "new", now=T0 + timedelta(hours=1))
    assert await store.purge_idempotency(T0 + timedelta(minutes=1)) == 2
    assert await store.purge_idempotency(T0 + timedelta(minutes=1)) == 0
    assert (await claimed(store, "old-done", "x")).phase is Phase.CLAIMED
    assert (await claimed(store, "old-pending", "x")).phase is Phase.CLAIMED
    with pytest.raises(IdempotencyInFlight):
        await claim_key(store, "new", now=T0 + timedelta(hours=1))


# -- recovery points ---------------------------------------------------------------------------


async def test_a_claim_whose_lease_ran_out_is_taken_over_in_the_phase_it_reached(
    store: JobStore,
) -> None:
    first = await claimed(store, "k")
    called = T0 + timedelta(seconds=1)
    assert await store.advance_idempotency(first, Phase.CALLING, now=called)
    with pytest.raises(IdempotencyInFlight):
        await claim_key(store, "k", now=T0 + LEASE - timedelta(microseconds=1))
    later = T0 + LEASE
    second = await claimed(store, "k", now=later, token="tok_second")
    assert (second.phase, second.called_at, second.upstream_id) == (Phase.CALLING, called, None)
    assert second.job_id == first.job_id == "job_for_k"
    assert second.recovered
    assert second.token == "tok_second"
    # The new holder's lease runs from the takeover.
    with pytest.raises(IdempotencyInFlight) as in_flight:
        await claim_key(store, "k", now=later + timedelta(seconds=1))
    assert in_flight.value.lease_until == later + LEASE


async def test_the_holder_that_was_taken_over_is_fenced_out(store: JobStore) -> None:
    first = await claimed(store, "k")
    second = await claimed(store, "k", now=T0 + LEASE, token="tok_second")
    assert not await store.advance_idempotency(first, Phase.ANSWERED, now=T0, upstream_id="u1")
    assert not await store.finish_idempotency(first, status=201, body={}, job_id="j", now=T0)
    await store.release_idempotency(first)  # fenced: the key stays with the second holder
    assert await store.advance_idempotency(second, Phase.ANSWERED, now=T0, upstream_id="u2")
    third = await claimed(store, "k", now=T0 + 3 * LEASE, token="tok_third")
    assert (third.phase, third.upstream_id) == (Phase.ANSWERED, "u2")


async def test_advancing_records_the_upstream_id_and_can_end_the_lease(store: JobStore) -> None:
    claim = await claimed(store, "k")
    assert await store.advance_idempotency(claim, Phase.CALLING, now=T0)
    assert await store.advance_idempotency(
        claim, Phase.ANSWERED, now=T0 + timedelta(seconds=1), upstream_id="up_1"
    )
    # Ending the lease now: the next request may recover at once.
    assert await store.advance_idempotency(claim, Phase.ANSWERED, now=T0, lease_until=T0)
    taken = await claimed(store, "k", now=T0, token="tok_next")
    assert (taken.phase, taken.upstream_id, taken.called_at) == (Phase.ANSWERED, "up_1", T0)


async def test_a_finished_key_cannot_be_advanced_or_released(store: JobStore) -> None:
    claim = await claimed(store, "k")
    assert await store.finish_idempotency(claim, status=201, body={"a": 1}, job_id="j", now=T0)
    assert not await store.advance_idempotency(claim, Phase.CALLING, now=T0)
    assert not await store.finish_idempotency(claim, status=500, body={}, job_id=None, now=T0)
    await store.release_idempotency(claim)
    replay = await claim_key(store, "k")
    assert isinstance(replay, IdempotencyRecord)
    assert replay.body == {"a": 1}


async def test_abandoned_keys_are_those_past_their_lease_that_called_upstream(
    store: JobStore,
) -> None:
    command = {"provider": "catchall", "request": {"query": "q", "deep": [1, {"x": None}]}}
    for key in ("claimed", "calling", "answered", "live", "done", "no-command"):
        await claim_key(store, key, command=None if key == "no-command" else command)
    claims = {}
    for key in ("calling", "answered", "live", "done", "no-command"):
        claim = await claimed(store, key, now=T0 + LEASE, token=f"tok_{key}")
        claims[key] = claim
        assert await store.advance_idempotency(claim, Phase.CALLING, now=T0)
    await store.advance_idempotency(claims["answered"], Phase.ANSWERED, now=T0, upstream_id="u")
    await store.finish_idempotency(claims["done"], status=201, body={}, job_id="j", now=T0)
    # Every lease but one's ends at T0 + LEASE; "live" was taken over later, so it runs on.
    await claimed(store, "live", now=T0 + 3 * LEASE, token="tok_live2")
    later = T0 + 3 * LEASE
    found = await store.abandoned_idempotency(later, limit=10)
    assert [(a.key, a.fingerprint, a.command) for a in found] == [
        ("answered", "fp", command),
        ("calling", "fp", command),
    ]
    assert [a.key for a in await store.abandoned_idempotency(later, limit=1)] == ["answered"]
    assert await store.abandoned_idempotency(T0, limit=10) == []
