"""The event log's contract, for every store: ids only increase, filters select, and a reader
resuming after an id sees each later event once."""

from __future__ import annotations

from gateway.states import JobState
from gateway.store.base import JobStore, NewEvent
from tests.support import bumped
from tests.unit.store.factories import T0, create_all, make_job, state_event

# -- events ------------------------------------------------------------------------------------


async def test_event_ids_increase_across_jobs(store: JobStore) -> None:
    assert await store.last_event_id() == 0
    a, b = make_job(), make_job()
    ids = [e.id for e in await store.create(a, [NewEvent("created", {})])]
    ids += [e.id for e in await store.create(b, [NewEvent("created", {})])]
    results = await store.save_many(
        [(bumped(a, T0), [NewEvent("progress", {})]), (bumped(b, T0), [NewEvent("progress", {})])]
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
            (bumped(pulse, T0, state=JobState.RUNNING), [state_event(JobState.RUNNING)]),
            (bumped(catchall, T0, state=JobState.FAILED), [state_event(JobState.FAILED)]),
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
