"""Use cases: submit, adopt, get, wait, list, cancel, rerun, continue, delete, result.

The web layer parses and renders; this module decides. It talks to adapters (one upstream call per
use case at most), the store and the event hub, and raises the domain errors of
``gateway.errors``. A client's read never causes an upstream call, except fetching a result that
lives upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

import orjson
import structlog

from adapters.base import (
    JSON,
    Adapter,
    AdapterError,
    InlineResult,
    MalformedResponse,
    ResultKind,
    ResultPage,
    ResultPointer,
    StatusReport,
    Submission,
    UpstreamUnavailable,
)
from adapters.http import utcnow
from gateway.callbacks import callback_url, with_callback
from gateway.errors import (
    ActionNotSupported,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidState,
    JobNotFound,
    ResultNotReady,
    UnknownProvider,
    UpstreamProblem,
)
from gateway.events import EventHub, wait_set
from gateway.jobs import Job, apply_report, new_id, transition
from gateway.policy import PollPolicy
from gateway.states import Action, IllegalTransition, JobState, is_allowed
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyConflict,
    IdempotencyInFlight,
    JobFilter,
    JobStore,
    Page,
)
from gateway.writer import JobWriter, Update

log = structlog.get_logger("jobgate.service")
T = TypeVar("T")

# Errors after which the upstream may or may not have created a job: the idempotent answer is kept
# so that a retry with the same key replays it instead of risking a second upstream job.
_AMBIGUOUS = (UpstreamUnavailable, MalformedResponse)


@dataclass(frozen=True, slots=True)
class Answer:
    """A stored-or-fresh response to an idempotent submit."""

    status: int
    body: Mapping[str, JSON]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class JsonResult:
    body: Mapping[str, JSON]


@dataclass(frozen=True, slots=True)
class RedirectResult:
    url: str


@dataclass(frozen=True, slots=True)
class StreamResult:
    """A large-result pointer to stream through; the key goes only to the provider's own host."""

    url: str
    provider: str
    provider_host: str
    key_header: tuple[str, str] | None


ResultAnswer = JsonResult | RedirectResult | StreamResult


@dataclass(frozen=True, slots=True)
class SubmitCommand:
    provider: str
    request: Mapping[str, JSON] | None = None
    upstream_id: str | None = None
    labels: Mapping[str, str] | None = None
    callback_url: str | None = None


def fingerprint(body: Mapping[str, JSON]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class JobService:
    def __init__(
        self,
        store: JobStore,
        adapters: Mapping[str, Adapter],
        policies: Mapping[str, PollPolicy],
        hub: EventHub,
        *,
        wake: Callable[[], None] = lambda: None,
        key_headers: Mapping[str, tuple[str, str]] | None = None,
        provider_hosts: Mapping[str, str] | None = None,
        public_base_url: str | None = None,
        callback_secrets: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        writer: JobWriter | None = None,
        check_callback: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.writer = writer or JobWriter(store, hub)
        self.adapters = adapters
        self.policies = policies
        self.hub = hub
        self.wake = wake
        self.key_headers = dict(key_headers or {})
        # The hosts that may receive a provider's key (its own API host), from the configuration.
        self.provider_hosts = dict(provider_hosts or {})
        self.public_base_url = public_base_url
        self.callback_secrets = dict(callback_secrets or {})
        self.clock = clock
        # Vets a client's callback_url at submit with the delivery rules (raises InvalidRequest).
        self.check_callback = check_callback

    # -- lookups -------------------------------------------------------------------------------

    def adapter(self, provider: str) -> Adapter:
        adapter = self.adapters.get(provider)
        if adapter is None:
            known = ", ".join(sorted(self.adapters))
            raise UnknownProvider(f"unknown provider {provider!r}; known providers: {known}")
        return adapter

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def list(self, where: JobFilter, *, limit: int, cursor: str | None) -> Page:
        return await self.store.list_jobs(where, limit=limit, cursor=cursor)

    async def wait(self, job_id: str, seconds: float) -> Job:
        """The job as soon as it visibly changes, or as it is after ``seconds``."""
        with self.hub.listen(job_id) as changed:
            job = await self.get(job_id)
            if seconds <= 0 or job.finished:
                return job
            seen = _visible(job)
            deadline = self.clock() + timedelta(seconds=seconds)
            while True:
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    return job
                await wait_set(changed, left)
                job = await self.get(job_id)
                if _visible(job) != seen:
                    return job

    # -- submit and adopt ----------------------------------------------------------------------

    async def submit(self, command: SubmitCommand, idempotency_key: str | None) -> Answer:
        adapter = self.adapter(command.provider)
        if command.request is not None and not adapter.capabilities.submit:
            raise ActionNotSupported(
                f"{command.provider} jobs are created elsewhere; adopt one with upstream_id",
                action="submit",
            )
        if command.callback_url is not None and self.check_callback is not None:
            await self.check_callback(command.callback_url)
        if idempotency_key is None:
            job = await self._create(command)
            return Answer(201, job.public())
        body = {
            "provider": command.provider,
            "request": command.request,
            "upstream_id": command.upstream_id,
            "labels": dict(command.labels or {}),
            "callback_url": command.callback_url,
        }
        key = f"default:{idempotency_key}"
        try:
            claim = await self.store.claim_idempotency(key, fingerprint(body), self.clock())
        except IdempotencyConflict as exc:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was first used with a different request body"
            ) from exc
        except IdempotencyInFlight as exc:
            raise IdempotencyKeyInFlight(
                "a request with this Idempotency-Key is still in progress; retry shortly"
            ) from exc
        if not isinstance(claim, ClaimedIdempotency):
            return Answer(claim.status, claim.body, replayed=True)
        try:
            job = await self._create(command)
        except UpstreamProblem as problem:
            cause = problem.__cause__
            if isinstance(cause, _AMBIGUOUS):
                await self.store.finish_idempotency(
                    key,
                    status=problem.status,
                    body={"code": problem.code, "detail": problem.message},
                    job_id=None,
                    now=self.clock(),
                )
            else:
                await self.store.release_idempotency(key)
            raise
        except BaseException:
            await self.store.release_idempotency(key)
            raise
        answer = Answer(201, job.public())
        await self.store.finish_idempotency(
            key, status=answer.status, body=answer.body, job_id=job.id, now=self.clock()
        )
        return answer

    async def _create(self, command: SubmitCommand, *, rerun_of: str | None = None) -> Job:
        adapter = self.adapter(command.provider)
        policy = self.policies[command.provider]
        now = self.clock()
        report: StatusReport | None = None
        request: Mapping[str, JSON] | None = None
        try:
            if command.request is not None:
                request = self._with_callback(command.provider, command.request)
                submission = await adapter.submit(request)
                upstream_id = submission.upstream_id
                state = submission.state or JobState.QUEUED
                native = submission.native_status
            else:
                assert command.upstream_id is not None
                report = await adapter.fetch_status(command.upstream_id)
                # An adopted job starts in the state the upstream reports: its first state.
                upstream_id, native = command.upstream_id, None
                state = report.state or JobState.QUEUED
        except AdapterError as error:
            log.warning("service.upstream_error", provider=command.provider, code=error.code)
            raise UpstreamProblem(error) from error
        job = Job(
            id=new_id(),
            provider=command.provider,
            upstream_id=upstream_id,
            state=state,
            native_status=native,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=policy.deadline),
            next_poll_at=now + timedelta(seconds=policy.first_delay),
            labels=dict(command.labels or {}),
            # Kept only when jobgate submitted it, so that a rerun can resubmit it.
            request=dict(command.request) if command.request is not None else None,
            callback_url=command.callback_url,
            rerun_of=rerun_of,
        )
        if report is not None:
            job = _adopted(job, report, now)
        await self.writer.create(job)
        self.wake()
        log.info(
            "job.created",
            job_id=job.id,
            provider=job.provider,
            state=job.state.value,
            adopted=report is not None,
        )
        return job

    def _with_callback(self, provider: str, request: Mapping[str, JSON]) -> Mapping[str, JSON]:
        """The body to submit: asking the provider to push to jobgate when it can.

        Only the submitted copy carries the token-bearing URL; the job keeps the client's body.
        """
        secret = self.callback_secrets.get(provider)
        if self.public_base_url is None or secret is None:
            return request
        url = callback_url(self.public_base_url, provider, secret)
        return with_callback(provider, request, url)

    # -- actions -------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        adapter = self._capable(job, "cancel")
        if job.finished:
            raise InvalidState(f"the job is already {job.state.value}", state=job.state.value)
        await self._upstream(adapter.cancel(job.upstream_id))
        # The upstream decides: poll now rather than pretend the job stopped.
        return await self._refresh(job)

    async def continue_(self, job_id: str, params: Mapping[str, JSON]) -> Job:
        job = await self.get(job_id)
        adapter = self._capable(job, "continue")
        if not is_allowed(job.state, JobState.RUNNING, Action.CONTINUE):
            raise InvalidState(
                f"only a running or succeeded job can be continued; this one is {job.state.value}",
                state=job.state.value,
            )
        submission = await self._upstream(adapter.continue_(job.upstream_id, params))

        def continued(current: Job) -> Job:
            now = self.clock()
            if current.state is JobState.SUCCEEDED and submission.state is JobState.RUNNING:
                running = transition(current, JobState.RUNNING, now, action=Action.CONTINUE)
                return replace(running, next_poll_at=now)
            if not is_allowed(current.state, JobState.RUNNING, Action.CONTINUE):
                raise IllegalTransition(current.state, JobState.RUNNING)
            return current.continuing(now)

        return await self._write(job, continued)

    async def rerun(self, job_id: str) -> Job:
        job = await self.get(job_id)
        adapter = self.adapter(job.provider)
        if adapter.capabilities.rerun:
            if job.state not in (JobState.SUCCEEDED, JobState.FAILED):
                raise InvalidState(
                    f"only a finished job can be rerun; this one is {job.state.value}",
                    state=job.state.value,
                )
            submission: Submission = await self._upstream(adapter.rerun(job.upstream_id))
            return await self._create(
                SubmitCommand(
                    provider=job.provider,
                    upstream_id=submission.upstream_id,
                    labels=job.labels,
                    callback_url=job.callback_url,
                ),
                rerun_of=job.id,
            )
        if job.request is not None and adapter.capabilities.submit:
            return await self._create(
                SubmitCommand(
                    provider=job.provider,
                    request=job.request,
                    labels=job.labels,
                    callback_url=job.callback_url,
                ),
                rerun_of=job.id,
            )
        raise ActionNotSupported(
            f"{job.provider} has no rerun, and this job was not submitted through jobgate, so "
            "there is no stored request to resubmit",
            action="rerun",
        )

    async def delete(self, job_id: str) -> None:
        if not await self.store.delete(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")
        log.info("job.deleted", job_id=job_id)

    async def refresh(self, job_id: str) -> Job:
        """Poll this job as soon as possible (an inbound callback is a hint, not the truth)."""
        return await self._refresh(await self.get(job_id))

    # -- results -------------------------------------------------------------------------------

    async def result(
        self, job_id: str, *, page: int, page_size: int | None, redirect: bool
    ) -> ResultAnswer:
        job = await self.get(job_id)
        locator = job.result
        if locator is None:
            if job.state in (JobState.FAILED, JobState.CANCELED, JobState.EXPIRED):
                raise ResultNotReady(
                    f"the job ended {job.state.value} without a result", state=job.state.value
                )
            raise ResultNotReady("the job has no result yet", state=job.state.value)
        adapter = self.adapter(job.provider)
        if locator.kind is ResultKind.INLINE and locator.inline is not None:
            return JsonResult(
                {"kind": "inline", "partial": locator.partial, "data": locator.inline}
            )
        payload = await self._upstream(
            adapter.fetch_result(job.upstream_id, page=page, page_size=page_size)
        )
        if isinstance(payload, InlineResult):
            return JsonResult({"kind": "inline", "partial": False, "data": payload.data})
        if isinstance(payload, ResultPage):
            return JsonResult(_page_body(payload))
        assert isinstance(payload, ResultPointer)
        if redirect and not payload.needs_provider_key:
            return RedirectResult(payload.url)
        return StreamResult(
            url=payload.url,
            provider=job.provider,
            provider_host=self.provider_hosts.get(job.provider, ""),
            key_header=self.key_headers.get(job.provider),
        )

    async def wait_result(self, job_id: str, seconds: float) -> None:
        """Wait up to ``seconds`` for a result to exist (or the job to finish)."""
        with self.hub.listen(job_id) as changed:
            deadline = self.clock() + timedelta(seconds=seconds)
            while True:
                job = await self.get(job_id)
                if job.result is not None or job.finished:
                    return
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    return
                await wait_set(changed, left)

    # -- helpers -------------------------------------------------------------------------------

    def _capable(self, job: Job, action: str) -> Adapter:
        adapter = self.adapter(job.provider)
        caps = adapter.capabilities
        supported = {"cancel": caps.cancel, "continue": caps.continue_, "rerun": caps.rerun}
        if not supported[action]:
            raise ActionNotSupported(f"{job.provider} does not support {action}", action=action)
        return adapter

    async def _upstream(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except AdapterError as error:
            raise UpstreamProblem(error) from error

    async def _refresh(self, job: Job) -> Job:
        if job.finished:
            return job
        return await self._write(job, lambda current: current.due_now(self.clock()))

    async def _write(self, job: Job, change: Callable[[Job], Job]) -> Job:
        """A fenced write of a user action; re-read and re-apply ``change`` if the runner wrote
        first. A change the job's new state no longer allows is 409 ``invalid_state``."""
        for _ in range(5):
            try:
                new = change(job)
            except IllegalTransition as exc:
                raise InvalidState(
                    f"the job is now {job.state.value}", state=job.state.value
                ) from exc
            [saved] = await self.writer.save([Update(job, new)], self.clock())
            if saved is not None:
                self.wake()
                return saved
            job = await self.get(job.id)
        raise InvalidState("the job changed too often to update; retry", state=job.state.value)


def _visible(job: Job) -> tuple[object, ...]:
    """What a client can see change (polls and lease bookkeeping excluded)."""
    return (job.state, job.native_status, job.progress, job.result, job.error, job.eta is None)


def _page_body(page: ResultPage) -> dict[str, JSON]:
    return {
        "kind": "paged",
        "partial": page.partial,
        "page": page.page,
        "page_size": page.page_size,
        "total_pages": page.total_pages,
        "total_records": page.total_records,
        "records": page.records,
        "meta": dict(page.meta),
    }


def _adopted(job: Job, report: StatusReport, now: datetime) -> Job:
    """A newly adopted job, created in the state its upstream reports, with the rest of that
    report folded in (no transition: that state is its first)."""
    new = apply_report(job, report, now).job
    if new.finished:
        new = replace(new, finished_at=report.times.finished_at or now, next_poll_at=None)
    return replace(new, version=1)
