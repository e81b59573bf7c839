"""The job rows' contract (create, read, list, fenced saves, delete, counts), for every store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.states import JobState
from gateway.store.base import JobFilter, JobStore, NewEvent
from tests.support import bumped
from tests.unit.store.factories import LEASE, T0, create_all, full_job, make_job, state_event

# -- create / get ------------------------------------------------------------------------------


async def test_ping(store: JobStore) -> None:
    assert await store.ping() is True


async def test_every_field_round_trips(store: JobStore) -> None:
    job = full_job()
    await store.create(job, [])
    assert await store.get(job.id, "acme") == job


async def test_defaults_round_trip(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    assert await store.get(job.id) == job


async def test_get_unknown_or_other_tenant_is_none(store: JobStore) -> None:
    job = make_job(tenant="acme")
    await store.create(job, [])
    assert await store.get(job.id) is None
    assert await store.get("job_missing", "acme") is None


async def test_get_by_upstream_answers_with_the_newest_tracking_job(store: JobStore) -> None:
    first = make_job(id="job_1" + "0" * 25, upstream_id="up-shared")
    second = make_job(id="job_2" + "0" * 25, upstream_id="up-shared")
    elsewhere = make_job(id="job_3" + "0" * 25, upstream_id="up-shared", provider="catchall")
    foreign = make_job(id="job_4" + "0" * 25, upstream_id="up-shared", tenant="acme")
    await create_all(store, [first, second, elsewhere, foreign])
    assert await store.get_by_upstream("pulse", "up-shared") == second
    assert await store.get_by_upstream("catchall", "up-shared") == elsewhere
    assert await store.get_by_upstream("pulse", "up-shared", "acme") == foreign
    assert await store.get_by_upstream("pulse", "up-other") is None
    saved = bumped(second, T0, polls=1)
    await store.save_many([(saved, [])])
    assert await store.get_by_upstream("pulse", "up-shared") == saved
    await store.delete(second.id)
    assert await store.get_by_upstream("pulse", "up-shared") == first
    await store.delete(first.id)
    assert await store.get_by_upstream("pulse", "up-shared") is None


async def test_create_numbers_and_stamps_events(store: JobStore) -> None:
    job = make_job(state=JobState.RUNNING, tenant="acme", updated_at=T0 + timedelta(seconds=2))
    events = await store.create(job, [NewEvent("created", {"by": "test"}), state_event(job.state)])
    assert [event.kind for event in events] == ["created", "state"]
    assert events[1].id == events[0].id + 1
    first = events[0]
    assert (first.job_id, first.tenant, first.provider, first.state) == (
        job.id,
        "acme",
        "pulse",
        JobState.RUNNING,
    )
    assert first.data == {"by": "test"}
    assert first.created_at == job.updated_at
    assert await store.events_after(0, tenant="acme") == events
    assert await store.last_event_id() == events[-1].id


async def test_create_existing_id_is_refused_and_changes_nothing(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [NewEvent("created", {})])
    with pytest.raises(ValueError, match="exists"):
        await store.create(bumped(job, T0, polls=9), [NewEvent("created", {})])
    assert await store.get(job.id) == job
    assert len(await store.events_after(0)) == 1


async def test_a_nul_character_round_trips(store: JobStore) -> None:
    # A provider's status text may hold U+0000: one such job must not fail its whole batch (the
    # PostgreSQL store keeps records as json, not jsonb, which refuses it).
    job = make_job(native_status="a\x00b", request={"q": "\x00"})
    await store.create(job, [NewEvent("created", {"s": "\x00"})])
    assert await store.get(job.id) == job
    [event] = await store.events_after(0)
    assert event.data == {"s": "\x00"}


# -- listing -----------------------------------------------------------------------------------


async def test_list_is_newest_first_with_filters(store: JobStore) -> None:
    a = make_job(provider="pulse", labels={"team": "x", "env": "prod"})
    b = make_job(provider="pulse", state=JobState.RUNNING, labels={"team": "x"})
    c = make_job(provider="catchall", state=JobState.RUNNING, labels={"team": "y", "env": "prod"})
    other = make_job(provider="pulse", tenant="acme", labels={"team": "x"})
    await create_all(store, [a, b, c, other])

    async def ids(where: JobFilter) -> list[str]:
        page = await store.list_jobs(where, limit=10, cursor=None)
        assert page.next_cursor is None
        return [job.id for job in page.jobs]

    newest_first = sorted([a.id, b.id, c.id], reverse=True)
    assert await ids(JobFilter()) == newest_first
    assert await ids(JobFilter(provider="pulse")) == sorted([a.id, b.id], reverse=True)
    assert await ids(JobFilter(state=JobState.RUNNING)) == sorted([b.id, c.id], reverse=True)
    assert await ids(JobFilter(provider="pulse", state=JobState.RUNNING)) == [b.id]
    assert await ids(JobFilter(labels={"team": "x"})) == sorted([a.id, b.id], reverse=True)
    assert await ids(JobFilter(labels={"env": "prod"})) == sorted([a.id, c.id], reverse=True)
    assert await ids(JobFilter(labels={"team": "x", "env": "prod"})) == [a.id]
    assert await ids(JobFilter(labels={"team": "nope"})) == []
    assert await ids(JobFilter(provider="nope")) == []
    assert await ids(JobFilter(tenant="acme")) == [other.id]
    assert await ids(JobFilter(tenant="nobody")) == []


async def test_list_returns_whole_jobs(store: JobStore) -> None:
    job = full_job()
    await store.create(job, [])
    page = await store.list_jobs(JobFilter(tenant="acme"), limit=5, cursor=None)
    assert page.jobs == [job]


@pytest.mark.parametrize(("total", "limit"), [(23, 5), (10, 5), (5, 5), (1, 3), (0, 4)])
async def test_cursor_pages_cover_everything_once(store: JobStore, total: int, limit: int) -> None:
    jobs = [make_job(labels={"batch": "b"}) for _ in range(total)]
    await create_all(store, jobs)
    await create_all(store, [make_job(labels={"batch": "other"}) for _ in range(3)])
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = await store.list_jobs(JobFilter(labels={"batch": "b"}), limit=limit, cursor=cursor)
        pages += 1
        assert len(page.jobs) <= limit
        seen.extend(job.id for job in page.jobs)
        if page.next_cursor is None:
            break
        assert len(page.jobs) == limit
        cursor = page.next_cursor
    assert seen == sorted((job.id for job in jobs), reverse=True)
    assert pages == max(1, -(-total // limit))


async def test_cursor_is_stable_when_newer_jobs_arrive(store: JobStore) -> None:
    # Explicit ids: new_id() orders jobs created within one millisecond at random.
    older = [make_job(id=f"job_1{n:025d}") for n in range(4)]
    await create_all(store, older)
    first = await store.list_jobs(JobFilter(), limit=2, cursor=None)
    await create_all(store, [make_job(id=f"job_2{n:025d}") for n in range(3)])
    second = await store.list_jobs(JobFilter(), limit=2, cursor=first.next_cursor)
    expected = sorted((job.id for job in older), reverse=True)
    assert [job.id for job in first.jobs + second.jobs] == expected
    assert second.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage!", "", "djE6", "bm9wZQ"])
async def test_list_rejects_a_foreign_cursor(store: JobStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.list_jobs(JobFilter(), limit=5, cursor=cursor)
    with pytest.raises(ValueError, match="cursor"):
        await store.list_versions(JobFilter(), limit=5, cursor=cursor)


@pytest.mark.parametrize(
    "where",
    [
        JobFilter(),
        JobFilter(provider="pulse"),
        JobFilter(state=JobState.RUNNING),
        JobFilter(labels={"team": "x"}),
        JobFilter(labels={"team": "x", "env": "prod"}),
        JobFilter(tenant="acme"),
    ],
)
async def test_version_pages_walk_the_same_pages_as_job_pages(
    store: JobStore, where: JobFilter
) -> None:
    jobs = [
        make_job(
            provider=("pulse", "catchall")[n % 2],
            state=(JobState.QUEUED, JobState.RUNNING)[n % 3 == 0],
            labels={"team": "xy"[n % 2], **({"env": "prod"} if n % 4 == 0 else {})},
            tenant=("default", "acme")[n % 5 == 0],
        )
        for n in range(17)
    ]
    await create_all(store, jobs)
    # A saved job: the version listed is the current one, not the created one.
    first = sorted(jobs, key=lambda job: job.id)[-1]
    await store.save_many([(bumped(first, T0 + timedelta(seconds=1)), [])])
    cursor: str | None = None
    while True:
        page = await store.list_jobs(where, limit=3, cursor=cursor)
        versions = await store.list_versions(where, limit=3, cursor=cursor)
        assert versions.versions == [(job.id, job.version) for job in page.jobs]
        assert versions.next_cursor == page.next_cursor
        if page.next_cursor is None:
            break
        cursor = page.next_cursor


async def test_get_many_returns_the_tenants_jobs_it_names(store: JobStore) -> None:
    mine = [make_job() for _ in range(3)]
    theirs = make_job(tenant="acme")
    await create_all(store, [*mine, theirs])
    saved = bumped(mine[0], T0 + timedelta(seconds=1))
    await store.save_many([(saved, [])])
    asked = [mine[0].id, mine[1].id, theirs.id, "job_missing", mine[1].id]
    found = sorted(await store.get_many(asked), key=lambda job: job.id)
    assert found == sorted([saved, mine[1]], key=lambda job: job.id)
    assert await store.get_many([theirs.id], "acme") == [theirs]
    assert await store.get_many([]) == []


# -- fenced writes -----------------------------------------------------------------------------


async def test_save_applies_the_next_version(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    running = bumped(job, T0 + timedelta(seconds=1), state=JobState.RUNNING, polls=1)
    [result] = await store.save_many([(running, [state_event(JobState.RUNNING)])])
    assert result is not None
    saved, events = result
    assert saved == running
    assert [(e.kind, e.state, e.created_at) for e in events] == [
        ("state", JobState.RUNNING, running.updated_at)
    ]
    assert await store.get(job.id) == running


async def test_stale_save_is_fenced_out_and_changes_nothing(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    v2 = bumped(job, T0, polls=1)
    assert (await store.save_many([(v2, [])]))[0] is not None
    before = await store.last_event_id()
    stale = bumped(job, T0, polls=99)  # also version 2, written from the old copy
    skipped = bumped(bumped(bumped(job, T0), T0), T0)  # version 4: skips a version
    assert await store.save_many([(stale, [state_event(job.state)])]) == [None]
    assert await store.save_many([(skipped, [state_event(job.state)])]) == [None]
    assert await store.get(job.id) == v2
    assert await store.last_event_id() == before
    assert await store.events_after(0) == []


async def test_save_of_a_deleted_job_is_fenced_out(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    assert await store.delete(job.id)
    assert await store.save_many([(bumped(job, T0), [state_event(job.state)])]) == [None]
    assert await store.get(job.id) is None
    assert await store.events_after(0) == []


async def test_save_many_applies_each_fence_separately(store: JobStore) -> None:
    jobs = [make_job(next_poll_at=T0) for _ in range(5)]
    await create_all(store, jobs)
    await store.delete(jobs[3].id)
    stale_v2 = bumped(jobs[1], T0, polls=1)
    await store.save_many([(stale_v2, [])])
    batch = [
        (bumped(jobs[0], T0, polls=5), [NewEvent("progress", {"n": 0})]),
        (bumped(jobs[1], T0, polls=5), [NewEvent("progress", {"n": 1})]),  # stale: already v2
        (bumped(jobs[2], T0, polls=5), [NewEvent("progress", {"n": 2}), NewEvent("x", {})]),
        (bumped(jobs[3], T0, polls=5), [NewEvent("progress", {"n": 3})]),  # deleted
        (bumped(jobs[4], T0, polls=5), []),
    ]
    results = await store.save_many(batch)
    assert [r is not None for r in results] == [True, False, True, False, True]
    numbered = [event for r in results if r is not None for event in r[1]]
    assert [e.data for e in numbered] == [{"n": 0}, {"n": 2}, {}]
    assert [e.id for e in numbered] == sorted(e.id for e in numbered)
    fresh = await store.events_after(numbered[0].id - 1)
    assert fresh == numbered
    assert await store.get(jobs[1].id) == stale_v2
    for index in (0, 2, 4):
        assert await store.get(jobs[index].id) == batch[index][0]
    assert await store.save_many([]) == []


async def test_save_many_with_consecutive_versions_of_one_job(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    v2 = bumped(job, T0, polls=1)
    v3 = bumped(v2, T0, polls=2)
    results = await store.save_many([(v2, []), (v3, []), (v3, [])])
    assert [r is not None for r in results] == [True, True, False]
    assert await store.get(job.id) == v3


async def test_saved_labels_are_what_filters_see(store: JobStore) -> None:
    job = make_job(labels={"team": "x"})
    await store.create(job, [])
    await store.save_many([(bumped(job, T0, labels={"team": "y", "env": "dev"}), [])])

    async def count(labels: dict[str, str]) -> int:
        page = await store.list_jobs(JobFilter(labels=labels), limit=5, cursor=None)
        return len(page.jobs)

    assert await count({"team": "x"}) == 0
    assert await count({"team": "y", "env": "dev"}) == 1


async def test_delete(store: JobStore) -> None:
    job = make_job(tenant="acme", next_poll_at=T0)
    keep = make_job(tenant="acme")
    await create_all(store, [job, keep])
    await store.save_many([(bumped(job, T0), [state_event(job.state)])])
    assert await store.delete(job.id) is False  # another tenant's job is not touched
    assert await store.delete(job.id, "acme") is True
    assert await store.delete(job.id, "acme") is False
    assert await store.get(job.id, "acme") is None
    remaining = await store.events_after(0, tenant="acme")
    assert {event.job_id for event in remaining} == {keep.id}
    assert await store.events_after(0, job_id=job.id, tenant="acme") == []
    assert await store.next_due() is None
    assert await store.claim_due(T0 + LEASE, limit=10, lease_until=T0 + 2 * LEASE) == []


# -- counts ------------------------------------------------------------------------------------


async def test_count_by_state(store: JobStore) -> None:
    assert await store.count_by_state() == {}
    moving = make_job(provider="pulse")
    doomed = make_job(provider="catchall", state=JobState.FAILED)
    await create_all(
        store,
        [
            make_job(provider="pulse"),
            make_job(provider="pulse", state=JobState.RUNNING, tenant="acme"),
            moving,
            doomed,
        ],
    )
    assert await store.count_by_state() == {
        ("pulse", JobState.QUEUED): 2,
        ("pulse", JobState.RUNNING): 1,
        ("catchall", JobState.FAILED): 1,
    }
    running = bumped(moving, T0, state=JobState.RUNNING)
    await store.save_many(
        [(running, []), (bumped(running, T0, polls=1), []), (bumped(moving, T0, polls=3), [])]
    )
    await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    await store.delete(doomed.id)
    await store.delete(doomed.id)
    assert await store.count_by_state() == {
        ("pulse", JobState.QUEUED): 1,
        ("pulse", JobState.RUNNING): 2,
    }
