"""Tenants, for every store: what a tenant holds (for its limits), the event log read for one
tenant or for all, cursors bound to their tenant, and claims in which tenants take turns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import pytest

from gateway.jobs import Job
from gateway.states import JobState
from gateway.store.base import JobFilter, JobStore, NewEvent, TenantUsage
from tests.support import bumped
from tests.unit.store.factories import LEASE, T0, create_all, make_job

MINUTE = timedelta(minutes=1)


async def bulk_create(store: JobStore, jobs: Sequence[Job]) -> None:
    """Many jobs in one go: every store has ``_create_many`` for benchmarks and imports."""
    await cast(Any, store)._create_many([(job, []) for job in jobs])


# -- what a tenant holds -----------------------------------------------------------------------


async def test_tenant_usage_counts_unfinished_and_recent_jobs(store: JobStore) -> None:
    since = T0 - 60 * MINUTE
    old_queued = make_job(tenant="acme", created_at=T0 - 120 * MINUTE)
    at_since = make_job(tenant="acme", state=JobState.RUNNING, created_at=since)
    done = make_job(tenant="acme", state=JobState.SUCCEEDED, created_at=T0 - 10 * MINUTE)
    old_failed = make_job(tenant="acme", state=JobState.FAILED, created_at=T0 - 180 * MINUTE)
    foreign = make_job(tenant="globex", created_at=T0)
    await create_all(store, [old_queued, at_since, done, old_failed, foreign])

    # Unfinished: queued or running, however old. Recent: made at or after ``since``, any state.
    assert await store.tenant_usage("acme", since) == TenantUsage(2, 2, since)
    assert await store.tenant_usage("acme", T0) == TenantUsage(2, 0, None)
    assert await store.tenant_usage("acme", T0 - 200 * MINUTE) == TenantUsage(
        2, 4, T0 - 180 * MINUTE
    )
    assert await store.tenant_usage("globex", since) == TenantUsage(1, 1, T0)
    assert await store.tenant_usage("nobody", since) == TenantUsage(0, 0, None)

    # Finishing a job frees its place; stopping tracking one leaves the window too.
    await store.save_many([(bumped(old_queued, T0, state=JobState.CANCELED), [])])
    assert await store.tenant_usage("acme", since) == TenantUsage(1, 2, since)
    await store.delete(at_since.id, "acme")
    assert await store.tenant_usage("acme", since) == TenantUsage(0, 1, done.created_at)


# -- the event log, of one tenant or of all ------------------------------------------------------


async def test_events_after_reads_one_tenant_or_every_tenant(store: JobStore) -> None:
    mine = make_job()  # the default tenant's
    acme = make_job(tenant="acme", provider="catchall")
    globex = make_job(tenant="globex")
    await create_all(store, [mine, acme, globex])
    await store.save_many(
        [
            (bumped(acme, T0, state=JobState.RUNNING), [NewEvent("state", {"n": 1})]),
            (bumped(mine, T0), [NewEvent("progress", {"n": 2})]),
        ]
    )
    everything = await store.events_after(0, tenant=None)
    assert [(e.tenant, e.kind) for e in everything] == [
        ("default", "created"),
        ("acme", "created"),
        ("globex", "created"),
        ("acme", "state"),
        ("default", "progress"),
    ]
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert await store.events_after(0) == [everything[0], everything[4]]  # "default" by default
    assert await store.events_after(0, tenant="acme") == [everything[1], everything[3]]
    assert await store.events_after(everything[1].id, tenant="acme") == [everything[3]]
    assert await store.events_after(everything[2].id, tenant=None) == everything[3:]
    assert await store.events_after(0, tenant=None, limit=2) == everything[:2]
    assert await store.events_after(0, tenant=None, providers=["catchall"]) == [
        everything[1],
        everything[3],
    ]
    assert await store.events_after(0, tenant=None, states=[JobState.RUNNING]) == [everything[3]]
    # One job's log: of any tenant with None, else only when the job is that tenant's.
    assert await store.events_after(0, job_id=acme.id, tenant=None) == [
        everything[1],
        everything[3],
    ]
    assert await store.events_after(0, job_id=acme.id, tenant="acme") == [
        everything[1],
        everything[3],
    ]
    assert await store.events_after(0, job_id=acme.id, tenant="globex") == []
    assert await store.events_after(0, job_id=acme.id) == []


async def test_an_upstream_job_is_found_for_one_tenant_or_any(store: JobStore) -> None:
    older = make_job(id="job_1" + "0" * 25, tenant="acme", upstream_id="up-shared")
    newer = make_job(id="job_2" + "0" * 25, tenant="globex", upstream_id="up-shared")
    await create_all(store, [older, newer])
    assert await store.get_by_upstream("pulse", "up-shared", None) == newer
    assert await store.get_by_upstream("pulse", "up-shared", "acme") == older
    assert await store.get_by_upstream("pulse", "up-shared") is None  # not the default tenant's
    assert await store.get_by_upstream("catchall", "up-shared", None) is None


# -- cursors belong to their tenant --------------------------------------------------------------


async def test_a_cursor_is_refused_by_another_tenants_listing(store: JobStore) -> None:
    await create_all(store, [make_job(tenant="acme") for _ in range(3)])
    await create_all(store, [make_job(tenant="globex") for _ in range(3)])
    acme = await store.list_jobs(JobFilter(tenant="acme"), limit=2, cursor=None)
    assert acme.next_cursor is not None
    with pytest.raises(ValueError, match="cursor"):
        await store.list_jobs(JobFilter(tenant="globex"), limit=2, cursor=acme.next_cursor)
    with pytest.raises(ValueError, match="cursor"):
        await store.list_jobs(JobFilter(), limit=2, cursor=acme.next_cursor)
    rest = await store.list_jobs(JobFilter(tenant="acme"), limit=2, cursor=acme.next_cursor)
    assert len(rest.jobs) == 1
    assert rest.next_cursor is None


# -- claims: tenants take turns ------------------------------------------------------------------


def due(tenant: str, *seconds_ago: int, provider: str = "pulse") -> list[Job]:
    """Jobs of ``tenant`` that fell due that many seconds before T0."""
    return [
        make_job(tenant=tenant, provider=provider, next_poll_at=T0 - timedelta(seconds=s))
        for s in seconds_ago
    ]


async def test_one_tenants_backlog_does_not_hold_back_another_tenants_job(
    store: JobStore,
) -> None:
    backlog = due("acme", *range(10_000, 8_000, -1))  # 2,000 jobs, all due before globex's one
    [late] = due("globex", 1)
    await bulk_create(store, [*backlog, late])
    claimed = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    # Each tenant's soonest first, then acme's next ones; returned soonest first.
    assert [job.id for job in claimed] == [job.id for job in backlog[:9]] + [late.id]
    for job in claimed:
        assert (job.next_poll_at, job.version) == (T0 + LEASE, 2)
    # What the claim left stays due and unchanged, and is claimed next, soonest first.
    assert await store.get(backlog[9].id, "acme") == backlog[9]
    again = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    assert [job.id for job in again] == [job.id for job in backlog[9:19]]


async def test_a_capped_claim_shares_each_providers_cap_between_tenants(store: JobStore) -> None:
    backlog = due("acme", *range(10_000, 8_000, -1))
    [late] = due("globex", 1)
    await bulk_create(store, [*backlog, late])
    capped = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE, per_provider={"pulse": 2})
    assert [job.id for job in capped] == [backlog[0].id, late.id]


async def test_tenants_take_turns_soonest_first_within_a_turn(store: JobStore) -> None:
    acme = due("acme", 30, 20, 10)
    globex = due("globex", 25, 5)
    initech = due("initech", 1)
    await create_all(store, [*acme, *globex, *initech])
    claimed = await store.claim_due(T0, limit=4, lease_until=T0 + LEASE)
    # Turn 1: acme@-30, globex@-25, initech@-1; turn 2, soonest first: acme@-20 (not globex@-5).
    assert [job.id for job in claimed] == [acme[0].id, globex[0].id, acme[1].id, initech[0].id]
    rest = await store.claim_due(T0, limit=4, lease_until=T0 + LEASE)
    assert [job.id for job in rest] == [acme[2].id, globex[1].id]


async def test_with_more_tenants_than_the_limit_the_soonest_tenants_go_first(
    store: JobStore,
) -> None:
    jobs = [job for n in range(5) for job in due(f"t{n}", 10 + n, 1)]  # t0's is the soonest
    await create_all(store, jobs)
    claimed = await store.claim_due(T0, limit=3, lease_until=T0 + LEASE)
    assert [job.tenant for job in claimed] == ["t4", "t3", "t2"]


async def test_a_tenant_whose_turn_a_cap_took_still_comes_first_after(store: JobStore) -> None:
    """acme's soonest is a catchall job and its next a pulse one; globex has a later pulse job.
    The one pulse place goes to globex's first turn, not acme's second."""
    [acme_catchall] = due("acme", 30, provider="catchall")
    [acme_pulse] = due("acme", 20)
    [globex_pulse] = due("globex", 10)
    await create_all(store, [acme_catchall, acme_pulse, globex_pulse])
    claimed = await store.claim_due(
        T0, limit=2, lease_until=T0 + LEASE, per_provider={"pulse": 1, "catchall": 5}
    )
    assert [job.id for job in claimed] == [acme_catchall.id, globex_pulse.id]


async def test_a_capped_claim_with_many_tenants_stays_within_every_cap(store: JobStore) -> None:
    jobs = [
        job
        for n in range(6)
        for provider in ("pulse", "catchall", "extract")
        for job in due(f"t{n}", 40 - n, 20 - n, 5, provider=provider)
    ]
    await create_all(store, jobs)
    caps = {"pulse": 4, "catchall": 7}
    claimed = await store.claim_due(T0, limit=10, lease_until=T0 + LEASE, per_provider=caps)
    by_provider = {p: sum(job.provider == p for job in claimed) for p in ("pulse", "catchall")}
    assert len(claimed) == 10
    assert len({job.id for job in claimed}) == 10
    assert by_provider["pulse"] <= 4
    assert by_provider["catchall"] <= 7
    assert all(job.provider != "extract" for job in claimed)
    # Every tenant got its first turn before any tenant got a third.
    per_tenant = {f"t{n}": sum(job.tenant == f"t{n}" for job in claimed) for n in range(6)}
    assert min(per_tenant.values()) >= 1
    assert max(per_tenant.values()) <= 2
    assert [job.next_poll_at for job in claimed] == [T0 + LEASE] * 10
