"""Status reads and list pages served from encoded snapshots, over real HTTP: the same JSON as
before, an ``ETag`` per version, ``If-None-Match`` answered with 304, and no store read for a job
that has not changed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.jobs import Job
from gateway.store.base import JobFilter
from gateway.web.state import COMPONENTS_KEY
from tests.integration.conftest import Stack, StackFactory

PDF = {"fileUrl": "https://example.com/a.pdf"}


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


async def get(stack: Stack, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with stack.client.get(f"{stack.url}{path}", headers=headers) as response:
        return (
            response.status,
            {k.lower(): v for k, v in response.headers.items()},
            await response.read(),
        )


async def test_a_job_read_carries_its_version_as_etag_and_304s_when_unchanged(
    stack: Stack,
) -> None:
    job_id = (await stack.submit("pulse", PDF))["id"]
    done = await stack.until_finished(job_id)
    status, headers, body = await get(stack, f"/v1/jobs/{job_id}")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == done
    etag = headers["etag"]
    assert etag == f'"{done["version"]}"'
    for held in (etag, f"W/{etag}", f'"0", {etag}', "*"):
        status, headers, body = await get(stack, f"/v1/jobs/{job_id}", **{"If-None-Match": held})
        assert (status, body, headers["etag"]) == (304, b"", etag), held
    for other in ('"0"', 'W/"abc"', "not-a-tag", '"99999999999999999999999999"'):
        status, _, body = await get(stack, f"/v1/jobs/{job_id}", **{"If-None-Match": other})
        assert status == 200, other
        assert orjson.loads(body) == done


async def test_an_unchanged_job_is_read_without_the_store(stack: Stack) -> None:
    job_id = (await stack.submit("pulse", PDF))["id"]
    await stack.until_finished(job_id)
    store = stack.app[COMPONENTS_KEY].require_store()
    reads: list[str] = []
    original = store.get

    async def counted(job_id: str, tenant: str = "default") -> Job | None:
        reads.append(job_id)
        return await original(job_id, tenant)

    await get(stack, f"/v1/jobs/{job_id}")  # fills the cache if the writer's save did not
    store.get = counted  # type: ignore[method-assign]
    bodies = {(await get(stack, f"/v1/jobs/{job_id}"))[2] for _ in range(5)}
    assert reads == []
    assert len(bodies) == 1
    # A version newer than the cache's, named by a client that saw it elsewhere, is read through.
    version = orjson.loads(bodies.pop())["version"]
    status, _, _ = await get(stack, f"/v1/jobs/{job_id}", **{"If-None-Match": f'"{version + 1}"'})
    assert status == 200
    assert reads == [job_id]


async def test_a_list_page_is_the_jobs_public_forms_in_order(stack: Stack) -> None:
    ids = [(await stack.submit("pulse", PDF, labels={"batch": "b"}))["id"] for _ in range(7)]
    for job_id in ids:
        await stack.until_finished(job_id)
    await get(stack, f"/v1/jobs/{ids[3]}")  # some of the page cached, the rest not
    store = stack.app[COMPONENTS_KEY].require_store()
    cursor: str | None = None
    listed: list[dict[str, Any]] = []
    while True:
        query = "?limit=3&label=batch:b" + (f"&cursor={cursor}" if cursor else "")
        status, headers, body = await get(stack, f"/v1/jobs{query}")
        assert status == 200
        assert headers["content-type"] == "application/json"
        page = orjson.loads(body)
        assert list(page) == ["jobs", "next_cursor"]
        listed.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    stored = await store.list_jobs(JobFilter(labels={"batch": "b"}), limit=10, cursor=None)
    assert listed == [job.public() for job in stored.jobs]
    assert [job["id"] for job in listed] == sorted(ids, reverse=True)
