"""Encoded job snapshots: one encoding per version, never older than what a reader saw, and never
refilled with a row that a change has overtaken."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import orjson
import pytest

from gateway.errors import JobNotFound
from gateway.events import EventHub
from gateway.jobs import Job
from gateway.service import JobService
from gateway.snapshots import Snapshots
from gateway.store.base import JobFilter, VersionPage
from gateway.store.memory import MemoryStore
from gateway.writer import JobWriter, Update
from tests.unit.store.factories import T0, make_job


def later(job: Job, seconds: int = 1, **changes: object) -> Job:
    return replace(
        job, updated_at=T0 + timedelta(seconds=seconds), version=job.version + 1, **changes
    )


def test_a_snapshot_is_the_public_form_encoded_once() -> None:
    job = make_job(labels={"team": "x"})
    cache = Snapshots()
    with cache.reading() as ticket:
        snapshot = cache.fill(job, ticket)
    assert orjson.loads(snapshot.body) == job.public()
    assert snapshot.body is snapshot.body  # encoded once, then the same bytes
    assert snapshot.etag == f'"{job.version}"'
    assert cache.get(job.id) is snapshot


def test_a_fill_never_replaces_a_newer_version() -> None:
    job = make_job()
    newer = later(job)
    cache = Snapshots()
    with cache.reading() as ticket:
        cache.fill(newer, ticket)
    with cache.reading() as ticket:
        served = cache.fill(job, ticket)
    assert served.job == newer
    cached = cache.get(job.id)
    assert cached is not None
    assert cached.job == newer


def test_a_read_overtaken_by_a_change_serves_its_row_but_does_not_keep_it() -> None:
    job = make_job()
    cache = Snapshots()
    with cache.reading() as ticket:
        # The row was read; before the read is offered, the job is saved here (or elsewhere).
        cache.drop([job.id])
        served = cache.fill(job, ticket)
    assert served.job == job
    assert cache.get(job.id) is None  # the next read goes to the store
    # A read that begins after the change fills as usual.
    with cache.reading() as ticket:
        cache.fill(later(job), ticket)
    assert cache.get(job.id) is not None


def test_a_save_of_an_uncached_job_still_fences_reads_in_flight() -> None:
    job = make_job()
    cache = Snapshots()
    with cache.reading() as ticket:
        cache.put(later(job))  # saved while the older row was on its way
        cache.fill(job, ticket)
    assert cache.get(job.id) is None
    assert len(cache) == 0


def test_a_save_refreshes_a_cached_job_without_promoting_it() -> None:
    first, second = make_job(), make_job()
    cache = Snapshots(capacity=2)
    with cache.reading() as ticket:
        cache.fill(first, ticket)
        cache.fill(second, ticket)
    cache.put(later(first))  # the poll loop's save: refreshed in place
    cached = cache.get(first.id)
    assert cached is not None
    assert cached.job.version == first.version + 1
    cache.put(first)  # an older version never goes back in
    cached = cache.get(first.id)
    assert cached is not None
    assert cached.job.version == first.version + 1


def test_the_least_recently_read_go_first_and_an_evicted_job_is_fenced() -> None:
    jobs = [make_job() for _ in range(3)]
    cache = Snapshots(capacity=2)
    with cache.reading() as ticket:
        cache.fill(jobs[0], ticket)
        cache.fill(jobs[1], ticket)
        cache.get(jobs[0].id)
        cache.fill(jobs[2], ticket)  # evicts jobs[1], the least recently read
    assert cache.get(jobs[1].id) is None
    assert cache.get(jobs[0].id) is not None
    with cache.reading() as slow:
        with cache.reading() as ticket:
            cache.fill(jobs[1], ticket)  # evicts jobs[2] while ``slow`` is in flight
        cache.fill(jobs[2], slow)  # ``slow`` may hold a row older than the evicted version
    assert cache.get(jobs[2].id) is None


def test_dropping_everything_fences_every_read_in_flight() -> None:
    job = make_job()
    cache = Snapshots()
    with cache.reading() as ticket:
        cache.drop_all()
        cache.fill(job, ticket)
    assert cache.get(job.id) is None
    assert len(cache) == 0


def test_changes_are_forgotten_once_no_read_is_in_flight() -> None:
    jobs = [make_job() for _ in range(50)]
    cache = Snapshots(capacity=10)
    with cache.reading():
        cache.drop(job.id for job in jobs)
        assert len(cache._changed) == 50
    assert cache._changed == {}


# -- through the service -------------------------------------------------------------------------


async def service_over(store: MemoryStore) -> JobService:
    return JobService(store, {}, {}, EventHub(), writer=JobWriter(store, EventHub()))


async def test_a_cached_read_touches_no_store() -> None:
    store = MemoryStore()
    job = make_job()
    await store.create(job, [])
    service = await service_over(store)
    first = await service.snapshot(job.id)
    reads: list[str] = []
    original = store.get

    async def counted(job_id: str, tenant: str = "default") -> Job | None:
        reads.append(job_id)
        return await original(job_id, tenant)

    store.get = counted  # type: ignore[method-assign]
    for _ in range(3):
        assert await service.snapshot(job.id) is first
    assert reads == []
    # Another tenant asking for the cached job is told it does not exist, word for word.
    with pytest.raises(JobNotFound, match=job.id):
        await service.snapshot(job.id, "acme")


async def test_a_read_is_never_older_than_the_version_the_client_holds() -> None:
    store = MemoryStore()
    job = make_job()
    await store.create(job, [])
    service = await service_over(store)
    assert (await service.snapshot(job.id)).job.version == 1
    # Another replica saved version 2; its notice has not arrived here yet.
    await store.save_many([(later(job), [])])
    assert (await service.snapshot(job.id)).job.version == 1  # nobody here has seen 2
    held = await service.snapshot(job.id, at_least=2)  # a client holding ETag "2"
    assert held.job.version == 2
    assert (await service.snapshot(job.id)).job.version == 2  # and it is cached from now on


async def test_the_writers_saves_and_a_delete_keep_reads_current() -> None:
    store = MemoryStore()
    job = make_job()
    await store.create(job, [])
    service = await service_over(store)
    before = await service.snapshot(job.id)
    [saved] = await service.writer.save([Update(before.job, later(before.job))], T0)
    assert saved is not None
    assert (await service.snapshot(job.id)).job == saved
    # A fenced-out save: the cache may be behind the store, so it is dropped.
    await store.save_many([(later(saved, 2), [])])
    [lost] = await service.writer.save([Update(saved, later(saved, 3))], T0)
    assert lost is None
    assert (await service.snapshot(job.id)).job.version == saved.version + 1
    await service.delete(job.id)
    with pytest.raises(JobNotFound):
        await service.snapshot(job.id)


async def test_a_list_page_decodes_only_the_rows_it_lacks() -> None:
    store = MemoryStore()
    jobs = [make_job() for _ in range(5)]
    for job in jobs:
        await store.create(job, [])
    service = await service_over(store)
    cached = await service.snapshot(jobs[0].id)
    await store.save_many([(later(jobs[1]), [])])  # changed behind the cache's back
    await service.snapshot(jobs[2].id)  # cached at version 1
    await store.save_many([(later(jobs[2]), [])])
    asked: list[list[str]] = []
    original = store.get_many

    async def counted(job_ids: list[str], tenant: str = "default") -> list[Job]:
        asked.append(sorted(job_ids))
        return await original(job_ids, tenant)

    store.get_many = counted  # type: ignore[method-assign,assignment]
    page = await service.list(JobFilter(), limit=10, cursor=None)
    expected = (await store.list_jobs(JobFilter(), limit=10, cursor=None)).jobs
    assert [snapshot.job for snapshot in page.jobs] == expected
    assert asked == [sorted(job.id for job in jobs[1:])]  # jobs[0] was current in the cache
    assert cached in page.jobs
    refreshed = await service.snapshot(jobs[2].id)
    assert refreshed.job.version == 2  # the listing's newer row replaced the stale one


async def test_an_unchanged_list_page_is_answered_from_memory_until_a_change() -> None:
    store = MemoryStore()
    service = await service_over(store)
    jobs = [await service.writer.create(make_job()) for _ in range(3)]
    listed: list[int] = []
    original = store.list_versions

    async def counted(where: JobFilter, *, limit: int, cursor: str | None) -> VersionPage:
        listed.append(limit)
        return await original(where, limit=limit, cursor=cursor)

    store.list_versions = counted  # type: ignore[method-assign]
    first = await service.list_encoded(JobFilter(), limit=10, cursor=None)
    assert await service.list_encoded(JobFilter(), limit=10, cursor=None) == first
    assert listed == [10]
    assert [job["id"] for job in orjson.loads(first)["jobs"]] == sorted(
        (job.id for job in jobs), reverse=True
    )
    # Another tenant's listing is its own page.
    assert (
        orjson.loads(await service.list_encoded(JobFilter(tenant="acme"), limit=10, cursor=None))[
            "jobs"
        ]
        == []
    )
    # A save (here, a creation) moves the generation on: the page is read again.
    await service.writer.create(make_job())
    again = await service.list_encoded(JobFilter(), limit=10, cursor=None)
    assert len(orjson.loads(again)["jobs"]) == 4
    assert listed == [10, 10, 10]
    # A drop (another replica's change) does too.
    service.snapshots.drop([jobs[0].id])
    await service.list_encoded(JobFilter(), limit=10, cursor=None)
    assert listed == [10, 10, 10, 10]
