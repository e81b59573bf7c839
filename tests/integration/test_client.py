"""The Python client (sync and async) against a real gateway and the real sandboxes over sockets.

Each test runs for both clients: the async one in the test's event loop, the blocking one in a
thread (``asyncio.to_thread``), since the gateway serves from this same loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.store.base import JobStore
from gateway.web.app import create_app
from gateway.web.models import StateEventData
from gateway.web.state import COMPONENTS_KEY
from jobgate.client import (
    AsyncClient,
    Client,
    Conflict,
    Event,
    GatewayUnreachable,
    Job,
    NotFound,
    ResultOut,
    Unavailable,
    Unprocessable,
)
from tests.conftest import Serve
from tests.integration.conftest import GatewayTestServer, StackFactory, gateway_settings
from tests.support import free_port

pytestmark = pytest.mark.integration

FINISHED = {"succeeded", "failed", "canceled", "expired"}


class Driver:
    """One face over both clients: ``await drive("get", job_id)`` whichever is under test."""

    def __init__(
        self, kind: str, url: str, *, delays: list[float] | None = None, **options: Any
    ) -> None:
        """``delays``: sleeps are recorded there and return at once (retry tests)."""
        self.kind = kind
        self.sync: Client | None = None
        self.aio: AsyncClient | None = None
        if kind == "sync":
            if delays is not None:
                options["sleep"] = delays.append
            self.sync = Client(url, **options)
        else:
            if delays is not None:
                recorded = delays

                async def sleep(seconds: float) -> None:
                    recorded.append(seconds)

                options["sleep"] = sleep
            self.aio = AsyncClient(url, **options)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.sync is not None:
            return await asyncio.to_thread(getattr(self.sync, method), *args, **kwargs)
        assert self.aio is not None
        return await getattr(self.aio, method)(*args, **kwargs)

    async def collect(
        self,
        method: str,
        *args: Any,
        until: Callable[[Any], bool] | None = None,
        into: list[Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Every item of an iterator method (or up to the first for which ``until`` is true),
        appended to ``into`` as they arrive."""
        items: list[Any] = [] if into is None else into
        if self.sync is not None:
            sync = self.sync

            def run() -> list[Any]:
                iterator: Iterator[Any] = getattr(sync, method)(*args, **kwargs)
                for item in iterator:
                    items.append(item)
                    if until is not None and until(item):
                        break
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
                return items

            return await asyncio.to_thread(run)
        assert self.aio is not None
        async with aclosing(getattr(self.aio, method)(*args, **kwargs)) as iterator:
            async for item in iterator:
                items.append(item)
                if until is not None and until(item):
                    break
        return items

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.aio is not None:
            await self.aio.close()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
async def drivers(kind: str) -> AsyncIterator[Callable[..., Driver]]:
    made: list[Driver] = []

    def make(url: str, **options: Any) -> Driver:
        driver = Driver(kind, url, **options)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


async def until_stored(drive: Driver, job_id: str) -> Job:
    """Long-poll until the job's result is stored in jobgate's vault (bounded)."""
    for _ in range(100):
        job: Job = await drive("get", job_id, wait=1)
        if job.result.stored:
            return job
        if job.state in FINISHED:
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id}'s result was never stored")


# -- submit, adopt, get, wait, result -------------------------------------------------------------


async def test_submit_replays_its_key_get_waits_and_wait_ends(
    make_stack: StackFactory, drivers: Callable[..., Driver]
) -> None:
    stack = await make_stack()
    drive = drivers(stack.url)
    names = {provider.name for provider in await drive("providers")}
    assert names == {"catchall", "extract", "pulse", "platform"}

    key = f"client-{uuid.uuid4()}"
    request = {"url": "https://example.com", "maxPages": 2}
    job: Job = await drive("submit", "extract", request, labels={"t": "1"}, idempotency_key=key)
    again: Job = await drive("submit", "extract", request, labels={"t": "1"}, idempotency_key=key)
    assert again.id == job.id
    assert job.labels == {"t": "1"}
    assert stack.upstream_jobs("extract") == 1
    # Without a key the client makes one: two calls, two jobs.
    other: Job = await drive("submit", "extract", request)
    assert other.id != job.id

    seen: Job = await drive("get", job.id, wait=5)
    assert seen.id == job.id
    done: Job = await drive("wait", job.id, timeout=60)
    assert done.state == "succeeded"
    result = await drive("result", job.id, wait=30)
    assert isinstance(result, ResultOut)
    assert result.kind == "inline"
    assert result.data


async def test_adopt_a_platform_job_and_rerun_it(
    make_stack: StackFactory, drivers: Callable[..., Driver], http_session: aiohttp.ClientSession
) -> None:
    stack = await make_stack()
    drive = drivers(stack.url)
    upstream = await stack.platform_job()

    adopted: Job = await drive("adopt", "platform", upstream, labels={"via": "adopt"})
    assert adopted.upstream_id == upstream
    assert adopted.provider == "platform"
    done: Job = await drive("wait", adopted.id, timeout=60)
    assert done.state == "succeeded"
    rerun: Job = await drive("rerun", adopted.id)
    assert rerun.rerun_of == adopted.id
    assert rerun.id != adopted.id


async def test_jobs_walks_every_page_with_filters(
    make_stack: StackFactory, drivers: Callable[..., Driver]
) -> None:
    stack = await make_stack()
    drive = drivers(stack.url)
    batch = uuid.uuid4().hex[:8]
    extract = [
        (await drive("submit", "extract", {"url": f"https://e.com/{i}"}, labels={"b": batch})).id
        for i in range(5)
    ]
    await drive("submit", "pulse", {"fileUrl": "https://e.com/p.pdf"}, labels={"b": batch})
    await drive("submit", "extract", {"url": "https://e.com/x"}, labels={"b": "other"})

    listed = await drive.collect("jobs", provider="extract", labels={"b": batch}, page_size=2)
    assert sorted(job.id for job in listed) == sorted(extract)
    assert len({job.id for job in listed}) == 5  # no page repeated
    everything = await drive.collect("jobs", labels={"b": batch}, page_size=2)
    assert len(everything) == 6
    capped = await drive.collect("jobs", labels={"b": batch}, page_size=2, limit=3)
    assert len(capped) == 3
    first = await drive("list_page", labels={"b": batch}, limit=4)
    assert len(first.jobs) == 4
    assert first.next_cursor is not None
    rest = await drive("list_page", labels={"b": batch}, limit=4, cursor=first.next_cursor)
    assert len(rest.jobs) == 2
    assert rest.next_cursor is None
    for job in extract:
        await drive("wait", job, timeout=60)
    succeeded = await drive.collect("jobs", labels={"b": batch}, state="succeeded")
    assert set(extract) <= {job.id for job in succeeded}


async def test_catchall_pages_and_continue(
    make_stack: StackFactory, drivers: Callable[..., Driver]
) -> None:
    stack = await make_stack()
    drive = drivers(stack.url)
    job: Job = await drive("submit", "catchall", {"query": "Series B in logistics", "limit": 10})
    done: Job = await drive("wait", job.id, timeout=60)
    assert done.state == "succeeded"
    pages: list[ResultOut] = await drive.collect("result_pages", job.id, page_size=3)
    assert all(page.kind == "paged" for page in pages)
    total = pages[0].total_records
    assert total is not None
    assert total > 3
    assert [page.page for page in pages] == list(range(1, len(pages) + 1))
    records = [record for page in pages for record in page.records or []]
    assert len(records) == total
    assert len(pages) == pages[0].total_pages

    continued: Job = await drive("continue_", job.id, new_limit=20)
    assert continued.id == job.id
    assert continued.state in {"running", "succeeded"}
    again: Job = await drive("wait", job.id, timeout=60)
    assert again.state == "succeeded"


async def test_download_a_large_result_whole_and_resumed(
    make_stack: StackFactory, drivers: Callable[..., Driver], tmp_path: Path
) -> None:
    stack = await make_stack()
    drive = drivers(stack.url)
    job: Job = await drive("submit", "pulse", {"fileUrl": "https://e.com/r.pdf?sandbox=large"})
    stored = await until_stored(drive, job.id)
    size, sha = stored.result.size, stored.result.sha256
    assert size is not None
    assert size > 1_000_000

    ticks: list[tuple[int, int | None]] = []
    whole = await drive(
        "download", job.id, tmp_path / "whole.json", progress=lambda *a: ticks.append(a)
    )
    data = (tmp_path / "whole.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha == whole.sha256
    assert (whole.size, whole.resumed_from, whole.status) == (size, 0, 200)
    assert ticks[-1] == (size, size)
    assert not (tmp_path / "whole.json.part").exists()

    # An interrupted download: its first bytes in the partial file, then resumed with Range.
    cut = 1_234_567
    (tmp_path / "resumed.json.part").write_bytes(data[:cut])
    resumed = await drive("download", job.id, str(tmp_path / "resumed.json"))
    assert (resumed.resumed_from, resumed.status, resumed.sha256) == (cut, 206, sha)
    assert (tmp_path / "resumed.json").read_bytes() == data

    # A partial that is already whole: the 416 says so, and the file is verified, not fetched.
    (tmp_path / "full.json.part").write_bytes(data)
    full = await drive("download", job.id, tmp_path / "full.json")
    assert (full.status, full.resumed_from, full.sha256) == (416, size, sha)

    # A partial of some other bytes: the hash disagrees, and the download starts over.
    (tmp_path / "bad.json.part").write_bytes(b"X" * 1000)
    bad = await drive("download", job.id, tmp_path / "bad.json")
    assert (bad.status, bad.resumed_from, bad.sha256) == (200, 0, sha)

    # The provider's document through result(): bytes, not a model.
    body = await drive("result", job.id)
    assert isinstance(body, bytes)
    assert hashlib.sha256(body).hexdigest() == sha


# -- actions and typed errors ---------------------------------------------------------------------


async def test_cancel_delete_and_typed_errors(
    make_stack: StackFactory, drivers: Callable[..., Driver]
) -> None:
    stack = await make_stack(speed=1)  # a slow pulse job lasts minutes: cancel meets it running
    drive = drivers(stack.url)
    job: Job = await drive("submit", "pulse", {"fileUrl": "https://e.com/a.pdf?sandbox=slow"})
    canceled: Job = await drive("cancel", job.id)
    assert canceled.id == job.id
    done: Job = await drive("wait", job.id, timeout=30)
    assert done.state == "canceled"
    with pytest.raises(Conflict) as conflict:
        await drive("cancel", job.id)
    assert conflict.value.code == "invalid_state"

    extract: Job = await drive("submit", "extract", {"url": "https://example.com"})
    with pytest.raises(Conflict) as unsupported:
        await drive("cancel", extract.id)
    assert unsupported.value.code == "action_not_supported"
    assert unsupported.value.status == 409
    assert str(unsupported.value).startswith("action_not_supported: ")

    await drive("delete", job.id)
    with pytest.raises(NotFound) as missing:
        await drive("get", job.id)
    assert missing.value.code == "job_not_found"
    with pytest.raises(NotFound):
        await drive("result", "job_nope")

    with pytest.raises(Unprocessable) as invalid:
        await drive("submit", "extract", {"url": "u"}, labels={"a:b": "x"})
    assert invalid.value.code == "validation_error"
    assert invalid.value.errors
    assert invalid.value.errors[0]["field"] == "labels"
    with pytest.raises(Unprocessable) as unknown:
        await drive("submit", "nope", {})
    assert unknown.value.code == "unknown_provider"


async def test_an_unreachable_gateway_names_its_url_not_its_key(
    drivers: Callable[..., Driver],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    delays: list[float] = []
    drive = drivers(url, api_key="jg_do_not_leak", delays=delays)
    with pytest.raises(GatewayUnreachable) as caught:
        await drive("get", "job_x")
    assert url in str(caught.value)
    assert "jg_do_not_leak" not in str(caught.value)
    assert caught.value.__context__ is None  # httpx's error (and its request headers) left behind
    assert len(delays) == 3  # max_retries, with a backoff
    delays.clear()
    with pytest.raises(GatewayUnreachable):
        await drive("cancel", "job_x")
    assert delays == []  # an action is never resent
    assert "jg_do_not_leak" not in repr(drive.sync or drive.aio)


# -- retries against a real (small) server --------------------------------------------------------


class Flaky:
    """A real aiohttp app on 127.0.0.1: each route answers 503 (Retry-After: 0) ``failures``
    times, then succeeds; it counts every request."""

    def __init__(self, job: dict[str, Any], failures: int = 2) -> None:
        self.job = job
        self.failures = failures
        self.counts: dict[str, int] = {}
        self.keys: dict[str, list[str | None]] = {}
        """Each request's Idempotency-Key, by route."""

    async def handle(self, request: web.Request) -> web.Response:
        key = f"{request.method} {request.path}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self.keys.setdefault(key, []).append(request.headers.get("Idempotency-Key"))
        if self.counts[key] <= self.failures:
            return web.json_response(
                {
                    "type": "https://jobgate.dev/problems/upstream_unavailable",
                    "title": "Unavailable",
                    "status": 503,
                    "detail": "try later",
                    "code": "upstream_unavailable",
                },
                status=503,
                headers={"Retry-After": "0"},
                content_type="application/problem+json",
            )
        status = {"POST /v1/jobs": 201}.get(key, 202 if request.method == "POST" else 200)
        return web.json_response(self.job, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def test_503_with_retry_after_is_retried_for_idempotent_calls_only(
    make_stack: StackFactory, drivers: Callable[..., Driver], serve: Any
) -> None:
    stack = await make_stack()
    real = await stack.client.post(
        f"{stack.url}/v1/jobs", json={"provider": "extract", "request": {"url": "https://e.com"}}
    )
    job = await real.json()
    flaky = Flaky(job)
    url = await serve(flaky.app())
    drive = drivers(url)
    got: Job = await drive("get", job["id"])
    assert got.id == job["id"]
    assert flaky.counts[f"GET /v1/jobs/{job['id']}"] == 3  # two 503s, then the answer
    submitted: Job = await drive("submit", "extract", {"url": "https://e.com"})
    assert submitted.id == job["id"]
    assert flaky.counts["POST /v1/jobs"] == 3  # a keyed submit is safe to resend
    (sent_key,) = set(flaky.keys["POST /v1/jobs"])  # ...because every try carried the same key
    assert sent_key is not None
    assert sent_key.startswith("jobgate-client-")
    with pytest.raises(Unavailable) as caught:
        await drive("cancel", job["id"])
    assert caught.value.retry_after == 0
    assert flaky.counts[f"POST /v1/jobs/{job['id']}/cancel"] == 1  # never resent

    stubborn = Flaky(job, failures=10)
    drive = drivers(await serve(stubborn.app()), max_retries=2)
    with pytest.raises(Unavailable):
        await drive("get", "j")
    assert stubborn.counts["GET /v1/jobs/j"] == 3  # the first try and max_retries


# -- a download cut mid-body, against a real (small) server ---------------------------------------


class Cut:
    """A real aiohttp app on 127.0.0.1 serving one job and its result ``body``, whose first
    answer is cut (the connection closed) after ``cut`` bytes. It honours ``Range`` with an
    entity-tag ``If-Range`` as the gateway does: the range only for the current ETag, else the
    whole body (200). ``etags``: the ETag of each answer, in turn (the last one repeats)."""

    def __init__(self, body: bytes, cut: int, etags: list[str]) -> None:
        self.body = body
        self.cut = cut
        self.etags = etags
        self.seen: list[dict[str, str]] = []
        """The headers of each request for the result."""

    async def job(self, request: web.Request) -> web.Response:
        from tests.unit.client.test_core import job

        return web.json_response(job("succeeded", job_id=request.match_info["job_id"]))

    async def result(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        etag = self.etags[min(len(self.seen), len(self.etags)) - 1]
        wanted = request.headers.get("Range", "")
        start = 0
        if wanted and request.headers.get("If-Range") == etag:
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
        headers = {"Content-Type": "application/octet-stream", "ETag": etag}
        if start:
            last = len(self.body) - 1
            headers["Content-Range"] = f"bytes {start}-{last}/{len(self.body)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(self.body) - start
        await response.prepare(request)
        if len(self.seen) == 1:
            await response.write(self.body[: self.cut])
            assert request.transport is not None
            request.transport.close()  # sends what was written, then hangs up mid-body
            return response
        await response.write(self.body[start:])
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/jobs/{job_id}", self.job)
        app.router.add_get("/v1/jobs/{job_id}/result", self.result)
        return app


BODY = hashlib.sha256(b"seed").digest() * 10_000  # 320 kB


async def test_a_download_cut_mid_body_resumes_with_range_and_if_range(
    serve: Serve, drivers: Callable[..., Driver], tmp_path: Path
) -> None:
    sha = hashlib.sha256(BODY).hexdigest()
    cut = Cut(BODY, 100_000, [f'"{sha}"'])
    delays: list[float] = []
    drive = drivers(await serve(cut.app()), delays=delays)
    saved = await drive("download", "job_cut", tmp_path / "cut.bin")
    assert (tmp_path / "cut.bin").read_bytes() == BODY
    assert not (tmp_path / "cut.bin.part").exists()
    first, second = cut.seen
    assert "Range" not in first
    assert second["Range"] == f"bytes={saved.resumed_from}-"
    assert second["If-Range"] == f'"{sha}"'  # the ETag of the answer that started it
    assert 0 < saved.resumed_from <= 100_000
    assert (saved.status, saved.size, saved.sha256) == (206, len(BODY), sha)
    assert len(delays) == 1  # one backoff, after the cut


async def test_a_resume_whose_copy_changed_starts_over(
    serve: Serve, drivers: Callable[..., Driver], tmp_path: Path
) -> None:
    # The second answer has another ETag: If-Range fails, the server sends it all (200).
    cut = Cut(BODY, 50_000, ['"v1"', '"v2"'])
    drive = drivers(await serve(cut.app()), delays=[])
    saved = await drive("download", "job_cut", tmp_path / "cut.bin")
    assert cut.seen[1].get("If-Range") == '"v1"', cut.seen
    assert (saved.status, saved.resumed_from) == (200, 0)
    assert (tmp_path / "cut.bin").read_bytes() == BODY


# -- events ---------------------------------------------------------------------------------------


async def test_events_survive_a_gateway_restart_once_each_in_order(
    serve: Serve, drivers: Callable[..., Driver], tmp_path: Path
) -> None:
    sandbox_url = await serve(create_sandbox_app(SandboxSettings(speed=150, seed=11)))
    settings = gateway_settings(sandbox_url, tmp_path / "restart.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = GatewayTestServer(create_app(settings), host="127.0.0.1", port=port)
    await first.start_server()
    second: GatewayTestServer | None = None
    try:
        start = await store_of(first).last_event_id()
        drive = drivers(url, timeout=5)
        # catchall: about 5 s at this speed, with records events while it enriches
        job: Job = await drive("submit", "catchall", {"query": "Series B rounds in logistics"})
        job_events: list[Event] = []
        tenant_events: list[Event] = []

        def is_end(event: Event) -> bool:
            return event.event == "end"

        def is_finish(event: Event) -> bool:
            return (
                event.event == "state"
                and isinstance(event.data, StateEventData)
                and event.data.id == job.id
                and event.data.state in FINISHED
            )

        readers = [
            asyncio.create_task(
                drive.collect(
                    "events", job.id, max_reconnect_wait=0.3, until=is_end, into=job_events
                )
            ),
            asyncio.create_task(
                drive.collect(
                    "events",
                    last_event_id=start,
                    max_reconnect_wait=0.3,
                    until=is_finish,
                    into=tenant_events,
                )
            ),
        ]
        try:
            # Both streams open and flowing, then the gateway stops under them...
            async with asyncio.timeout(30):
                # (Polled: in the sync case the lists fill from a thread, not this loop.)
                while len(job_events) < 2 or not tenant_events:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await first.close()
            last_before = last_event_in(tmp_path / "restart.db")
            await asyncio.sleep(0.5)  # ...stays down (reconnects are refused)...
            # ...and comes back on the same port and file while the job goes on upstream.
            second = GatewayTestServer(create_app(settings), host="127.0.0.1", port=port)
            await second.start_server()
            async with asyncio.timeout(60):
                await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        store = store_of(second)
        log = [event.id for event in await store.events_after(0, job_id=job.id, limit=100_000)]
        everything = [event.id for event in await store.events_after(start, limit=100_000)]
    finally:
        await first.close()
        if second is not None:
            await second.close()

    assert job_events[-1].event == "end"
    ids = [event.id for event in job_events[:-1]]
    assert ids == log, "a resumed stream missed or repeated an event"
    assert any(i <= last_before for i in log), "nothing before the restart"
    assert any(i > last_before for i in log), "nothing after the restart"
    assert {"created", "state"} <= {event.event for event in job_events}
    # The tenant stream: every event after ``start`` up to the job's end, once and in order.
    tenant_ids = [event.id or 0 for event in tenant_events]
    assert tenant_ids == everything[: len(tenant_ids)]
    assert any(i > last_before for i in tenant_ids)


def store_of(server: GatewayTestServer) -> JobStore:
    return server.app[COMPONENTS_KEY].require_service().store


def last_event_in(db: Path) -> int:
    """The last event id in the gateway's file, read while no gateway runs."""
    with closing(sqlite3.connect(db)) as conn:
        (last,) = conn.execute("SELECT max(id) FROM events").fetchone()
    return int(last)
