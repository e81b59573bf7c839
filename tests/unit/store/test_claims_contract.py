"""The poll schedule's contract, for every store: due jobs are claimed soonest first under a
lease, capped in total and, with ``per_provider``, per provider."""

from __future__ import annotations

from datetime import timedelta

from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import JobStore
from tests.support import bumped
from tests.unit.store.factories import LEASE, T0, create_all, make_job

# -- the poll schedule -------------------------------------------------------------------------


async def test_claim_due_takes_the_soonest_first_up_to_the_limit(store: JobStore) -> None:
    due = [make_job(next_poll_at=T0 - timedelta(seconds=s)) for s in (5, 50, 1, 20)]
    later = make_job(next_poll_at=T0 + timedelta(seconds=1))
    never = make_job(next_poll_at=None, state=JobState.SUCCEEDED)
    await create_all(store, [*due, later, never])
    soonest = sorted(due, key=lambda job: job.next_poll_at or T0)

    first = await store.claim_due(T0, limit=3, lease_until=T0 + LEASE)
    assert [job.id for job in first] == [job.id for job in soonest[:3]]
    for claimed, original in zip(first, soonest, strict=False):
        assert claimed.version == original.version + 1
        assert claimed.next_poll_at == T0 + LEASE
        assert claimed == bumped(original, original.updated_at, next_poll_at=T0 + LEASE)
        assert await store.get(claimed.id) == claimed

    second = await store.claim_due(T0, limit=3, lease_until=T0 + LEASE)
    assert [job.id for job in second] == [soonest[3].id]
    assert await store.claim_due(T0, limit=3, lease_until=T0 + LEASE) == []


async def test_a_claim_holds_until_its_lease_runs_out(store: JobStore) -> None:
    job = make_job(next_poll_at=T0)
    await store.create(job, [])
    [claimed] = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    assert await store.claim_due(T0 + LEASE / 2, limit=10, lease_until=T0 + 2 * LEASE) == []
    assert await store.next_due() == T0 + LEASE
    [again] = await store.claim_due(T0 + LEASE, limit=10, lease_until=T0 + 2 * LEASE)
    assert again.version == claimed.version + 1
    assert again.next_poll_at == T0 + 2 * LEASE


async def test_a_claim_fences_out_writers_holding_the_old_version(store: JobStore) -> None:
    job = make_job(next_poll_at=T0)
    await store.create(job, [])
    [claimed] = await store.claim_due(T0, limit=1, lease_until=T0 + LEASE)
    assert await store.save_many([(bumped(job, T0, polls=1), [])]) == [None]
    polled = bumped(claimed, T0, polls=1, next_poll_at=T0 + timedelta(seconds=5))
    assert (await store.save_many([(polled, [])]))[0] is not None
    assert await store.next_due() == T0 + timedelta(seconds=5)


async def test_jobs_without_a_next_poll_are_never_claimed(store: JobStore) -> None:
    job = make_job(next_poll_at=T0)
    await store.create(job, [])
    done = bumped(job, T0, state=JobState.SUCCEEDED, next_poll_at=None)
    await store.save_many([(done, [])])
    far = T0 + timedelta(days=365)
    assert await store.claim_due(far, limit=10, lease_until=far + LEASE) == []
    assert await store.next_due() is None


async def test_claim_with_a_lease_already_due_claims_once(store: JobStore) -> None:
    await store.create(make_job(next_poll_at=T0), [])
    claimed = await store.claim_due(T0, limit=10, lease_until=T0 - LEASE)
    assert len(claimed) == 1


async def test_next_due(store: JobStore) -> None:
    assert await store.next_due() is None
    early = make_job(next_poll_at=T0 + timedelta(seconds=3))
    late = make_job(next_poll_at=T0 + timedelta(seconds=9))
    await create_all(store, [late, make_job(), early])
    assert await store.next_due() == early.next_poll_at
    await store.save_many([(bumped(early, T0, next_poll_at=T0 + timedelta(seconds=60)), [])])
    assert await store.next_due() == late.next_poll_at
    await store.delete(late.id)
    assert await store.next_due() == T0 + timedelta(seconds=60)


# -- claims capped per provider ----------------------------------------------------------------


def due_by(provider: str, *seconds_ago: int) -> list[Job]:
    """Jobs of ``provider`` that fell due that many seconds before T0."""
    return [
        make_job(provider=provider, next_poll_at=T0 - timedelta(seconds=s)) for s in seconds_ago
    ]


async def test_a_capped_claim_takes_only_named_providers_at_most_their_cap(store: JobStore) -> None:
    pulse = due_by("pulse", 40, 10, 30, 20)
    catchall = due_by("catchall", 5, 15, 25)
    extract = due_by("extract", 50, 60)
    await create_all(store, [*pulse, *catchall, *extract])
    claimed = await store.claim_due(
        T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 2, "catchall": 5}
    )
    by_provider: dict[str, list[str]] = {}
    for job in claimed:
        by_provider.setdefault(job.provider, []).append(job.id)
        assert job.next_poll_at == T0 + LEASE
    # Each provider's soonest due jobs; an unnamed provider is not claimed at all.
    assert by_provider["pulse"] == [pulse[0].id, pulse[2].id]
    assert set(by_provider["catchall"]) == {job.id for job in catchall}
    assert "extract" not in by_provider


async def test_a_capped_claim_is_still_capped_in_total(store: JobStore) -> None:
    await create_all(store, [*due_by("pulse", 1, 2, 3), *due_by("catchall", 4, 5, 6)])
    claimed = await store.claim_due(
        T0, limit=4, lease_until=T0 + LEASE, per_provider={"pulse": 3, "catchall": 3}
    )
    assert len(claimed) == 4
    assert len({job.id for job in claimed}) == 4
    for provider in ("pulse", "catchall"):
        assert 1 <= sum(job.provider == provider for job in claimed) <= 3


async def test_due_jobs_a_cap_skipped_stay_due_and_unchanged(store: JobStore) -> None:
    pulse = due_by("pulse", 30, 20, 10)
    extract = due_by("extract", 25)
    await create_all(store, [*pulse, *extract])
    [first] = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 1})
    assert first.id == pulse[0].id  # the soonest of its provider
    for skipped in [*pulse[1:], *extract]:
        assert await store.get(skipped.id) == skipped
    assert await store.next_due() == extract[0].next_poll_at
    # Claimable later, by a capped claim with tokens again or by an uncapped one.
    second = await store.claim_due(
        T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 1, "extract": 1}
    )
    assert {job.id for job in second} == {pulse[1].id, extract[0].id}
    [last] = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    assert last == bumped(pulse[2], T0, next_poll_at=T0 + LEASE)
    assert await store.claim_due(T0, limit=10, lease_until=T0 + LEASE) == []


async def test_a_capped_claim_follows_the_soonest_first_order(store: JobStore) -> None:
    pulse = due_by("pulse", 10, 40)
    catchall = due_by("catchall", 30, 20)
    await create_all(store, [*pulse, *catchall])
    claimed = await store.claim_due(
        T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 5, "catchall": 5}
    )
    assert [job.id for job in claimed] == [pulse[1].id, catchall[0].id, catchall[1].id, pulse[0].id]


async def test_no_caps_or_empty_caps_claim_nothing(store: JobStore) -> None:
    jobs = due_by("pulse", 1, 2)
    await create_all(store, jobs)
    lease = T0 + LEASE
    assert await store.claim_due(T0, limit=10, lease_until=lease, per_provider={}) == []
    assert await store.claim_due(T0, limit=10, lease_until=lease, per_provider={"pulse": 0}) == []
    assert await store.claim_due(T0, limit=0, lease_until=lease, per_provider={"pulse": 5}) == []
    for job in jobs:
        assert await store.get(job.id) == job
