"""Capturing a finished job's result into the vault: the I/O behind ``gateway.vault``'s rules.

The runner hands a claimed job here when the vault owes it work (:meth:`Capturer.work`):

- **capture**: an inline result too big for the job's record, every page of a paged result (the
  record count checked against the provider's), or the body behind an ``is_url`` pointer, streamed
  into a blob and hashed on the way, never held whole;
- **retire**: a copy past its retention is deleted.

Crash-safety, step by step ("call upstream, then write locally"):

- The capture runs under the claim's lease. A crash while the body streams leaves a temporary
  file only (``gateway.blobs``): nothing is ever served from it, and the lease runs out and the
  capture runs again (in this process restarted, or on another replica).
- A crash after the blob's rename but before the job's row says so: the retry writes the same key
  (keys are named by the job and the capture's generation) and replaces it. A single-use pointer
  spent by the lost attempt answers 410 to the retry: the job then says the capture failed and,
  holding no copy, becomes ``expired``, which is the truth.
- A crash after the row is written but before an older copy (a continue's) is deleted leaves that
  older blob in the job's directory until the job is deleted.

Readers arriving while a pointer's capture streams follow the blob as it is written
(:meth:`Capturer.following`), so the provider's pointer is fetched once however many read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Final, TypeVar

import orjson
import structlog

from adapters.base import (
    Adapter,
    AdapterError,
    JobError,
    ResultExpired,
    ResultKind,
    ResultLocator,
    ResultPage,
    ResultPointer,
)
from adapters.http import utcnow
from gateway.blobs import BlobError, BlobWriter, FilesystemBlobStore
from gateway.jobs import Job, NewEvent, transition
from gateway.policy import PollPolicy, error_delay
from gateway.quota import Quota
from gateway.results import ResultFetcher, ResultTooLarge, UnsafeURL
from gateway.states import JobState
from gateway.vault import (
    CapturePolicy,
    StoredCopy,
    envelope,
    expiry,
    gone,
    next_due,
    settle,
)

log = structlog.get_logger("jobgate.vault")

CAPTURE_PAGE: Final = 1000
"""Records asked for per page while capturing (adapters clamp it to what their provider takes)."""
RECORDS_EVENT: Final = 100
"""Records in one ``records`` event, at most (as the runner's partial records)."""
_OFFSET = struct.Struct(">Q")
T = TypeVar("T")


class Work(Enum):
    CAPTURE = "capture"
    RETIRE = "retire"
    WATCH = "watch"
    """Poll the provider's status: a finished job watched for ``expired``."""
    NONE = "none"


class CaptureFailed(Exception):
    def __init__(self, code: str, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.final = final


@dataclass(frozen=True, slots=True)
class Following:
    """A capture in progress that a reader can follow."""

    writer: BlobWriter
    content_type: str
    content_length: int | None


def blob_prefix(job: Job) -> str:
    return f"{job.tenant}/{job.id}"


class Capturer:
    def __init__(
        self,
        blobs: FilesystemBlobStore,
        adapters: Mapping[str, Adapter],
        fetchers: Mapping[str, ResultFetcher],
        policies: Mapping[str, CapturePolicy],
        polls: Mapping[str, PollPolicy],
        *,
        quota: Quota | None = None,
        key_headers: Mapping[str, tuple[str, str]] | None = None,
        provider_hosts: Mapping[str, str] | None = None,
        timeout: float = 96.0,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] | None = None,
        on_stream: Callable[[str], None] = lambda job_id: None,
        observe: Callable[[str, str, int], None] = lambda provider, outcome, size: None,
    ) -> None:
        self.blobs = blobs
        self.adapters = adapters
        self.fetchers = fetchers
        self.policies = policies
        self.polls = polls
        self.quota = quota
        self.key_headers = key_headers or {}
        self.provider_hosts = provider_hosts or {}
        self.timeout = timeout
        self.clock = clock
        # Its own generator, not the random module's shared one: jitter drawn here must not move
        # anyone else's sequence (nor be moved by it).
        self.rand = rand if rand is not None else random.Random().random
        # Tells readers waiting for a job's capture that they can follow it now.
        self.on_stream = on_stream
        # (provider, outcome, bytes) for the metrics: stored, failed, gave_up, retired.
        self.observe = observe
        self._following: dict[str, Following] = {}

    # -- rules, with this deployment's settings ----------------------------------------------

    def policy(self, provider: str) -> CapturePolicy:
        return self.policies.get(provider) or CapturePolicy(capture=False)

    def can_expire(self, provider: str) -> bool:
        adapter = self.adapters.get(provider)
        return adapter is not None and JobState.EXPIRED in adapter.status_table.values()

    def settle(self, before: Job, after: Job, now: datetime) -> Job:
        """Apply the vault's rules to a freshly folded report and, for a finished job, set when
        it is next due (the vault's work, or never)."""
        adapter = self.adapters.get(after.provider)
        pages = adapter is not None and adapter.capabilities.partial_results
        new = settle(before, after, self.policy(after.provider), now, pages=pages)
        if not new.finished or new.polling:
            return new
        return replace(new, next_poll_at=self._next_due(new, now))

    def _next_due(self, job: Job, now: datetime, retry_in: float = 0.0) -> datetime | None:
        poll = self.polls.get(job.provider)
        if poll is None:
            return None
        return next_due(job, poll, now, can_expire=self.can_expire(job.provider), retry_in=retry_in)

    def work(self, job: Job, now: datetime) -> Work:
        """What a claimed finished job is due for."""
        if job.state is not JobState.SUCCEEDED:
            return Work.NONE
        vault = job.vault
        if vault.pending:
            return Work.CAPTURE
        copy = vault.copy
        if copy is not None:
            if copy.expires_at is not None and copy.expires_at <= now:
                return Work.RETIRE
            return Work.NONE
        if self.can_expire(job.provider) and not vault.upstream_gone:
            return Work.WATCH
        return Work.NONE

    def following(self, job: Job) -> Following | None:
        """The capture of ``job``'s current result streaming in this process, if any."""
        return self._following.get(job.id)

    # -- the work ------------------------------------------------------------------------------

    def at_finish(self, job: Job) -> bool:
        """Whether a capture owed by a job that has just succeeded is done in the same poll:
        a paged result's last records arrive only with completion, and its ``records`` events
        must reach the log before the stream that follows the job sees it finished."""
        result = job.result
        return (
            job.state is JobState.SUCCEEDED
            and job.vault.pending
            and result is not None
            and result.kind is ResultKind.PAGED
        )

    async def capture(self, job: Job) -> tuple[Job, list[NewEvent]]:
        """Capture the job's result: its new version, and the ``records`` events of a paged
        result's records that no event carried yet (the caller adds the version's own events)."""
        now = self.clock()
        locator = job.result
        assert locator is not None
        policy = self.policy(job.provider)
        events: list[NewEvent] = []
        new = job
        try:
            async with asyncio.timeout(self.timeout):
                if locator.kind is ResultKind.PAGED:
                    copy, new, events = await self._paged(job, keep=policy.capture)
                    spent = False
                elif locator.kind is ResultKind.INLINE:
                    copy = await self._inline(job, locator)
                    # The body now lives in the blob; the record keeps only its locator.
                    new = replace(job, result=replace(locator, inline=None))
                    spent = False
                else:
                    copy, spent = await self._pointer(job, locator, policy)
        except TimeoutError:
            return self._failed(
                job,
                CaptureFailed(
                    "capture_timeout",
                    f"the capture did not finish within {self.timeout:g} s (the runner's lease "
                    "bounds it); it is retried",
                ),
                now,
            )
        except CaptureFailed as failure:
            return self._failed(job, failure, now)
        if copy is None:
            # Capture is off: the pages were read for their records only.
            vault = new.vault.dropped()
        else:
            vault = new.vault.stored(copy, upstream_gone=spent)
            self.observe(job.provider, "stored", copy.size)
            log.info(
                "vault.stored",
                job_id=job.id,
                provider=job.provider,
                kind=copy.kind.value,
                size=copy.size,
                sha256=copy.sha256,
            )
        done = replace(new, vault=vault, updated_at=now, version=job.version + 1)
        done = replace(done, next_poll_at=self._next_due(done, now))
        return done, events

    def _failed(
        self, job: Job, failure: CaptureFailed, now: datetime
    ) -> tuple[Job, list[NewEvent]]:
        upstream_gone = failure.code == ResultExpired.code
        vault = job.vault.failed(
            JobError(failure.code, failure.message),
            final=failure.final,
            upstream_gone=upstream_gone,
        )
        new = replace(job, vault=vault, updated_at=now, version=job.version + 1)
        poll = self.polls.get(job.provider)
        retry_in = 0.0
        if vault.pending and poll is not None:
            retry_in = error_delay(poll, failures=vault.attempts, rand=self.rand())
        self.observe(job.provider, "failed" if vault.pending else "gave_up", 0)
        log.warning(
            "vault.capture_failed",
            job_id=job.id,
            provider=job.provider,
            code=failure.code,
            error=failure.message,
            attempts=vault.attempts,
            retry_in=round(retry_in, 3) if vault.pending else None,
        )
        if gone(new):
            expired = transition(
                new,
                JobState.EXPIRED,
                now,
                error=JobError(
                    "result_expired",
                    "the provider's result is gone and jobgate could not capture a copy",
                ),
            )
            return expired, []
        new = replace(new, next_poll_at=self._next_due(new, now, retry_in))
        return new, []

    async def retire(self, job: Job) -> Job:
        """Delete a copy past its retention."""
        now = self.clock()
        copy = job.vault.copy
        assert copy is not None
        for key in copy.blob_keys():
            await self.blobs.delete(key)
        result = job.result
        if result is not None and copy.key is None and result.inline is not None:
            # A small inline copy lives in the record: it goes with the retention too.
            result = replace(result, inline=None)
        new = replace(
            job, result=result, vault=job.vault.retire(), updated_at=now, version=job.version + 1
        )
        self.observe(job.provider, "retired", 0)
        log.info("vault.retired", job_id=job.id, provider=job.provider, size=copy.size)
        if gone(new):
            new = transition(new, JobState.EXPIRED, now)
        else:
            new = replace(new, next_poll_at=self._next_due(new, now))
        return new

    async def forget(self, before: Job, after: Job) -> None:
        """Delete the blobs of a copy that a saved version no longer holds (a continue's newer
        capture replaced it). Best effort: a leftover blob only wastes space until the job goes."""
        old = before.vault.copy
        if old is None:
            return
        kept = set(after.vault.copy.blob_keys()) if after.vault.copy else set()
        for key in old.blob_keys():
            if key not in kept:
                with contextlib.suppress(BlobError, OSError):
                    await self.blobs.delete(key)

    # -- the three shapes ----------------------------------------------------------------------

    def _key(self, job: Job, suffix: str) -> str:
        return f"{blob_prefix(job)}/g{job.vault.generation}.{suffix}"

    async def _inline(self, job: Job, locator: ResultLocator) -> StoredCopy:
        body = envelope(locator.inline)
        async with self._writing(self._key(job, "json")) as writer:
            await writer.write(body)
            info = await writer.commit()
        now = self.clock()
        policy = self.policy(job.provider)
        return StoredCopy(
            kind=ResultKind.INLINE,
            size=info.size,
            sha256=info.sha256,
            stored_at=now,
            expires_at=expiry(policy, now),
            key=info.key,
        )

    async def _paged(
        self, job: Job, *, keep: bool
    ) -> tuple[StoredCopy | None, Job, list[NewEvent]]:
        adapter = self.adapters[job.provider]
        offsets = bytearray()
        count = 0
        total: int | None = None
        meta: Mapping[str, object] = {}
        seen = job.records_seen
        events: list[NewEvent] = []
        fresh: list[object] = []
        async with self._writing(self._key(job, "jsonl")) as writer:
            page_number = 1
            while True:
                if page_number > 1:  # the claim took the first call's token
                    await self._token(job.provider)
                page = await self._call(
                    adapter.fetch_result(job.upstream_id, page=page_number, page_size=CAPTURE_PAGE)
                )
                if not isinstance(page, ResultPage):
                    raise CaptureFailed(
                        "result_malformed", "the provider answered a paged result with no page"
                    )
                for record in page.records:
                    line = orjson.dumps(record) + b"\n"
                    offsets += _OFFSET.pack(writer.size)
                    await writer.write(line)
                    if count >= seen:
                        fresh.append(record)
                    count += 1
                total = page.total_records
                meta = page.meta
                if page_number >= page.total_pages or not page.records:
                    break
                page_number += 1
            if total is not None and count != total:
                raise CaptureFailed(
                    "record_count_mismatch",
                    f"the provider reported {total} records but its pages held {count}",
                )
            offsets += _OFFSET.pack(writer.size)
            for start in range(0, len(fresh), RECORDS_EVENT):
                chunk = fresh[start : start + RECORDS_EVENT]
                events.append(
                    NewEvent(
                        "records",
                        {
                            "offset": seen + start,
                            "count": len(chunk),
                            "total_records": total if total is not None else count,
                            "partial": False,
                            "records": chunk,
                        },
                    )
                )
            new = replace(job, records_seen=max(seen, count))
            if not keep:
                await writer.abort()
                return None, new, events
            info = await writer.commit()
        async with self._writing(self._key(job, "idx")) as index:
            await index.write(bytes(offsets))
            index_info = await index.commit()
        now = self.clock()
        copy = StoredCopy(
            kind=ResultKind.PAGED,
            size=info.size,
            sha256=info.sha256,
            stored_at=now,
            expires_at=expiry(self.policy(job.provider), now),
            key=info.key,
            content_type="application/x-ndjson",
            total_records=count,
            index_key=index_info.key,
            meta=dict(meta),
        )
        return copy, new, events

    async def _pointer(
        self, job: Job, locator: ResultLocator, policy: CapturePolicy
    ) -> tuple[StoredCopy, bool]:
        url = locator.url
        needs_key = locator.needs_provider_key
        if url is None:
            payload = await self._call(self.adapters[job.provider].fetch_result(job.upstream_id))
            if not isinstance(payload, ResultPointer):
                raise CaptureFailed("result_malformed", "the provider's result has no pointer")
            url, needs_key = payload.url, payload.needs_provider_key
        fetcher = self.fetchers[job.provider]
        key = self._key(job, "bin")
        try:
            async with fetcher.open(
                url,
                provider_host=self.provider_hosts.get(job.provider) or None,
                key_header=self.key_headers.get(job.provider)
                if self.provider_hosts.get(job.provider)
                else None,
            ) as stream:
                content_type = stream.content_type or "application/json"
                async with self._writing(key) as writer:
                    self._following[job.id] = Following(writer, content_type, stream.content_length)
                    self.on_stream(job.id)
                    try:
                        async for chunk in stream.iter_chunks():
                            if writer.size + len(chunk) > policy.max_bytes:
                                raise ResultTooLarge(
                                    f"the result is larger than the {policy.max_bytes}-byte "
                                    "capture cap"
                                )
                            await writer.write(chunk)
                        info = await writer.commit()
                    finally:
                        self._following.pop(job.id, None)
        except (AdapterError, BlobError) as error:
            raise _failure(error) from error
        now = self.clock()
        copy = StoredCopy(
            kind=ResultKind.POINTER,
            size=info.size,
            sha256=info.sha256,
            stored_at=now,
            expires_at=expiry(policy, now),
            key=info.key,
            content_type=content_type,
        )
        # A proxy pointer (one that needs the key) may be single-use: assume the capture spent it.
        return copy, needs_key

    # -- helpers -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _writing(self, key: str) -> AsyncIterator[BlobWriter]:
        try:
            writer = self.blobs.writer(key)
        except (BlobError, OSError) as error:
            raise CaptureFailed(
                "vault_unavailable", f"the vault cannot be written: {error}"
            ) from error
        try:
            yield writer
        except BlobError as error:
            raise CaptureFailed("vault_unavailable", str(error)) from error
        finally:
            await writer.abort()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except AdapterError as error:
            raise _failure(error) from error

    async def _token(self, provider: str) -> None:
        """A rate-limit token for each extra page: captures spend the provider's quota too."""
        if self.quota is None:
            return
        poll = self.polls.get(provider)
        pause = 1.0 / poll.rate_per_second if poll else 0.05
        # The bucket refills with time, not with an event: waiting a token's worth is the signal.
        while await self.quota.acquire(provider, 1, now=self.clock()) < 1:  # noqa: ASYNC110
            await asyncio.sleep(pause)


def _failure(error: Exception) -> CaptureFailed:
    if isinstance(error, ResultExpired):
        return CaptureFailed(ResultExpired.code, error.message, final=True)
    if isinstance(error, (ResultTooLarge, UnsafeURL)):
        return CaptureFailed(error.code, error.message, final=True)
    if isinstance(error, AdapterError):
        return CaptureFailed(error.code, error.message)
    return CaptureFailed("vault_unavailable", str(error))
