"""The asyncio client: :mod:`jobgate.client.sync`'s glue with ``await``, over an
``httpx.AsyncClient``. Every rule lives in :mod:`jobgate.client.core`; keep the two drivers
line for line alike so a difference between them stands out in a diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import httpx

from gateway.web.models import JobList, JobOut, ProviderOut, ResultOut
from jobgate.client import core
from jobgate.client.core import Call, Calls, Config, Exchange, ResultStream, transport_reason
from jobgate.client.download import Complete, Download, DownloadPlan, Write
from jobgate.client.errors import GatewayUnreachable
from jobgate.client.events import Event, EventStream
from jobgate.client.files import CHUNK, Progress, part_path, partial_size, prepare

T = TypeVar("T")


class AsyncClient:
    """A jobgate client over asyncio. Use it with ``async with``, or await :meth:`close`.

    ``sleep``, ``clock`` (monotonic seconds), ``now`` (UTC, for Retry-After dates) and ``rand``
    (reconnect jitter) are there for tests; the defaults are the real ones.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = core.now_utc,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._config = Config.resolve(
            url,
            api_key,
            os.environ,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
        )
        self._http = httpx.AsyncClient(
            base_url=self._config.url,
            headers=self._config.headers(),
            transport=transport,
            timeout=timeout,
        )
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self._rand = rand

    @property
    def url(self) -> str:
        return self._config.display_url

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r})"

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one call -------------------------------------------------------------------------------

    def _request(self, call: Call[Any], *, stream: bool = False) -> httpx.Request:
        return self._http.build_request(**self._config.request_args(call, stream=stream))

    async def _run(self, call: Call[T] | Calls[T]) -> T:
        async with self._exchange(Exchange(call, self._config.policy, self.url)) as answer:
            assert not isinstance(answer, httpx.Response)  # only stream_large calls stream
            return answer

    @contextlib.asynccontextmanager
    async def _exchange(self, exchange: Exchange[T]) -> AsyncIterator[T | httpx.Response]:
        """The exchange's value, or (a large result) its answer with the body unread."""
        while True:
            reason: str | None = None
            retry: core.Retry | None = None
            try:
                call = exchange.next_call(self._clock())
                response = await self._http.send(self._request(call), stream=True)
            except httpx.TransportError as exc:
                reason = transport_reason(exc)
            else:
                async with contextlib.aclosing(response):
                    if exchange.streams(response.status_code, response.headers):
                        yield response
                        return
                    reason = await _read(response)
                    if reason is None:
                        step = exchange.answered(response, self._now(), self._clock())
                        if not isinstance(step, core.Retry):
                            yield step
                            return
                        retry = step
            # Raised outside the except block: httpx's exception holds the request, and with it
            # the Authorization header, which must not ride along as __context__.
            if reason is not None:
                retry = exchange.failed(reason, self._clock())
            assert retry is not None
            await self._sleep(retry.delay)

    # -- the API --------------------------------------------------------------------------------

    async def providers(self) -> list[ProviderOut]:
        return await self._run(core.providers())

    async def submit(
        self,
        provider: str,
        request: Mapping[str, Any],
        *,
        labels: Mapping[str, str] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut:
        return await self._run(
            core.submit(
                provider,
                request,
                labels=labels,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
        )

    async def adopt(
        self,
        provider: str,
        upstream_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut:
        return await self._run(
            core.adopt(
                provider,
                upstream_id,
                labels=labels,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
        )

    async def get(self, job_id: str, *, wait: float | None = None, retry: bool = True) -> JobOut:
        """The job; ``wait``: hold the answer up to that many seconds (at most the gateway's
        ``max_wait_seconds``) until the job changes. ``retry=False``: one try only."""
        return await self._run(core.get_job(job_id, wait=wait, retry=retry))

    async def list_page(
        self,
        *,
        provider: str | None = None,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        call = core.list_page(
            provider=provider, state=state, labels=labels, limit=limit, cursor=cursor
        )
        return await self._run(call)

    async def jobs(
        self,
        *,
        provider: str | None = None,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> AsyncIterator[JobOut]:
        pages = core.JobPages(
            provider=provider, state=state, labels=labels, page_size=page_size, limit=limit
        )
        while (call := pages.next_call()) is not None:
            for job in pages.feed(await self._run(call)):
                yield job

    # The same API as Client.wait: a deadline over many long polls, and WaitTimeout with the job.
    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobOut:  # noqa: ASYNC109
        loop = core.WaitLoop(job_id, timeout, self._clock())
        while True:
            finished = loop.feed(await self._run(loop))
            if finished is not None:
                return finished

    async def result(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> ResultOut | bytes:
        """The result: :class:`ResultOut` (inline, or a page), or the provider's document as
        bytes, read whole (:meth:`open_result` streams it). ``wait``: seconds to wait for it to
        exist, however long (as long polls the gateway accepts)."""
        waiting = core.result_wait(
            job_id, wait=wait, now=self._clock(), page=page, page_size=page_size
        )
        return await self._run(waiting)

    @contextlib.asynccontextmanager
    async def open_result(
        self,
        job_id: str,
        *,
        wait: float | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[ResultOut | ResultStream[AsyncIterator[bytes]]]:
        """As :meth:`result`, but a document that is not small JSON comes as a
        :class:`ResultStream` whose ``chunks`` are read as they arrive (within the ``with``)."""
        waiting = core.result_wait(
            job_id, wait=wait, now=self._clock(), page=page, page_size=page_size, stream=True
        )
        async with self._exchange(Exchange(waiting, self._config.policy, self.url)) as answer:
            if isinstance(answer, httpx.Response):
                yield core.stream_of(answer, self._chunks(answer))
            elif isinstance(answer, bytes):
                # A small JSON document that is not jobgate's own (read whole to tell).
                yield ResultStream("application/json", len(answer), _once(answer))
            else:
                yield answer

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        reason: str | None = None
        try:
            async for chunk in response.aiter_bytes(CHUNK):
                yield chunk
        except httpx.TransportError as exc:
            reason = transport_reason(exc)
        if reason is not None:
            raise GatewayUnreachable(self.url, f"the result broke off: {reason}")

    async def result_pages(
        self, job_id: str, *, page_size: int = 100, wait: float | None = None
    ) -> AsyncIterator[ResultOut]:
        pages = core.ResultPages(job_id, page_size=page_size, wait=wait)
        while (calls := pages.next_call(self._clock())) is not None:
            yield pages.feed(await self._run(calls))

    async def cancel(self, job_id: str) -> JobOut:
        return await self._run(core.cancel(job_id))

    async def rerun(self, job_id: str) -> JobOut:
        return await self._run(core.rerun(job_id))

    async def continue_(self, job_id: str, *, new_limit: int | None = None) -> JobOut:
        return await self._run(core.continue_(job_id, new_limit=new_limit))

    async def delete(self, job_id: str) -> None:
        await self._run(core.delete(job_id))

    # -- downloads ------------------------------------------------------------------------------

    async def download(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        resume: bool = True,
        progress: Progress | None = None,
        wait: float | None = None,
    ) -> Download:
        """Stream the job's result to ``path``.

        The bytes go to ``<path>.part`` and are renamed to ``path`` once whole and verified, so
        ``path`` never holds half a result. With ``resume``, an existing ``<path>.part`` is
        continued with a Range request (the rules: :class:`~jobgate.client.download.DownloadPlan`);
        without, it is discarded. ``wait``: seconds to wait for the result to exist, however
        long (as long polls the gateway accepts).
        """
        target, part = part_path(path)
        size, sha256 = DownloadPlan.expectations(await self.get(job_id))
        plan = DownloadPlan(
            job_id,
            partial=await asyncio.to_thread(partial_size, part, resume=resume),
            expected_size=size,
            expected_sha256=sha256,
            wait=wait,
            path=target,
            policy=self._config.policy,
            url=self.url,
            now=self._clock(),
        )
        while (call := plan.next_call(self._clock())) is not None:
            reason: str | None = None
            step: core.Retry | None = None
            try:
                response = await self._http.send(self._request(call), stream=True)
                async with contextlib.aclosing(response):
                    todo = plan.opened(response.status_code, response.headers)
                    if todo is None:
                        await response.aread()
                        step = plan.refused(response, self._now(), self._clock())
                    elif isinstance(todo, Write | Complete):
                        # A partial file can be large: hash it off the event loop.
                        file = await asyncio.to_thread(prepare, part, plan, todo)
                        if file is not None:
                            with file:
                                await self._write(file, plan, response, progress)
                        plan.ended()
            except httpx.TransportError as exc:
                reason = transport_reason(exc)
            if reason is not None:
                step = plan.failed(reason, self._clock())
            if step is not None:
                await self._sleep(step.delay)
        await asyncio.to_thread(os.replace, part, target)
        assert plan.download is not None
        return plan.download

    @staticmethod
    async def _write(
        file: BinaryIO, plan: DownloadPlan, response: httpx.Response, progress: Progress | None
    ) -> None:
        if progress is not None:
            progress(plan.offset, plan.total)
        # Chunks as they arrive (no re-chunking): bytes held in a buffer would be lost to a cut.
        # They are written in the loop: a chunk to a local file is quicker than a thread hop.
        async for chunk in response.aiter_raw():
            file.write(chunk)
            plan.feed(chunk)
            if progress is not None:
                progress(plan.offset, plan.total)

    # -- events ---------------------------------------------------------------------------------

    def events(
        self,
        job_id: str | None = None,
        *,
        provider: str | Sequence[str] | None = None,
        state: str | Sequence[str] | None = None,
        last_event_id: int | None = None,
        reconnect: bool = True,
        max_reconnect_wait: float = 5.0,
        max_reconnects: int | None = 20,
    ) -> AsyncIterator[Event]:
        """Events of one job (history, then live; over after ``end``) or of every job of the
        tenant (``job_id=None``: from now, never over by itself). Dropped connections are
        resumed with ``Last-Event-ID``; each event is yielded once, in order.

        Leave it early inside ``contextlib.aclosing(...)`` so its connection closes at once."""
        stream = EventStream(
            job_id,
            provider=provider,
            state=state,
            last_event_id=last_event_id,
            reconnect=reconnect,
            max_reconnect_wait=max_reconnect_wait,
            max_reconnects=max_reconnects,
            rand=self._rand,
        )
        return self._events(stream)

    async def _events(self, stream: EventStream) -> AsyncIterator[Event]:
        while (call := stream.next_call()) is not None:
            delay: float | None = None
            reason: str | None = None
            try:
                response = await self._http.send(self._request(call, stream=True), stream=True)
                async with contextlib.aclosing(response):
                    content_type = response.headers.get("content-type", "")
                    if not stream.opened(response.status_code, content_type):
                        await response.aread()
                        delay = stream.refused(response, self._now())
                    else:
                        async for chunk in response.aiter_bytes():
                            for event in stream.feed(chunk):
                                yield event
                            if stream.done:
                                return
            except httpx.TransportError as exc:
                reason = transport_reason(exc)
            if delay is None:
                delay = stream.dropped(reason, self.url)
            if delay is not None:
                await self._sleep(delay)


async def _read(response: httpx.Response) -> str | None:
    """Read the answer's body: ``None``, or why the connection broke meanwhile."""
    try:
        await response.aread()
    except httpx.TransportError as exc:
        return transport_reason(exc)
    return None


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
