"""The JobStore contract: one suite, run against every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.base import JobError, Progress, ResultKind, ResultLocator
from gateway.jobs import Job, new_id
from gateway.states import Action, JobState
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyRecord,
    JobFilter,
    JobStore,
    NewEvent,
)
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 22, 10, 0, 0, 123457, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def make_job(**changes: Any) -> Job:
    """A fresh queued job with fixed times; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "id": new_id(),
        "provider": "pulse",
        "upstream_id": "up-" + new_id(""),
        "state": JobState.QUEUED,
        "created_at": T0,
        "updated_at": T0,
        "deadline_at": T0 + timedelta(days=1),
    }
    fields.update(changes)
    return Job(**fields)


def full_job() -> Job:
    """A job with every field set to something other than its default."""
    return make_job(
        provider="catchall",
        state=JobState.RUNNING,
        tenant="acme",
        native_status="processing",
        progress=Progress(fraction=0.4, step="fetching", step_index=3, step_count=5),
        eta=T0 + timedelta(minutes=10),
        result=ResultLocator(
            kind=ResultKind.POINTER,
            partial=True,
            inline={"preview": [1, 2, 3]},
            url="https://results.example.test/r/1",
            needs_provider_key=True,
            total_records=42,
            meta={"pages": 3, "nested": {"a": [1, None, "x"]}, "ratio": 0.25},
        ),
        error=JobError(code="E_PARTIAL", message="one source failed"),
        updated_at=T0 + timedelta(seconds=5),
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=4),
        upstream_finished_at=T0 + timedelta(seconds=3, microseconds=999999),
        next_poll_at=T0 + timedelta(seconds=20),
        polls=7,
        unchanged_polls=2,
        failures=1,
        not_found=1,
        action=Action.CONTINUE,
        rerun_of="job_01PREVIOUS",
        labels={"team": "search", "env": "prod", "dotted.key": "a b"},
        request={"query": "ünïcode ✓", "limit": 10, "flags": [True, False, None]},
        callback_url="https://hooks.example.test/cb",
    )


def state_event(state: JobState) -> NewEvent:
    return NewEvent("state", {"state": state.value})


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    impl: JobStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "j.db")
    await impl.open()
    yield impl
    await impl.close()


async def create_all(store: JobStore, jobs: Sequence[Job]) -> None:
    for job in jobs:
        await store.create(job, [NewEvent("created", {})])


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
    saved = second.bump(T0, polls=1)
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
        await store.create(job.bump(T0, polls=9), [NewEvent("created", {})])
    assert await store.get(job.id) == job
    assert len(await store.events_after(0)) == 1


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


# -- fenced writes -----------------------------------------------------------------------------


async def test_save_applies_the_next_version(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    running = job.bump(T0 + timedelta(seconds=1), state=JobState.RUNNING, polls=1)
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
    v2 = job.bump(T0, polls=1)
    assert (await store.save_many([(v2, [])]))[0] is not None
    before = await store.last_event_id()
    stale = job.bump(T0, polls=99)  # also version 2, written from the old copy
    skipped = job.bump(T0).bump(T0).bump(T0)  # version 4: skips a version
    assert await store.save_many([(stale, [state_event(job.state)])]) == [None]
    assert await store.save_many([(skipped, [state_event(job.state)])]) == [None]
    assert await store.get(job.id) == v2
    assert await store.last_event_id() == before
    assert await store.events_after(0) == []


async def test_save_of_a_deleted_job_is_fenced_out(store: JobStore) -> None:
    job = make_job()
    await store.create(job, [])
    assert await store.delete(job.id)
    assert await store.save_many([(job.bump(T0), [state_event(job.state)])]) == [None]
    assert await store.get(job.id) is None
    assert await store.events_after(0) == []


async def test_save_many_applies_each_fence_separately(store: JobStore) -> None:
    jobs = [make_job(next_poll_at=T0) for _ in range(5)]
    await create_all(store, jobs)
    await store.delete(jobs[3].id)
    stale_v2 = jobs[1].bump(T0, polls=1)
    await store.save_many([(stale_v2, [])])
    batch = [
        (jobs[0].bump(T0, polls=5), [NewEvent("progress", {"n": 0})]),
        (jobs[1].bump(T0, polls=5), [NewEvent("progress", {"n": 1})]),  # stale: already v2
        (jobs[2].bump(T0, polls=5), [NewEvent("progress", {"n": 2}), NewEvent("x", {})]),
        (jobs[3].bump(T0, polls=5), [NewEvent("progress", {"n": 3})]),  # deleted
        (jobs[4].bump(T0, polls=5), []),
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
    v2 = job.bump(T0, polls=1)
    v3 = v2.bump(T0, polls=2)
    results = await store.save_many([(v2, []), (v3, []), (v3, [])])
    assert [r is not None for r in results] == [True, True, False]
    assert await store.get(job.id) == v3


async def test_saved_labels_are_what_filters_see(store: JobStore) -> None:
    job = make_job(labels={"team": "x"})
    await store.create(job, [])
    await store.save_many([(job.bump(T0, labels={"team": "y", "env": "dev"}), [])])

    async def count(labels: dict[str, str]) -> int:
        page = await store.list_jobs(JobFilter(labels=labels), limit=5, cursor=None)
        return len(page.jobs)

    assert await count({"team": "x"}) == 0
    assert await count({"team": "y", "env": "dev"}) == 1


async def test_delete(store: JobStore) -> None:
    job = make_job(tenant="acme", next_poll_at=T0)
    keep = make_job(tenant="acme")
    await create_all(store, [job, keep])
    await store.save_many([(job.bump(T0), [state_event(job.state)])])
    assert await store.delete(job.id) is False  # another tenant's job is not touched
    assert await store.delete(job.id, "acme") is True
    assert await store.delete(job.id, "acme") is False
    assert await store.get(job.id, "acme") is None
    remaining = await store.events_after(0, tenant="acme")
    assert {event.job_id for event in remaining} == {keep.id}
    assert await store.events_after(0, job_id=job.id, tenant="acme") == []
    assert await store.next_due() is None
    assert await store.claim_due(T0 + LEASE, limit=10, lease_until=T0 + 2 * LEASE) == []


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
        assert claimed == original.bump(original.updated_at, next_poll_at=T0 + LEASE)
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
    assert await store.save_many([(job.bump(T0, polls=1), [])]) == [None]
    polled = claimed.bump(T0, polls=1, next_poll_at=T0 + timedelta(seconds=5))
    assert (await store.save_many([(polled, [])]))[0] is not None
    assert await store.next_due() == T0 + timedelta(seconds=5)


async def test_jobs_without_a_next_poll_are_never_claimed(store: JobStore) -> None:
    job = make_job(next_poll_at=T0)
    await store.create(job, [])
    done = job.bump(T0, state=JobState.SUCCEEDED, next_poll_at=None)
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
    await store.save_many([(early.bump(T0, next_poll_at=T0 + timedelta(seconds=60)), [])])
    assert await store.next_due() == late.next_poll_at
    await store.delete(late.id)
    assert await store.next_due() == T0 + timedelta(seconds=60)


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
    running = moving.bump(T0, state=JobState.RUNNING)
    await store.save_many(
        [(running, []), (running.bump(T0, polls=1), []), (moving.bump(T0, polls=3), [])]
    )
    await store.claim_due(T0, limit=10, lease_until=T0 + LEASE)
    await store.delete(doomed.id)
    await store.delete(doomed.id)
    assert await store.count_by_state() == {
        ("pulse", JobState.QUEUED): 1,
        ("pulse", JobState.RUNNING): 2,
    }


# -- events ------------------------------------------------------------------------------------


async def test_event_ids_increase_across_jobs(store: JobStore) -> None:
    assert await store.last_event_id() == 0
    a, b = make_job(), make_job()
    ids = [e.id for e in await store.create(a, [NewEvent("created", {})])]
    ids += [e.id for e in await store.create(b, [NewEvent("created", {})])]
    results = await store.save_many(
        [(a.bump(T0), [NewEvent("progress", {})]), (b.bump(T0), [NewEvent("progress", {})])]
    )
    ids += [e.id for r in results if r is not None for e in r[1]]
    assert len(ids) == 4
    assert ids == sorted(set(ids))
    assert await store.last_event_id() == ids[-1]
    await store.delete(b.id)
    assert await store.last_event_id() == ids[-1]
    [later] = await store.create(make_job(), [NewEvent("created", {})])
    assert later.id > ids[-1]


async def test_events_after_filters(store: JobStore) -> None:
    pulse = make_job(provider="pulse")
    catchall = make_job(provider="catchall")
    foreign = make_job(provider="pulse", tenant="acme")
    await create_all(store, [pulse, catchall, foreign])
    await store.save_many(
        [
            (pulse.bump(T0, state=JobState.RUNNING), [state_event(JobState.RUNNING)]),
            (catchall.bump(T0, state=JobState.FAILED), [state_event(JobState.FAILED)]),
        ]
    )
    everything = await store.events_after(0)
    assert [(e.job_id, e.kind) for e in everything] == [
        (pulse.id, "created"),
        (catchall.id, "created"),
        (pulse.id, "state"),
        (catchall.id, "state"),
    ]
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert await store.events_after(everything[1].id) == everything[2:]
    assert await store.events_after(everything[-1].id) == []
    assert await store.events_after(0, limit=3) == everything[:3]
    assert await store.events_after(0, job_id=pulse.id) == [everything[0], everything[2]]
    assert await store.events_after(everything[0].id, job_id=pulse.id) == [everything[2]]
    assert await store.events_after(0, providers=["catchall"]) == [everything[1], everything[3]]
    assert await store.events_after(0, providers=["catchall", "pulse"]) == everything
    assert await store.events_after(0, states=[JobState.QUEUED]) == everything[:2]
    assert (
        await store.events_after(0, states=[JobState.RUNNING, JobState.FAILED]) == (everything[2:])
    )
    assert await store.events_after(0, providers=["pulse"], states=[JobState.FAILED]) == []
    assert await store.events_after(0, job_id=foreign.id) == []
    [foreign_event] = await store.events_after(0, tenant="acme")
    assert foreign_event.job_id == foreign.id


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
