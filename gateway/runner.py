"""The poll loop: one scheduler for every tracked job.

Due times live in the store. One loop claims due jobs in batches, polls them through their
adapters (bounded per provider by a concurrency limit, a token bucket and a circuit breaker), folds
each report in with the pure rules of ``gateway.jobs`` and ``gateway.policy``, and writes every
change of a tick in one transaction. There is no task per tracked job: a task exists only while an
upstream call is in flight, so a million tracked jobs cost rows in the store, not coroutines.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from adapters.base import (
    Adapter,
    AdapterError,
    JobError,
    NotFound,
    RateLimited,
    ResultKind,
    ResultPage,
    StatusReport,
)
from adapters.http import utcnow
from gateway.events import EventHub, wait_set
from gateway.jobs import Applied, Job, apply_report
from gateway.policy import (
    Breaker,
    Bucket,
    Circuit,
    PollPolicy,
    breaker_allows,
    breaker_record,
    breaker_retry_in,
    error_delay,
    estimate_eta,
    next_delay,
    take_token,
)
from gateway.states import JobState, Refused
from gateway.store.base import Event, JobStore, NewEvent

log = structlog.get_logger("jobgate.runner")

RECORDS_PAGE = 100
"""Partial-result records fetched per poll, at most: also the most one ``records`` event holds."""


class RunnerObserver(Protocol):
    """What the runner tells the metrics layer. Every method is cheap and never raises."""

    def transition(self, provider: str, src: JobState, dst: JobState) -> None: ...

    def anomaly(self, provider: str, refused: Refused) -> None: ...

    def finished(self, job: Job, now: datetime) -> None: ...

    def rate_limited(self, provider: str, wait: float) -> None: ...

    def circuit(self, provider: str, circuit: Circuit) -> None: ...

    def retry_after(self, provider: str, seconds: float) -> None: ...


@dataclass
class _Provider:
    adapter: Adapter
    policy: PollPolicy
    semaphore: asyncio.Semaphore
    bucket: Bucket
    breaker: Breaker = field(default_factory=Breaker)


def job_events(before: Job | None, applied: Applied) -> list[NewEvent]:
    """The event-log entries a change deserves: a state change, or a step of progress."""
    job = applied.job
    # Most polls change nothing visible: decide before building the snapshot, which is not free.
    if before is None:
        return [NewEvent("created", job.public())]
    if applied.state_changed:
        return [NewEvent("state", {**job.public(), "from": before.state.value})]
    if applied.progress_changed or job.result != before.result:
        return [NewEvent("progress", job.public())]
    return []


class Runner:
    def __init__(
        self,
        store: JobStore,
        adapters: Mapping[str, Adapter],
        policies: Mapping[str, PollPolicy],
        hub: EventHub,
        *,
        tick: float = 0.02,
        batch: int = 500,
        lease: float = 120.0,
        clock: Callable[[], datetime] = utcnow,
        mono: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        observer: RunnerObserver | None = None,
        push_expected: Callable[[Job], bool] | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.tick = tick
        self.batch = batch
        self.lease = timedelta(seconds=lease)
        self.clock = clock
        self.mono = mono
        self.rand = rand
        self.observer = observer
        self.push_expected = push_expected
        self.providers = {
            name: _Provider(
                adapter=adapter,
                policy=policies[name],
                semaphore=asyncio.Semaphore(policies[name].concurrency),
                bucket=Bucket(float(policies[name].burst), mono()),
            )
            for name, adapter in adapters.items()
        }
        self._wake = asyncio.Event()
        self._pending: list[tuple[Job, Job | None, list[NewEvent], Applied | None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.status_calls: dict[str, int] = dict.fromkeys(adapters, 0)

    def circuits(self) -> dict[str, str]:
        return {name: p.breaker.circuit.value for name, p in self.providers.items()}

    # -- control -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-read due times now (a job was added, or a callback asked for a refresh)."""
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled. Nothing an upstream does ends this loop."""
        log.info("runner.started", providers=sorted(self.providers))
        try:
            while True:
                await self.step()
                await self._sleep()
        finally:
            for task in list(self._inflight):
                task.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await self._flush()

    async def step(self) -> int:
        """One tick: claim what is due, start its polls, write what finished. Returns claims."""
        now = self.clock()
        claimed: list[Job] = []
        room = self.batch - len(self._inflight)
        if room > 0:
            claimed = await self.store.claim_due(now, limit=room, lease_until=now + self.lease)
        for job in claimed:
            task = asyncio.create_task(self._poll_guarded(job))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        await self._flush()
        return len(claimed)

    async def drain(self) -> None:
        """Wait for every poll in flight and write its outcome (tests, and shutdown)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        await self._flush()

    async def _sleep(self) -> None:
        if self._pending or self._wake.is_set():
            self._wake.clear()
            await asyncio.sleep(self.tick if self._pending else 0)
            return
        due = await self.store.next_due()
        now = self.clock()
        delay = 1.0 if due is None else (due - now).total_seconds()
        # Coalesce: never wake more often than a tick, and re-check at least every second.
        delay = min(1.0, max(self.tick, delay))
        # Re-checked after the await above: a poll that finished meanwhile has left _inflight for
        # _pending, and its outcome must be written within a tick, not at the next due time.
        if self._inflight or self._pending:
            delay = self.tick
        # wait_set, not wait_for: Python 3.11's wait_for can swallow the shutdown's cancellation.
        await wait_set(self._wake, delay)

    async def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        results = await self.store.save_many([(job, events) for job, _, events, _ in pending])
        published: list[Event] = []
        now = self.clock()
        for (job, before, _, applied), saved in zip(pending, results, strict=True):
            if saved is None:
                # A user action (cancel, continue, delete) wrote first: its version stands.
                log.info(
                    "runner.write_fenced",
                    job_id=job.id,
                    provider=job.provider,
                    state=job.state.value,
                )
                continue
            published.extend(saved[1])
            self._observe(job, before, applied, now)
        self.hub.publish(published)

    def _observe(
        self, job: Job, before: Job | None, applied: Applied | None, now: datetime
    ) -> None:
        if self.observer is None or before is None:
            return
        if job.state != before.state:
            self.observer.transition(job.provider, before.state, job.state)
            if job.finished:
                self.observer.finished(job, now)
        if applied is not None and applied.refused is not None:
            self.observer.anomaly(job.provider, applied.refused)

    # -- one poll ------------------------------------------------------------------------------

    async def _poll_guarded(self, job: Job) -> None:
        # Each poll runs in its own task, so this binding reaches whatever the poll logs (the
        # adapters included) and nothing else.
        bound = structlog.contextvars.bound_contextvars(
            job_id=job.id, provider=job.provider, state=job.state.value
        )
        try:
            with bound:
                await self.poll(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "runner.poll_crashed", job_id=job.id, provider=job.provider, state=job.state.value
            )
            provider = self.providers.get(job.provider)
            delay = provider.policy.error_max_interval if provider else 300.0
            self._reschedule(job, delay, failures=job.failures + 1)

    async def poll(self, job: Job) -> None:
        """Poll one claimed job and queue its new version for the next flush."""
        now = self.clock()
        provider = self.providers.get(job.provider)
        if provider is None:
            self._finish_with_error(job, "provider_unavailable", "provider is not configured", now)
            return
        if now >= job.deadline_at:
            self._finish_with_error(
                job, "poll_deadline_exceeded", "the job did not finish before its deadline", now
            )
            return
        policy = provider.policy
        mono = self.mono()
        before = provider.breaker.circuit
        provider.breaker, allowed = breaker_allows(policy, provider.breaker, mono)
        if provider.breaker.circuit is not before:
            self._circuit_changed(job.provider, provider.breaker.circuit)
        if not allowed:
            # Half open: one probe is out; the others wait a poll interval, not a tick, so they
            # are not rewritten every 20 ms while the probe is in flight.
            wait = breaker_retry_in(policy, provider.breaker, mono) or policy.min_interval
            self._reschedule(job, wait + self.tick)
            return
        provider.bucket, wait = take_token(policy, provider.bucket, mono)
        if wait > 0:
            if self.observer:
                self.observer.rate_limited(job.provider, wait)
            await asyncio.sleep(wait)
        async with provider.semaphore:
            self.status_calls[job.provider] += 1
            try:
                report = await provider.adapter.fetch_status(job.upstream_id)
            except AdapterError as error:
                self._record_breaker(provider, job.provider, ok=not _provider_fault(error))
                self._on_error(job, provider.policy, error)
                return
            except Exception:
                # A crash (an adapter bug) gives no verdict, but a half-open probe must still end:
                # left ``probing``, the circuit would refuse every later call for good. Count it as
                # a failed probe so the circuit reopens and probes again after the cooldown.
                if provider.breaker.circuit is Circuit.HALF_OPEN:
                    self._record_breaker(provider, job.provider, ok=False)
                raise
        self._record_breaker(provider, job.provider, ok=True)
        records = await self._partial_records(job, provider, report)
        self._on_report(job, provider.policy, report, records)

    async def _partial_records(
        self, job: Job, provider: _Provider, report: StatusReport
    ) -> ResultPage | None:
        """The page holding the partial-result records after ``job.records_seen``: at most one
        extra call per poll, only while the provider says records are accumulating (their count
        can grow only then), and never at the cost of waiting for a rate-limit token."""
        locator = report.result
        if (
            locator is None
            or not locator.partial
            or locator.kind is not ResultKind.PAGED
            or not provider.adapter.capabilities.partial_results
        ):
            return None
        bucket, wait = take_token(provider.policy, provider.bucket, self.mono())
        if wait > 0:
            return None  # status polls need the token more; the records come on a later poll
        provider.bucket = bucket
        page = job.records_seen // RECORDS_PAGE + 1
        async with provider.semaphore:
            try:
                result = await provider.adapter.fetch_result(
                    job.upstream_id, page=page, page_size=RECORDS_PAGE
                )
            except AdapterError as error:
                # The records are a bonus on top of the poll: a failure changes nothing else.
                log.info("runner.records_skipped", job_id=job.id, code=error.code)
                return None
        return result if isinstance(result, ResultPage) else None

    def _record_breaker(self, provider: _Provider, name: str, *, ok: bool) -> None:
        before = provider.breaker.circuit
        provider.breaker = breaker_record(provider.policy, provider.breaker, ok=ok, now=self.mono())
        if provider.breaker.circuit is not before:
            self._circuit_changed(name, provider.breaker.circuit)

    def _circuit_changed(self, name: str, circuit: Circuit) -> None:
        log.warning("runner.circuit", provider=name, circuit=circuit.value)
        if self.observer:
            self.observer.circuit(name, circuit)

    def _on_report(
        self,
        job: Job,
        policy: PollPolicy,
        report: StatusReport,
        records: ResultPage | None = None,
    ) -> None:
        now = self.clock()
        applied = apply_report(job, report, now)
        new = applied.job
        if applied.refused is not None:
            log.warning(
                "runner.anomaly",
                job_id=job.id,
                provider=job.provider,
                state=job.state.value,
                anomaly=applied.refused.anomaly.value,
                detail=applied.refused.describe(),
            )
        if new.finished:
            new = replace(new, next_poll_at=None, eta=None)
        else:
            if self.push_expected is not None and self.push_expected(new):
                # The provider will push the end (a callback polls the job at once), so polling is
                # only the safety net: at the slowest cadence the policy allows.
                policy = replace(policy, min_interval=policy.max_interval)
            eta = estimate_eta(new.progress, new.started_at, now) if policy.eta_aware else None
            delay = next_delay(
                policy,
                now=now,
                unchanged_polls=new.unchanged_polls,
                rand=self.rand(),
                eta=eta,
                hints=report.hints,
            )
            new = replace(new, eta=eta, next_poll_at=now + timedelta(seconds=delay))
        if new.state != job.state:
            log.info(
                "job.transition",
                job_id=job.id,
                provider=job.provider,
                src=job.state.value,
                state=new.state.value,
                native_status=new.native_status,
            )
        # The snapshot is the job as it is saved (its next poll and ETA are decided only above),
        # so a finished job's event never shows a lease as its next poll.
        events = job_events(job, replace(applied, job=new))
        if records is not None:
            new, events = _add_records(new, events, records)
        self._pending.append((new, job, events, applied))

    def _on_error(self, job: Job, policy: PollPolicy, error: AdapterError) -> None:
        now = self.clock()
        if isinstance(error, NotFound):
            misses = job.not_found + 1
            if misses >= policy.not_found_limit:
                self._finish_with_error(
                    job,
                    "upstream_not_found",
                    f"the provider answered 404 for this job {misses} times in a row",
                    now,
                )
                return
            delay = error_delay(policy, failures=misses, rand=self.rand())
            self._reschedule(job, delay, not_found=misses)
            return
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        if retry_after is not None and self.observer:
            self.observer.rate_limited(job.provider, retry_after)
            self.observer.retry_after(job.provider, retry_after)
        failures = job.failures + 1
        delay = error_delay(policy, failures=failures, rand=self.rand(), retry_after=retry_after)
        log.warning(
            "runner.upstream_error",
            job_id=job.id,
            provider=job.provider,
            state=job.state.value,
            code=error.code,
            error=error.message,
            retry_in=round(delay, 3),
        )
        self._reschedule(job, delay, failures=failures)

    def _reschedule(self, job: Job, delay: float, **changes: int) -> None:
        now = self.clock()
        new = job.bump(now, next_poll_at=now + timedelta(seconds=delay), **changes)
        self._pending.append((new, None, [], None))

    def _finish_with_error(self, job: Job, code: str, message: str, now: datetime) -> None:
        if job.finished:
            # A succeeded job polled once more after a continue: stop, but never fail it.
            self._pending.append((job.bump(now, next_poll_at=None, action=None), None, [], None))
            return
        new = job.bump(
            now,
            state=JobState.FAILED,
            error=JobError(code, message),
            finished_at=now,
            next_poll_at=None,
            eta=None,
        )
        log.info(
            "job.transition",
            job_id=job.id,
            provider=job.provider,
            src=job.state.value,
            state=new.state.value,
            code=code,
        )
        applied = Applied(new, state_changed=True, progress_changed=False)
        self._pending.append((new, job, job_events(job, applied), applied))


def _add_records(job: Job, events: list[NewEvent], page: ResultPage) -> tuple[Job, list[NewEvent]]:
    """A ``records`` event for the records of ``page`` that no earlier event carried."""
    first = (page.page - 1) * page.page_size
    if first > job.records_seen:
        return job, events  # a page past the ones seen: it would leave a gap
    fresh = page.records[job.records_seen - first :][:RECORDS_PAGE]
    if not fresh:
        return job, events
    event = NewEvent(
        "records",
        {
            "offset": job.records_seen,
            "count": len(fresh),
            "total_records": page.total_records,
            "partial": page.partial,
            "records": fresh,
        },
    )
    return replace(job, records_seen=job.records_seen + len(fresh)), [*events, event]


def _provider_fault(error: AdapterError) -> bool:
    """Faults that say the provider is unwell, as opposed to this one job (404) or our quota."""
    return error.code in {"upstream_unavailable", "upstream_malformed", "upstream_auth_rejected"}
