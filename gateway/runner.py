"""The poll loop: one scheduler for every tracked job.

Due times live in the store. One leased loop (``gateway.leased``) claims due jobs in batches, no
more of each provider than its quota lets go out at once (concurrency, rate tokens, the circuit),
polls them through their adapters, folds each report in with the pure rules of ``gateway.jobs``
and ``gateway.policy``, and commits every change of a tick in one transaction through the
:class:`~gateway.writer.JobWriter`. There is no task per tracked job: a task exists only while an
upstream call is in flight, so a million tracked jobs cost rows in the store, not coroutines.

A clean stop hands every claimed job back (due now), so another replica, or this one restarted,
polls it at once rather than after its lease.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final, Protocol

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
from gateway.cadence import DurationBook
from gateway.capturer import Capturer, Work
from gateway.events import EventHub
from gateway.jobs import (
    CALLBACK,
    Cadence,
    Job,
    NewEvent,
    apply_report,
    job_events,
    note_anomaly,
    transition,
)
from gateway.leased import LeasedLoop, LeasedWork
from gateway.policy import (
    Breaker,
    Circuit,
    PollPolicy,
    breaker_allows,
    breaker_record,
    breaker_retry_in,
    error_delay,
    estimate_eta,
    expected_lag,
    hint_delay,
    learned_delay,
    next_delay,
    obey_hints,
    refused_delay,
)
from gateway.push import PushWatch
from gateway.quota import LocalQuota, Quota
from gateway.states import JobState
from gateway.store.base import JobStore
from gateway.writer import ChangeObserver, JobWriter, Update

log = structlog.get_logger("jobgate.runner")

RECORDS_PAGE = 100
"""Partial-result records fetched per poll, at most: also the most one ``records`` event holds."""


class RunnerObserver(ChangeObserver, Protocol):
    """What the runner tells the metrics layer. Every method is cheap and never raises."""

    def rate_limited(self, provider: str, wait: float) -> None: ...

    def circuit(self, provider: str, circuit: Circuit) -> None: ...

    def retry_after(self, provider: str, seconds: float) -> None: ...

    def callback_missed(self, provider: str) -> None: ...


@dataclass
class _Provider:
    adapter: Adapter
    policy: PollPolicy
    inflight: int = 0
    breaker: Breaker = field(default_factory=Breaker)


def process_name() -> str:
    """Who holds a lease, for operators reading the store: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
        rand: Callable[[], float] | None = None,
        observer: RunnerObserver | None = None,
        push_expected: Callable[[Job], bool] | None = None,
        writer: JobWriter | None = None,
        quota: Quota | None = None,
        owner: str | None = None,
        capturer: Capturer | None = None,
        cadence: DurationBook | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.tick = tick
        self.batch = batch
        self.lease = timedelta(seconds=lease)
        self.clock = clock
        self.mono = mono
        # Its own generator, not the random module's shared one: jitter drawn here must not move
        # anyone else's sequence (nor be moved by it).
        self.rand = rand if rand is not None else random.Random().random
        self.observer = observer
        self.push_expected = push_expected
        self.writer = writer or JobWriter(store, hub, observer=observer)
        self.quota: Quota = quota or LocalQuota(policies, mono)
        self.owner = owner or process_name()
        self.capturer = capturer
        self.cadence = cadence or DurationBook(store, policies)
        self.push_watch = PushWatch(on_miss=observer.callback_missed if observer else None)
        self.providers = {
            name: _Provider(adapter=adapter, policy=policies[name])
            for name, adapter in adapters.items()
        }
        self._pending: list[Update] = []
        self.status_calls: dict[str, int] = dict.fromkeys(adapters, 0)
        self.loop: LeasedLoop[Job] = LeasedLoop(
            LeasedWork(
                name="polls",
                claim=self._claim,
                run=self._poll_guarded,
                hand_back=self._hand_back,
                next_due=store.next_due,
                clock=clock,
                flush=self._flush,
                pending=lambda: bool(self._pending),
            ),
            capacity=batch,
            tick=tick,
        )

    def circuits(self) -> dict[str, str]:
        return {name: p.breaker.circuit.value for name, p in self.providers.items()}

    # -- control -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-read due times now (a job was added, or a callback asked for a refresh)."""
        self.loop.wake()

    async def run(self) -> None:
        """Loop until cancelled. Nothing an upstream does ends this loop; a stop hands back the
        jobs whose polls it interrupts."""
        log.info("runner.started", providers=sorted(self.providers), owner=self.owner)
        await self.loop.run()

    async def step(self) -> int:
        """One tick: claim what is due, start its polls, write what finished. Returns claims."""
        return await self.loop.step()

    async def drain(self) -> None:
        """Wait for every poll in flight and write its outcome (tests)."""
        await self.loop.drain()

    async def stop(self) -> None:
        """Interrupt the polls in flight, hand their jobs back and write what finished."""
        await self.loop.stop()

    # -- the leased loop's parts ---------------------------------------------------------------

    async def _claim(self, room: int) -> list[Job]:
        """Claim no more of each provider than can be polled at once: within its concurrency and
        its open circuit here, and within the tokens (and, shared, the deployment's concurrency)
        its quota grants now."""
        mono = self.mono()
        wants: dict[str, int] = {}
        for name, provider in self.providers.items():
            want = min(room, provider.policy.concurrency - provider.inflight)
            if want <= 0 or breaker_retry_in(provider.policy, provider.breaker, mono) > 0:
                continue
            if provider.breaker.circuit is not Circuit.CLOSED:
                want = 1  # a half-open circuit lets one probe through, no more
            wants[name] = want
            room -= want
        if not wants:
            return []
        now = self.clock()
        claimed = await self.quota.claim(
            self.store, now, wants, lease_until=now + self.lease, owner=self.owner
        )
        for job in claimed:
            self.providers[job.provider].inflight += 1
        return claimed

    async def _hand_back(self, jobs: Sequence[Job]) -> None:
        """Make interrupted polls' jobs due now. A job written meanwhile (a user action) keeps
        that write: the fence drops this one."""
        now = self.clock()
        for job in jobs:
            self._release(job)
        await self.writer.save([Update(job, job.due_now(now), events=()) for job in jobs], now)

    def _release(self, job: Job) -> None:
        provider = self.providers.get(job.provider)
        if provider is not None and provider.inflight > 0:
            provider.inflight -= 1

    async def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        saved = await self.writer.save(pending, self.clock())
        for update, job in zip(pending, saved, strict=True):
            if (
                job is not None
                and self.capturer is not None
                and update.before.vault.copy is not None
            ):
                await self.capturer.forget(update.before, job)
            if job is None:
                # A user action (cancel, continue, delete) wrote first: its version stands.
                log.info(
                    "runner.write_fenced",
                    job_id=update.after.id,
                    provider=update.after.provider,
                    state=update.after.state.value,
                )

    # -- one poll ------------------------------------------------------------------------------

    async def _poll_guarded(self, job: Job) -> None:
        # Each poll runs in its own task (the leased loop makes one per row), in a copy of the
        # loop's context: this binding reaches whatever the poll logs (the adapters included) and
        # nothing else, and goes with the task, so nothing needs to unbind it.
        structlog.contextvars.bind_contextvars(
            job_id=job.id, provider=job.provider, state=job.state.value
        )
        try:
            await self.poll(job)
        except asyncio.CancelledError:
            # Not on the task's cancellation: the hand-back releases those, so they are counted
            # once.
            if not _cancelling():
                self._release(job)
            raise
        except Exception:
            log.exception(
                "runner.poll_crashed", job_id=job.id, provider=job.provider, state=job.state.value
            )
            provider = self.providers.get(job.provider)
            delay = provider.policy.error_max_interval if provider else 300.0
            self._reschedule(job, delay, failures=job.failures + 1)
        self._release(job)

    async def poll(self, job: Job) -> None:
        """Poll one claimed job and queue its new version for the next flush."""
        now = self.clock()
        provider = self.providers[job.provider]  # claims name only configured providers
        if job.finished and not job.polling:
            if await self._vault_work(job, now):
                return
        elif now >= job.deadline_at:
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
        # The claim took this poll's token and its place within the provider's concurrency.
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
        if provider.breaker != _FRESH:  # a success leaves a fresh breaker: most polls have one
            self._record_breaker(provider, job.provider, ok=True)
        locator = report.result
        records = (
            await self._partial_records(job, provider, report)
            if locator is not None and locator.partial
            else None
        )
        update = self._on_report(job, provider.policy, report, records)
        if self.capturer is not None and self.capturer.at_finish(update.after):
            update = await self._capture_at_finish(update)
        self._pending.append(update)

    async def _capture_at_finish(self, update: Update) -> Update:
        """Capture a paged result in the poll that saw it complete, and save both as one version:
        the success, the last ``records`` events and the stored copy arrive together."""
        assert self.capturer is not None
        done, records = await self.capturer.capture(update.after)
        done = replace(done, version=update.after.version)
        return Update(
            update.before,
            done,
            [*job_events(update.before, done), *records],
            refused=update.refused,
        )

    async def _vault_work(self, job: Job, now: datetime) -> bool:
        """Do what the vault owes a finished job (a capture, the end of a retention). False when
        what it owes is a status poll (watching for the provider's ``expired``)."""
        work = self.capturer.work(job, now) if self.capturer is not None else Work.NONE
        if work is Work.WATCH:
            return False
        if work is Work.CAPTURE:
            assert self.capturer is not None
            new, records = await self.capturer.capture(job)
            self._pending.append(Update(job, new, [*job_events(job, new), *records]))
        elif work is Work.RETIRE:
            assert self.capturer is not None
            self._pending.append(Update(job, await self.capturer.retire(job)))
        else:
            self._pending.append(Update(job, job.stopped(now), events=()))
        return True

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
        if await self.quota.acquire(job.provider, 1, now=self.clock()) < 1:
            return None  # status polls need the token more; the records come on a later poll
        page = job.records_seen // RECORDS_PAGE + 1
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
    ) -> Update:
        now = self.clock()
        applied = apply_report(job, report, now)
        new = applied.job
        refused = applied.refused
        if refused is not None:
            # Once per job and distinct (anomaly, native status): a provider that keeps answering
            # the same thing would otherwise write a line per poll until the job's deadline. The
            # metric still counts every refusal (in the writer), so the rate stays visible.
            new, first = note_anomaly(new, refused)
            if first:
                log.warning(
                    "runner.anomaly",
                    job_id=job.id,
                    provider=job.provider,
                    state=job.state.value,
                    anomaly=refused.anomaly.value,
                    native_status=refused.native_status,
                    detail=refused.describe(),
                )
        if self.capturer is not None:
            new = self.capturer.settle(job, new, now)
        if not new.finished:
            new = self._schedule(new, policy, report, now)
        elif not job.finished:
            self._learn(job, new, report, now)
        # The snapshot is the job as it is saved (its next poll and ETA are decided only above),
        # so a finished job's event never shows a lease as its next poll.
        events = job_events(job, new)
        if records is not None:
            new, events = _add_records(new, events, records)
        return Update(job, new, events, refused=applied.refused)

    def _schedule(self, job: Job, policy: PollPolicy, report: StatusReport, now: datetime) -> Job:
        """``job`` with its next poll decided: the push safety net, the learned schedule or the
        provider's guidance, then the hints and the refusals' wait (later wins)."""
        asked = hint_delay(report.hints, now)
        eta = estimate_eta(job.progress, job.started_at, now) if policy.eta_aware else None
        draw = self.rand()
        called_back = job.cadence is not None and job.cadence.schedule == CALLBACK
        # After a callback that said the job ended, a poll that still sees it running meets a
        # provider whose status lags behind its own webhook: its normal cadence, not the safety
        # net (the callback will not come again).
        if not called_back and self._push_expected(job) and self.push_watch.trusted(job.provider):
            # The provider will push the end (a callback polls the job at once), so polling is
            # only the safety net: at the slowest cadence the policy allows.
            schedule, delay = "push", obey_hints(policy, policy.longest_wait, asked)
        else:
            key = self.cadence.key(job.provider, job.request, report.job_type)
            fitted = self.cadence.schedule(job.provider, key)
            if fitted is not None:
                dist, density = fitted
                schedule = "learned"
                delay = learned_delay(
                    policy,
                    dist,
                    elapsed=(now - (job.continued_at or job.created_at)).total_seconds(),
                    eta_in=None if eta is None else (eta - now).total_seconds(),
                    fraction=job.progress.fraction,
                    asked=asked,
                    density=density,
                )
            else:
                schedule = "guidance"
                delay = next_delay(
                    policy,
                    now=now,
                    unchanged_polls=job.unchanged_polls,
                    rand=draw,
                    eta=eta,
                    hints=report.hints,
                )
        # Later than anything above may ask, a provider's hint included: it says "not before".
        delay = max(delay, refused_delay(policy, refusals=job.refusals, rand=draw))
        why = Cadence(schedule, expected_lag(delay))
        return job.scheduled(now + timedelta(seconds=delay), eta, why)

    def first_poll(self, job: Job) -> tuple[float, Cadence]:
        """When a new job's first poll is due, and why. A job whose end the provider will push
        waits for the safety net from the start (the push, not a poll, should see it begin or
        end); one whose key's durations are learned follows the learned schedule from age zero (a
        12-minute job is not polled at one minute); any other waits the policy's ``first_delay``.
        """
        policy = self.providers[job.provider].policy
        if self._push_expected(job) and self.push_watch.trusted(job.provider):
            return policy.longest_wait, Cadence("push", expected_lag(policy.longest_wait))
        key = self.cadence.key(job.provider, job.request, None)
        fitted = self.cadence.schedule(job.provider, key)
        if fitted is None:
            return policy.first_delay, Cadence("guidance", expected_lag(policy.first_delay))
        dist, density = fitted
        delay = learned_delay(policy, dist, elapsed=0.0, density=density)
        return delay, Cadence("learned", expected_lag(delay))

    def _push_expected(self, job: Job) -> bool:
        return self.push_expected is not None and self.push_expected(job)

    def _learn(self, before: Job, after: Job, report: StatusReport, now: datetime) -> None:
        """Now that a poll saw ``before`` end upstream (``after``): teach the cadence how long it
        took, where that can be told, and tell the push watch whether a callback said so first.

        Only the provider's own ends count (succeeded, failed): a cancel is a client's act, and
        an expiry or a verdict of jobgate's says nothing of a job's length. The length is the
        provider's own times where it gives both ends; else jobgate's view of the job's life, the
        detection time less the expected lag of the wait that found the end, and only where
        that wait's lag can be told (``LEARNABLE``). A safety-net wait, a handed-back lease, an
        adopted job (jobgate did not see it start) or a continuation (not a whole job) would
        teach a length the job did not have.
        """
        if after.state not in (JobState.SUCCEEDED, JobState.FAILED):
            return
        why = before.cadence
        pushed = why is not None and why.schedule in (CALLBACK, "push")
        if why is not None and pushed and self._push_expected(before):
            self.push_watch.ended(before.provider, by_callback=why.schedule == CALLBACK)
        if before.continued_at is not None:
            return
        times = report.times
        if times.created_at is not None and times.finished_at is not None:
            seconds = (times.finished_at - times.created_at).total_seconds()
        elif before.request is None or why is None or why.schedule not in LEARNABLE:
            return
        else:
            seconds = (now - before.created_at).total_seconds() - why.expected_lag
        if seconds >= 0:  # also refuses NaN: a clock gone backwards teaches nothing
            key = self.cadence.key(before.provider, before.request, report.job_type)
            self.cadence.observe(before.provider, key, seconds)

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

    def _reschedule(
        self,
        job: Job,
        delay: float,
        *,
        failures: int | None = None,
        not_found: int | None = None,
    ) -> None:
        now = self.clock()
        at = now + timedelta(seconds=delay)
        new = job.rescheduled(now, at, failures=failures, not_found=not_found)
        new = replace(new, cadence=Cadence("retry", expected_lag(delay)))
        self._pending.append(Update(job, new, events=()))

    def _finish_with_error(self, job: Job, code: str, message: str, now: datetime) -> None:
        if job.finished:
            # A succeeded job polled once more after a continue: stop, but never fail it.
            self._pending.append(Update(job, job.stopped(now), events=()))
            return
        failed = transition(job, JobState.FAILED, now, error=JobError(code, message))
        self._pending.append(Update(job, failed))


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


LEARNABLE: Final = frozenset({"learned", "guidance", "retry", CALLBACK})
"""Schedules whose wait's expected lag, taken from the detection time, gives a job's length. A
retry's wait is one: it follows a refused or failed call, so the end may lie a little before it,
a bias of a few seconds a provider that often answers 429 must accept to teach anything at all.
The safety net's wait (``push``) is not: it is as long as the schedule allows."""

_FRESH: Final = Breaker()
"""A closed circuit with no failures counted: what every successful call leaves."""


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _provider_fault(error: AdapterError) -> bool:
    """Faults that say the provider is unwell, as opposed to this one job (404) or our quota."""
    return error.code in {"upstream_unavailable", "upstream_malformed", "upstream_auth_rejected"}
