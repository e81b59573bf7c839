"""The result vault against the sandboxes over real sockets: a result is fetched from the provider
once and served from jobgate's copy after that, however many read it, and after the provider
forgets it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from adapters.pulse.sandbox import JOBS_KEY as PULSE_JOBS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.jobs import Job
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory
from tests.integration.test_sse import Frame, read_until_end

pytestmark = [pytest.mark.integration]

PROXY_LARGE = "https://example.com/c.pdf?sandbox=large&sandbox_pointer=proxy"


async def _download(
    stack: Stack, job_id: str, **headers: str
) -> tuple[int, str, int, CIMultiDict[str]]:
    digest = hashlib.sha256()
    size = 0
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job_id}/result", headers=headers
    ) as response:
        async for chunk in response.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        return response.status, digest.hexdigest(), size, response.headers.copy()


def _pulse_downloads(stack: Stack, upstream_id: str) -> int:
    return stack.sandbox[SUBAPPS_KEY]["pulse"][PULSE_JOBS].jobs[upstream_id].downloads


async def test_a_single_use_pointer_is_fetched_once_and_served_to_every_reader(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": PROXY_LARGE})
    done = await stack.until_finished(job["id"])
    assert done["state"] == "succeeded"

    sequential = [await _download(stack, job["id"]) for _ in range(5)]
    concurrent = await asyncio.gather(*(_download(stack, job["id"]) for _ in range(20)))
    answers = [*sequential, *concurrent]
    assert {status for status, *_ in answers} == {200}
    assert len({digest for _, digest, *_ in answers}) == 1
    assert all(size > 1_000_000 for _, _, size, _ in answers)
    assert _pulse_downloads(stack, job["upstream_id"]) == 1

    stored = await stack.job(job["id"])
    digest = sequential[0][1]
    assert stored["result"]["stored"] is True
    assert stored["result"]["source"] == "jobgate"
    assert stored["result"]["sha256"] == digest
    assert stored["result"]["size"] == sequential[0][2]
    assert sequential[-1][3]["ETag"] == f'"{digest}"'
    async with stack.client.get(f"{stack.url}/metrics") as response:
        scrape = await response.text()
    assert 'jobgate_vault_captures_total{outcome="stored",provider="pulse"} 1.0' in scrape
    series = 'jobgate_vault_captured_bytes_total{provider="pulse"} '
    line = next(x for x in scrape.splitlines() if x.startswith(series))
    assert float(line.removeprefix(series)) == stored["result"]["size"]


def _pulse_store(stack: Stack) -> Any:
    return stack.sandbox[SUBAPPS_KEY]["pulse"][PULSE_JOBS]


async def _until(stack: Stack, job_id: str, check: Any, *, rounds: int = 200) -> dict[str, Any]:
    """Long-poll the job until ``check(job)``; bounded by ``rounds`` waits of at most 1 s. A
    finished job's long poll answers at once, so then the rounds are 50 ms apart."""
    for _ in range(rounds):
        job = await stack.job(job_id, wait=1)
        if check(job):
            return job
        if job["state"] in ("succeeded", "failed", "canceled", "expired"):
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job}")


async def test_readers_during_the_capture_follow_it(make_stack: StackFactory) -> None:
    stack = await make_stack()
    store = _pulse_store(stack)
    store.stall = asyncio.Event()
    job = await stack.submit("pulse", {"fileUrl": PROXY_LARGE})
    async with asyncio.timeout(30):
        await store.stalled.wait()  # the capture has half the body
    current = await stack.job(job["id"])
    assert current["state"] == "succeeded"
    assert current["result"]["capturing"] is True
    assert current["result"]["stored"] is False

    readers = [asyncio.create_task(_download(stack, job["id"])) for _ in range(20)]
    await asyncio.sleep(0)  # let them connect; they follow the capture and wait for more bytes
    store.stall.set()
    answers = await asyncio.gather(*readers)
    assert {status for status, *_ in answers} == {200}
    assert len({digest for _, digest, *_ in answers}) == 1
    assert store.jobs[job["upstream_id"]].downloads == 1
    done = await _until(stack, job["id"], lambda j: j["result"]["stored"])
    assert done["result"]["sha256"] == answers[0][1]
    # Every reader was served by jobgate: by the capture as it streamed, or by the copy after.
    assert all(headers["X-Jobgate-Result-Source"] == "jobgate" for *_, headers in answers)


async def test_range_resumes_and_if_none_match_answers_304(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/r.pdf?sandbox=large"})
    done = await _until(stack, job["id"], lambda j: j["result"]["stored"])
    size, sha = done["result"]["size"], done["result"]["sha256"]
    url = f"{stack.url}/v1/jobs/{job['id']}/result"

    # A download cut halfway: the first half, then the rest with Range.
    half = size // 2
    async with stack.client.get(url) as response:
        first = await response.content.readexactly(half)
    async with stack.client.get(url, headers={"Range": f"bytes={half}-"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {half}-{size - 1}/{size}"
        assert response.headers["ETag"] == f'"{sha}"'
        rest = await response.read()
    assert hashlib.sha256(first + rest).hexdigest() == sha

    async with stack.client.get(url, headers={"If-None-Match": f'"{sha}"'}) as response:
        assert response.status == 304
        assert response.headers["ETag"] == f'"{sha}"'
    async with stack.client.get(url, headers={"If-None-Match": '"something-else"'}) as response:
        assert response.status == 200
        assert len(await response.read()) == size


async def test_if_range_and_if_match_are_decided_on_the_copys_own_etag(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/r.pdf?sandbox=large"})
    done = await _until(stack, job["id"], lambda j: j["result"]["stored"])
    size, sha = done["result"]["size"], done["result"]["sha256"]
    url = f"{stack.url}/v1/jobs/{job['id']}/result"
    rest = {"Range": "bytes=100-"}

    # If-Range naming this copy: the range; naming another (a copy from before a continue, or a
    # weak tag, which If-Range never accepts): the whole copy, so no download splices two copies.
    async with stack.client.get(url, headers={**rest, "If-Range": f'"{sha}"'}) as response:
        assert response.status == 206
        assert len(await response.read()) == size - 100
    for other in ('"0123abcd"', f'W/"{sha}"'):
        async with stack.client.get(url, headers={**rest, "If-Range": other}) as response:
            assert response.status == 200, other
            assert hashlib.sha256(await response.read()).hexdigest() == sha

    # If-Match: the copy's tag (or *) serves; any other tag is 412, a problem that says why.
    for tags in (f'"{sha}"', "*", f'"nope", "{sha}"'):
        async with stack.client.get(url, headers={**rest, "If-Match": tags}) as response:
            assert response.status == 206, tags
    async with stack.client.get(url, headers={"If-Match": '"nope"'}) as response:
        assert response.status == 412
    # If-Match is decided before If-None-Match (RFC 9110 13.2.2): a 412, not a 304.
    both = {"If-Match": '"nope"', "If-None-Match": f'"{sha}"'}
    async with stack.client.get(url, headers=both) as response:
        assert response.status == 412
        problem = await response.json(content_type=None)
        assert problem["code"] == "precondition_failed"


class PullCounter:
    """Counts catchall ``pull`` calls reaching the sandbox."""

    def __init__(self) -> None:
        self.pulls = 0

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if "/pull/" in request.path:
            self.pulls += 1
        return await handler(request)


async def _counted_sandbox(serve: Serve, counter: PullCounter) -> tuple[web.Application, str]:
    app = create_sandbox_app(SandboxSettings(speed=400.0, seed=11))
    app.middlewares.append(counter.middleware)
    return app, await serve(app)


async def _page(stack: Stack, job_id: str, page: int, size: int) -> dict[str, Any]:
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job_id}/result", params={"page": page, "page_size": size}
    ) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_catchall_pages_come_from_the_copy_even_after_the_provider_forgets(
    make_stack: StackFactory, serve: Serve, tmp_path: Path
) -> None:
    counter = PullCounter()
    db = tmp_path / "vault.db"
    stack = await make_stack(db=db, sandbox=await _counted_sandbox(serve, counter))
    job = await stack.submit("catchall", {"query": "vault: seed rounds in climate", "limit": 40})
    done = await _until(stack, job["id"], lambda j: j["result"]["stored"])
    total = done["result"]["total_records"]
    assert total == 40
    pulls = counter.pulls

    size = 7
    pages = -(-total // size)
    answers = await asyncio.gather(
        *(_page(stack, job["id"], 1 + n % pages, size) for n in range(100))
    )
    assert counter.pulls == pulls  # not one upstream call for 100 reads
    by_page = {answer["page"]: answer for answer in answers}
    records = [r for p in sorted(by_page) for r in by_page[p]["records"]]
    assert len(records) == total
    assert len({r["record_id"] for r in records}) == total
    assert all(a["total_pages"] == pages and a["total_records"] == total for a in answers)
    assert all(not a["partial"] for a in answers)

    # A restart, against a sandbox that never heard of the job: every page is still served.
    await stack.server.close()
    again = await make_stack(db=db)
    assert again.upstream_jobs("catchall") == 0
    for page in range(1, pages + 1):
        assert (await _page(again, job["id"], page, size))["records"] == by_page[page]["records"]
    whole = await _page(again, job["id"], 1, 1000)
    assert whole["records"] == records
    past = await _page(again, job["id"], pages + 1, size)
    assert past["records"] == []


async def test_pulse_expiry_with_a_copy_and_without(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    kept = await make_stack()
    job = await kept.submit("pulse", {"fileUrl": "https://example.com/e.pdf?sandbox=expire"})
    done = await kept.until_finished(job["id"])
    assert done["state"] == "succeeded"
    assert done["result"]["stored"] is True
    # The provider forgets it (its status says expired); jobgate's copy keeps the job succeeded.
    async with kept.client.get(
        f"{kept.sandbox_url}/pulse/job/{job['upstream_id']}", headers={"x-api-key": "k"}
    ) as response:
        upstream = await response.json()
    for _ in range(100):
        if upstream["status"] == "expired":
            break
        await asyncio.sleep(0.05)
        async with kept.client.get(
            f"{kept.sandbox_url}/pulse/job/{job['upstream_id']}", headers={"x-api-key": "k"}
        ) as response:
            upstream = await response.json()
    assert upstream["status"] == "expired"
    current = await kept.job(job["id"])
    assert current["state"] == "succeeded"
    assert current["result"]["source"] == "jobgate"
    async with kept.client.get(f"{kept.url}/v1/jobs/{job['id']}/result") as response:
        assert response.status == 200
        assert "markdown" in (await response.json())["data"]

    off = await make_stack(db=tmp_path / "off.db", provider_options={"results": {"capture": False}})
    job = await off.submit("pulse", {"fileUrl": "https://example.com/e.pdf?sandbox=expire"})
    expired = await _until(off, job["id"], lambda j: j["state"] == "expired")
    assert expired["result"]["stored"] is False
    assert expired["result"]["available"] is False
    async with off.client.get(f"{off.url}/v1/jobs/{job['id']}/result") as response:
        assert response.status == 410
        problem = await response.json()
    assert problem["code"] == "result_expired"
    assert "capture is off" in problem["detail"]


async def _records_over_sse(stack: Stack, job_id: str) -> tuple[list[Any], list[Frame]]:
    async with stack.client.get(f"{stack.url}/v1/jobs/{job_id}/events") as response:
        async with asyncio.timeout(60):
            stream = await read_until_end(response)
    delivered: list[Any] = []
    for frame in stream:
        if frame.kind == "records":
            assert frame.data["offset"] == len(delivered)
            delivered.extend(frame.data["records"])
    return delivered, stream


async def test_sse_records_add_up_to_the_stored_result(make_stack: StackFactory) -> None:
    stack = await make_stack(speed=150)
    small = await stack.submit("catchall", {"query": "vault sse: succeed", "limit": 25})
    large = await stack.submit("catchall", {"query": "vault sse: sandbox=large"})
    for job in (small, large):
        delivered, stream = await _records_over_sse(stack, job["id"])
        assert stream[-1].kind == "end"
        done = await stack.job(job["id"])
        assert done["result"]["stored"] is True
        total = done["result"]["total_records"]
        assert len(delivered) == total
        whole: list[Any] = []
        for page in range(1, -(-total // 1000) + 1):
            whole.extend((await _page(stack, job["id"], page, 1000))["records"])
        assert delivered == whole
    assert len(delivered) == 2500  # the large scenario, over several upstream pages


class Gate:
    """Holds large-result downloads before the sandbox answers, until ``opened``."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if "/large_results/" in request.path:
            self.reached.set()
            await self.opened.wait()
        return await handler(request)


async def test_readers_waiting_before_the_capture_starts_follow_it(
    make_stack: StackFactory, serve: Serve
) -> None:
    gate = Gate()
    app = create_sandbox_app(SandboxSettings(speed=400.0, seed=11))
    app.middlewares.append(gate.middleware)
    stack = await make_stack(sandbox=(app, await serve(app)))
    store = _pulse_store(stack)
    store.stall = asyncio.Event()
    job = await stack.submit("pulse", {"fileUrl": PROXY_LARGE})
    async with asyncio.timeout(30):
        await gate.reached.wait()  # the capture asked; the provider has not answered yet
    readers = [asyncio.create_task(_download(stack, job["id"])) for _ in range(5)]
    hub = stack.app[COMPONENTS_KEY].require_service().hub
    async with asyncio.timeout(30):
        # Every reader waits for the capture to start (the hub has no event for a new listener).
        while hub.listeners < len(readers):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    gate.opened.set()
    async with asyncio.timeout(30):
        await store.stalled.wait()  # the capture streams; its readers have joined it
    store.stall.set()
    answers = await asyncio.gather(*readers)
    assert {status for status, *_ in answers} == {200}
    assert len({digest for _, digest, *_ in answers}) == 1
    assert store.jobs[job["upstream_id"]].downloads == 1
    # Followed, not served the copy afterwards: a copy carries its ETag, a stream in flight none.
    assert all("ETag" not in headers for *_, headers in answers)


def _files(stack: Stack, job: dict[str, Any]) -> list[Path]:
    root = stack.settings.vault_path() / "default" / job["id"]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_a_continue_keeps_the_copy_until_the_new_one_is_stored(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(speed=200)
    job = await stack.submit("catchall", {"query": "vault: continue", "limit": 10})
    first = await _until(stack, job["id"], lambda j: j["result"]["stored"])
    assert first["result"]["total_records"] == 10
    old_files = _files(stack, job)
    assert [p.suffix for p in old_files] == [".idx", ".jsonl"]
    # The runner deletes the earlier copy's files just after it saves the new one: a reader can
    # see the new version (served from memory) a moment before the deletion is done.
    capturer = stack.app[COMPONENTS_KEY].require_service().capturer
    assert capturer is not None
    forgotten = asyncio.Event()
    forget = capturer.forget

    async def forgetting(before: Job, after: Job) -> None:
        await forget(before, after)
        if before.vault.copy is not None and before.vault.copy != after.vault.copy:
            forgotten.set()

    capturer.forget = forgetting  # type: ignore[method-assign]

    async with stack.client.post(
        f"{stack.url}/v1/jobs/{job['id']}/continue", json={"new_limit": 30}
    ) as response:
        assert response.status == 202, await response.text()
    # While it runs again, the earlier copy is still what /result serves.
    running = await stack.job(job["id"])
    if running["state"] == "running":
        assert running["result"]["stored"] is True
        assert (await _page(stack, job["id"], 1, 100))["total_records"] == 10
    second = await _until(
        stack,
        job["id"],
        lambda j: j["state"] == "succeeded" and j["result"]["total_records"] == 30,
    )
    assert second["result"]["stored"] is True
    assert second["result"]["sha256"] != first["result"]["sha256"]
    assert len((await _page(stack, job["id"], 1, 100))["records"]) == 30
    # The earlier copy's files went once the new copy was saved.
    async with asyncio.timeout(10):
        await forgotten.wait()
    new_files = _files(stack, job)
    assert len(new_files) == 2
    assert not set(old_files) & set(new_files)


async def test_deleting_a_job_deletes_its_copy(make_stack: StackFactory) -> None:
    stack = await make_stack()
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/d.pdf?sandbox=large"})
    await _until(stack, job["id"], lambda j: j["result"]["stored"])
    assert _files(stack, job)
    async with stack.client.delete(f"{stack.url}/v1/jobs/{job['id']}") as response:
        assert response.status == 204
    assert _files(stack, job) == []
    assert not (stack.settings.vault_path() / "default" / job["id"]).exists()


async def test_a_result_over_the_cap_stays_upstream_and_says_why(make_stack: StackFactory) -> None:
    stack = await make_stack(provider_options={"results": {"max_bytes": 1_000_000}})
    job = await stack.submit("pulse", {"fileUrl": "https://example.com/big.pdf?sandbox=large"})
    done = await _until(stack, job["id"], lambda j: j["result"]["error"] is not None)
    assert done["state"] == "succeeded"
    assert done["result"]["stored"] is False
    assert done["result"]["capturing"] is False  # a cap is not retried: it would not shrink
    assert done["result"]["source"] == "provider"
    assert done["result"]["error"]["code"] == "result_too_large"
    assert "1000000" in done["result"]["error"]["message"]
    assert _files(stack, job) == []
    # The presigned pointer needs no key: the client may still fetch it from the provider.
    async with stack.client.get(
        f"{stack.url}/v1/jobs/{job['id']}/result?redirect=true", allow_redirects=False
    ) as response:
        assert response.status == 307
