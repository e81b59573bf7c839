"""Use cases: submit, adopt, get, watch (long polls), list, cancel, rerun, continue, delete, result.

The web layer parses and renders; this module decides. It talks to adapters (one upstream call per
use case at most), the store and the event hub, and raises the domain errors of
``gateway.errors``. A client's read never causes an upstream call, except fetching a result that
lives upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NoReturn, TypeVar

import orjson
import structlog

from adapters.base import (
    JSON,
    Adapter,
    AdapterError,
    AuthRejected,
    InlineResult,
    NotSent,
    RateLimited,
    RequestRejected,
    ResultKind,
    ResultPage,
    ResultPointer,
    StatusReport,
    Submission,
    UnsupportedAction,
)
from adapters.http import utcnow
from gateway.auth import DEFAULT_TENANT
from gateway.blobs import BlobError, FilesystemBlobStore
from gateway.callbacks import callback_url, with_callback
from gateway.capturer import Capturer, Following
from gateway.catchall_push import PROVIDER as CATCHALL
from gateway.catchall_push import CatchallPush, registrar
from gateway.errors import (
    ActionNotSupported,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IdempotencyOutcomeUnknown,
    InvalidState,
    JobNotFound,
    ReplayedProblem,
    ResultExpiredError,
    ResultNotReady,
    ServiceError,
    TenantLimited,
    UnknownProvider,
    UpstreamProblem,
)
from gateway.events import EventHub, wait_set
from gateway.jobs import Cadence, Job, apply_report, new_id, transition
from gateway.limits import WINDOW, TenantLimits, breach
from gateway.policy import PollPolicy, expected_lag
from gateway.snapshots import Snapshot
from gateway.states import Action, IllegalTransition, JobState, is_allowed
from gateway.store.base import (
    ClaimedIdempotency,
    IdempotencyConflict,
    IdempotencyInFlight,
    IdempotencyPhase,
    IdempotencyRecord,
    JobFilter,
    JobStore,
)
from gateway.vault import StoredCopy, envelope, gone
from gateway.writer import JobWriter, Update

log = structlog.get_logger("jobgate.service")
T = TypeVar("T")

# Failures that prove a submit created nothing upstream: the key is freed and a retry runs again.
# Any other failure (a 5xx, a read timeout, an unreadable answer) may hide a created job.
_NO_EFFECT = (NotSent, RateLimited, RequestRejected, AuthRejected, UnsupportedAction)
# How far the provider's clock and ours may disagree when matching a lost submit by time.
_CLOCK_SLACK = timedelta(minutes=2)
# The longest Retry-After given to a request that finds its key held by another.
_IN_FLIGHT_RETRY_AFTER = 2.0
# Pages of the provider's job list read to reconcile one key, at most.
_RECONCILE_PAGES = 10


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


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A whole copy in the vault, served from its file (``sendfile``)."""

    path: Path
    sha256: str
    size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class StoredBytes:
    """A small answer made from the vault (an inline copy, a page of stored records)."""

    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class FollowResult:
    """A capture streaming in this process: the reader gets its bytes as they are written."""

    following: Following


ResultAnswer = JsonResult | RedirectResult | StreamResult | StoredFile | StoredBytes | FollowResult


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a new job comes from: the upstream job, and what is known of it."""

    upstream_id: str
    state: JobState = JobState.QUEUED
    native_status: str | None = None
    report: StatusReport | None = None
    """Adopt's first read, folded into the new job."""
    unseen: bool = False
    """True when no status was read with the upstream id (a recovery, a rerun): poll at once."""
    push_asked: bool = False
    """The submit asked the provider to push the job's end to jobgate. Unknown after a crash
    between the submit and its record (a recovery): taken as not, so the job is polled normally."""


@dataclass(frozen=True, slots=True)
class SubmitCommand:
    provider: str
    request: Mapping[str, JSON] | None = None
    upstream_id: str | None = None
    labels: Mapping[str, str] | None = None
    callback_url: str | None = None
    tenant: str = DEFAULT_TENANT
    """Whose job it will be. Not in :meth:`as_body`: the Idempotency-Key is stored under the
    tenant's name, which scopes it and brings the tenant back for a recovery."""

    def as_body(self) -> dict[str, JSON]:
        """What an Idempotency-Key's fingerprint covers, and what its row keeps for recovery."""
        return {
            "provider": self.provider,
            "request": None if self.request is None else dict(self.request),
            "upstream_id": self.upstream_id,
            "labels": dict(self.labels or {}),
            "callback_url": self.callback_url,
        }

    @classmethod
    def from_body(
        cls, body: Mapping[str, JSON], tenant: str = DEFAULT_TENANT
    ) -> SubmitCommand | None:
        """The command :meth:`as_body` described (``None`` for a body it could not have made)."""
        provider, request = body.get("provider"), body.get("request")
        upstream_id, labels = body.get("upstream_id"), body.get("labels")
        callback = body.get("callback_url")
        if not isinstance(provider, str) or not isinstance(labels, Mapping):
            return None
        if request is not None and not isinstance(request, Mapping):
            return None
        return cls(
            provider=provider,
            request=request,
            upstream_id=upstream_id if isinstance(upstream_id, str) else None,
            labels={str(k): str(v) for k, v in labels.items()},
            callback_url=callback if isinstance(callback, str) else None,
            tenant=tenant,
        )


def stored_key(tenant: str, idempotency_key: str) -> str:
    """The Idempotency-Key as stored: under its tenant, so two tenants may use the same one."""
    return f"{tenant}:{idempotency_key}"


def key_tenant(stored: str) -> str:
    """The tenant a stored key belongs to (tenant names hold no ``:``)."""
    return stored.partition(":")[0]


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
        idempotency_lease: float = 120.0,
        limits: Callable[[str], TenantLimits] = lambda tenant: TenantLimits(),
        on_limited: Callable[[str, str], None] = lambda tenant, limit: None,
        capturer: Capturer | None = None,
        capture_wait: float = 30.0,
        first_poll: Callable[[Job], tuple[float, Cadence]] | None = None,
    ) -> None:
        self.store = store
        # When a new job's first poll is due and why (the runner's schedule); unset: the policy's
        # ``first_delay``.
        self.first_poll = first_poll
        # CatchAll's webhook registrar: made at the first catchall submit that can push, and kept
        # for the service's life, so that the webhook is found or created once per process.
        self._catchall_push: CatchallPush | None = None
        # The vault: captured copies are served from it; None serves every result from upstream.
        self.capturer = capturer
        self.capture_wait = capture_wait
        self.writer = writer or JobWriter(store, hub)
        # Shared with the writer, which refreshes each version it saves.
        self.snapshots = self.writer.snapshots
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
        # How long a keyed request holds its key before a retry may recover it: longer than any
        # upstream call can take, so a live holder is never taken over.
        self.idempotency_lease = idempotency_lease
        self.limits = limits
        self.on_limited = on_limited

    # -- lookups -------------------------------------------------------------------------------

    def adapter(self, provider: str) -> Adapter:
        adapter = self.adapters.get(provider)
        if adapter is None:
            known = ", ".join(sorted(self.adapters))
            raise UnknownProvider(f"unknown provider {provider!r}; known providers: {known}")
        return adapter

    async def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        return (await self.snapshot(job_id, tenant)).job

    async def snapshot(
        self, job_id: str, tenant: str = DEFAULT_TENANT, *, at_least: int = 0
    ) -> Snapshot:
        """The job's newest version known here, encoded; from the store only when this process
        holds none, or holds one older than ``at_least`` (a version the client has seen)."""
        cached = self.snapshots.get(job_id)
        if cached is not None and cached.job.version >= at_least:
            if cached.job.tenant != tenant:
                raise _not_found(job_id)
            return cached
        with self.snapshots.reading() as ticket:
            job = await self.store.get(job_id, tenant)
            if job is None:
                raise _not_found(job_id)
            return self.snapshots.fill(job, ticket)

    async def list(self, where: JobFilter, *, limit: int, cursor: str | None) -> SnapshotPage:
        """A page of jobs, encoded: the store names the page's jobs and their versions, and only
        the rows this process holds no current snapshot of are read and decoded."""
        snapshots = self.snapshots
        with snapshots.reading() as ticket:
            page = await self.store.list_versions(where, limit=limit, cursor=cursor)
            found: dict[str, Snapshot] = {}
            missing: list[str] = []
            for job_id, version in page.versions:
                cached = snapshots.get(job_id)
                if cached is not None and cached.job.version >= version:
                    found[job_id] = cached
                else:
                    missing.append(job_id)
            if missing:
                for job in await self.store.get_many(missing, where.tenant):
                    found[job.id] = snapshots.fill(job, ticket)
        # A job deleted between the two reads is left out of the page.
        listed = [found[job_id] for job_id, _ in page.versions if job_id in found]
        return SnapshotPage(listed, page.next_cursor)

    async def list_encoded(self, where: JobFilter, *, limit: int, cursor: str | None) -> bytes:
        """A list page as the API's JSON, spliced from the jobs' snapshots; while nothing
        changes, the same page is answered from memory."""
        labels = tuple(sorted(where.labels.items()))
        key = (where.tenant, where.provider, where.state, labels, limit, cursor)
        body = self.snapshots.page(key)
        if body is None:
            generation = self.snapshots.generation
            page = await self.list(where, limit=limit, cursor=cursor)
            body = b'{"jobs":[%s],"next_cursor":%s}' % (
                b",".join(snapshot.body for snapshot in page.jobs),
                orjson.dumps(page.next_cursor),
            )
            self.snapshots.keep_page(key, generation, body)
        return body

    async def watch(
        self, job_id: str, seconds: float, tenant: str = DEFAULT_TENANT, *, at_least: int = 0
    ) -> Snapshot:
        """The job as soon as it visibly changes, or as it is after ``seconds``, encoded."""
        if seconds <= 0:
            return await self.snapshot(job_id, tenant, at_least=at_least)
        with self.hub.listen(job_id) as changed:
            current = await self.snapshot(job_id, tenant, at_least=at_least)
            if current.job.finished:
                return current
            seen = _visible(current.job)
            deadline = self.clock() + timedelta(seconds=seconds)
            while True:
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    return current
                await wait_set(changed, left)
                current = await self.snapshot(job_id, tenant)
                if _visible(current.job) != seen:
                    return current

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
            await self._within_limits(command.tenant)
            job = await self._track(command, await self._origin(command), job_id=new_id())
            return Answer(201, job.public())
        body = command.as_body()
        key = stored_key(command.tenant, idempotency_key)
        claim = await self._claim(key, fingerprint(body), body)
        if isinstance(claim, IdempotencyRecord):
            if claim.status >= 400:
                raise ReplayedProblem(
                    claim.status,
                    str(claim.body.get("code", "error")),
                    str(claim.body.get("title", "The first request with this key failed")),
                    str(claim.body.get("detail", "")),
                )
            return Answer(claim.status, claim.body, replayed=True)
        if claim.recovered:
            recovered = await self._recover(claim, command)
            if recovered is not None:
                return recovered
        else:
            # Checked once the key is held, so that a replayed answer is never refused; a refusal
            # frees the key (nothing was called) for the retry after Retry-After.
            try:
                await self._within_limits(command.tenant)
            except TenantLimited:
                await self.store.release_idempotency(claim)
                raise
        return await self._first_call(claim, command)

    async def _within_limits(self, tenant: str) -> None:
        limits = self.limits(tenant)
        if not limits.any:
            return
        now = self.clock()
        usage = await self.store.tenant_usage(tenant, now - WINDOW)
        found = breach(
            limits,
            active=usage.active,
            recent=usage.recent,
            oldest_recent=usage.oldest_recent,
            now=now,
        )
        if found is not None:
            log.info("tenant.limited", tenant=tenant, limit=found.code)
            self.on_limited(tenant, found.code)
            raise TenantLimited(found.code, found.message, found.retry_after)

    # -- idempotency: recovery points ----------------------------------------------------------
    #
    # Every "call upstream, then write locally" step of a keyed submit records where it is, so a
    # crash anywhere leaves a key that the next request with it can finish:
    #   claimed  -> (crash) the call never started: the retry runs it;
    #   calling  -> (crash) the provider may have a job: the retry asks it (catchall lists jobs by
    #               query and time); if it cannot tell, the retry answers 409
    #               idempotency_outcome_unknown, never a second upstream job;
    #   answered -> (crash) the upstream id is recorded: the retry tracks that job (reading it
    #               first if the crash came after the local write; the job id is chosen at claim);
    #   done     -> the answer is replayed.
    # Adopt calls nothing that creates, so it never enters ``calling``: a crash or a transient
    # fault frees the key and the retry simply runs.

    async def _claim(
        self, key: str, fingerprint: str, command: Mapping[str, JSON]
    ) -> IdempotencyRecord | ClaimedIdempotency:
        now = self.clock()
        try:
            return await self.store.claim_idempotency(
                key,
                fingerprint,
                now,
                lease_until=now + timedelta(seconds=self.idempotency_lease),
                job_id=new_id(),
                token=secrets.token_hex(8),
                command=command,
            )
        except IdempotencyConflict as exc:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was first used with a different request body"
            ) from exc
        except IdempotencyInFlight as exc:
            extra: dict[str, float] = {}
            if exc.lease_until is not None:
                # The lease is the worst case (a holder stuck for its whole upstream timeout); a
                # holder usually answers within a second, so invite the retry soon and say the
                # same again if it is still early.
                left = (exc.lease_until - now).total_seconds()
                extra["retry_after"] = max(1.0, min(left, _IN_FLIGHT_RETRY_AFTER))
            raise IdempotencyKeyInFlight(
                "a request with this Idempotency-Key is still in progress; retry after the "
                "Retry-After seconds to read its outcome",
                **extra,
            ) from exc

    async def recover_abandoned(self, limit: int = 100) -> int:
        """Finish keys whose holder died after calling upstream, without waiting for a client
        to retry: the upstream job such a key may stand for is tracked (or reconciled) now, so
        it is not orphaned when its client gives up. Returns how many keys were settled."""
        settled = 0
        for abandoned in await self.store.abandoned_idempotency(self.clock(), limit):
            command = SubmitCommand.from_body(abandoned.command, key_tenant(abandoned.key))
            if command is None or command.provider not in self.adapters:
                continue
            try:
                claim = await self._claim(abandoned.key, abandoned.fingerprint, abandoned.command)
            except (IdempotencyKeyInFlight, IdempotencyKeyReused):
                continue  # a client's retry (or another replica) got there first
            if not isinstance(claim, ClaimedIdempotency):
                continue
            try:
                answer = await self._recover(claim, command)
            except IdempotencyOutcomeUnknown:
                settled += 1  # decided and stored: the client will read it
                continue
            except ServiceError as error:
                log.info("idempotency.sweep_deferred", code=error.code)
                continue
            if answer is None:
                # The provider shows no job: nothing to track. The client's retry runs afresh.
                await self.store.release_idempotency(claim)
            settled += 1
        return settled

    async def _first_call(self, claim: ClaimedIdempotency, command: SubmitCommand) -> Answer:
        creates = command.request is not None
        if creates and not await self.store.advance_idempotency(
            claim, IdempotencyPhase.CALLING, now=self.clock()
        ):
            raise _taken_over()
        try:
            origin = await self._origin(command)
        except UpstreamProblem as problem:
            if not creates or isinstance(problem.__cause__, _NO_EFFECT):
                # Nothing exists upstream because of this request: a fault is not an outcome.
                await self.store.release_idempotency(claim)
            else:
                # The provider may have created the job: the next request with this key
                # reconciles at once rather than repeating the call or waiting for the lease.
                await self.store.advance_idempotency(
                    claim, IdempotencyPhase.CALLING, now=self.clock(), lease_until=self.clock()
                )
            raise
        return await self._answered(claim, command, origin)

    async def _answered(
        self, claim: ClaimedIdempotency, command: SubmitCommand, origin: Origin
    ) -> Answer:
        recorded = await self.store.advance_idempotency(
            claim, IdempotencyPhase.ANSWERED, now=self.clock(), upstream_id=origin.upstream_id
        )
        if not recorded:
            raise _taken_over()
        job = await self._track(command, origin, job_id=claim.job_id)
        answer = Answer(201, job.public())
        await self.store.finish_idempotency(
            claim, status=answer.status, body=answer.body, job_id=job.id, now=self.clock()
        )
        return answer

    async def _recover(self, claim: ClaimedIdempotency, command: SubmitCommand) -> Answer | None:
        """Finish what a crashed holder of this key left, or ``None`` to run the call afresh."""
        log.info(
            "idempotency.recovering",
            provider=command.provider,
            phase=claim.phase.value,
            job_id=claim.job_id,
        )
        existing = await self.store.get(claim.job_id, command.tenant)
        if existing is not None:
            answer = Answer(201, existing.public())
            await self.store.finish_idempotency(
                claim, status=201, body=answer.body, job_id=existing.id, now=self.clock()
            )
            return answer
        if claim.phase is IdempotencyPhase.ANSWERED and claim.upstream_id is not None:
            return await self._answered(claim, command, Origin(claim.upstream_id, unseen=True))
        if claim.phase is IdempotencyPhase.CALLING and command.request is not None:
            upstream_id = await self._reconcile(claim, command, command.request)
            if upstream_id is not None:
                return await self._answered(claim, command, Origin(upstream_id, unseen=True))
        return None

    async def _reconcile(
        self, claim: ClaimedIdempotency, command: SubmitCommand, request: Mapping[str, JSON]
    ) -> str | None:
        """The upstream job a lost submit created, or ``None`` when the provider shows none."""
        adapter = self.adapter(command.provider)
        now = self.clock()
        called = claim.called_at or now
        since, until = called - _CLOCK_SLACK, now + _CLOCK_SLACK
        found: list[str] = []
        page: int | None = 1
        try:
            for _ in range(_RECONCILE_PAGES):
                if page is None:
                    break
                candidates = await adapter.find_submitted(
                    request, since=since, until=until, page=page
                )
                found.extend(candidates.upstream_ids)
                page = candidates.next_page
        except UnsupportedAction:
            await self._outcome_unknown(
                claim, command, f"{command.provider} offers no way to list the jobs it created"
            )
        except AdapterError as error:
            # Ask again at the next request: the key stays ``calling``, its lease over.
            await self.store.advance_idempotency(
                claim, IdempotencyPhase.CALLING, now=now, lease_until=self.clock()
            )
            raise UpstreamProblem(error) from error
        if page is not None:
            await self._outcome_unknown(claim, command, "too many jobs were created meanwhile")
        untracked = [
            upstream_id
            for upstream_id in dict.fromkeys(found)
            # Tracked by any tenant: the provider's account is shared, so another tenant's job
            # with the same request in the window is theirs, never to be adopted here.
            if await self.store.get_by_upstream(command.provider, upstream_id, None) is None
        ]
        if len(untracked) > 1:
            await self._outcome_unknown(
                claim, command, f"{len(untracked)} untracked jobs match the request"
            )
        log.info(
            "idempotency.reconciled",
            provider=command.provider,
            job_id=claim.job_id,
            found=len(untracked),
        )
        return untracked[0] if untracked else None

    async def _outcome_unknown(
        self, claim: ClaimedIdempotency, command: SubmitCommand, why: str
    ) -> NoReturn:
        called = claim.called_at.isoformat() if claim.called_at else "an unknown time"
        problem = IdempotencyOutcomeUnknown(
            f"the first request with this Idempotency-Key called {command.provider} at {called} "
            "and the gateway stopped before recording its answer, so the provider may or may not "
            f"have created a job ({why}). Look for a job created at about that time on the "
            "provider and adopt it with upstream_id, or submit again with a new Idempotency-Key "
            "(which may create a second upstream job)."
        )
        await self.store.finish_idempotency(
            claim,
            status=problem.status,
            body={"code": problem.code, "title": problem.title, "detail": problem.message},
            job_id=None,
            now=self.clock(),
        )
        log.warning("idempotency.outcome_unknown", provider=command.provider, job_id=claim.job_id)
        raise problem

    # -- creating jobs -------------------------------------------------------------------------

    async def _origin(self, command: SubmitCommand) -> Origin:
        """The one upstream call that gives a new job its upstream id: submit, or adopt's read."""
        adapter = self.adapter(command.provider)
        try:
            if command.request is not None:
                submission, pushed = await self._with_callback(
                    adapter, command.provider, command.request
                )
                return Origin(
                    submission.upstream_id,
                    submission.state or JobState.QUEUED,
                    submission.native_status,
                    push_asked=pushed,
                )
            assert command.upstream_id is not None
            report = await adapter.fetch_status(command.upstream_id)
            # An adopted job starts in the state the upstream reports: its first state.
            return Origin(command.upstream_id, report.state or JobState.QUEUED, report=report)
        except AdapterError as error:
            log.warning("service.upstream_error", provider=command.provider, code=error.code)
            raise UpstreamProblem(error) from error

    async def _track(
        self,
        command: SubmitCommand,
        origin: Origin,
        *,
        job_id: str,
        rerun_of: str | None = None,
    ) -> Job:
        """Write the local job for an upstream job that exists: from here on the runner polls it."""
        policy = self.policies[command.provider]
        now = self.clock()
        # A job whose upstream answer was not seen (a recovery, a rerun) is read at once.
        first_poll = now if origin.unseen else now + timedelta(seconds=policy.first_delay)
        guidance = Cadence("guidance", expected_lag(policy.first_delay))
        job = Job(
            id=job_id,
            provider=command.provider,
            upstream_id=origin.upstream_id,
            state=origin.state,
            native_status=origin.native_status,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=policy.deadline),
            next_poll_at=first_poll,
            cadence=None if origin.unseen else guidance,
            labels=dict(command.labels or {}),
            tenant=command.tenant,
            # Kept only when jobgate submitted it, so that a rerun can resubmit it.
            request=dict(command.request) if command.request is not None else None,
            callback_url=command.callback_url,
            push_asked=origin.push_asked,
            rerun_of=rerun_of,
        )
        if self.first_poll is not None and not origin.unseen:
            delay, why = self.first_poll(job)
            job = replace(job, next_poll_at=now + timedelta(seconds=delay), cadence=why)
        if origin.report is not None:
            job = _adopted(job, origin.report, now)
            if self.capturer is not None:
                # An adopted job may be finished already: its result is owed a capture too.
                job = replace(self.capturer.settle(job, job, now), version=1)
        await self.writer.create(job)
        self.wake()
        log.info(
            "job.created",
            job_id=job.id,
            tenant=job.tenant,
            provider=job.provider,
            state=job.state.value,
            adopted=origin.report is not None,
        )
        return job

    async def _with_callback(
        self, adapter: Adapter, provider: str, request: Mapping[str, JSON]
    ) -> tuple[Submission, bool]:
        """Submit ``request``, asking the provider to push to jobgate when it can; say whether
        the submitted body asked.

        Only the submitted copy carries the token-bearing URL or jobgate's webhook id; the job
        keeps the client's body (``_track``), so no secret reaches the store.
        """
        secret = self.callback_secrets.get(provider)
        if self.public_base_url is None or secret is None:
            return await adapter.submit(request), False
        if provider == CATCHALL:
            if self._catchall_push is None:
                self._catchall_push = registrar(adapter, self.public_base_url, secret)
            return await self._catchall_push.submit(request, adapter.submit)
        url = callback_url(self.public_base_url, provider, secret)
        body = with_callback(provider, request, url)
        return await adapter.submit(body), body is not request

    # -- actions -------------------------------------------------------------------------------

    async def cancel(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        job = await self.get(job_id, tenant)
        adapter = self._capable(job, "cancel")
        if job.finished:
            raise InvalidState(f"the job is already {job.state.value}", state=job.state.value)
        await self._upstream(adapter.cancel(job.upstream_id))
        # The upstream decides: poll now rather than pretend the job stopped.
        return await self._refresh(job)

    async def continue_(
        self, job_id: str, params: Mapping[str, JSON], tenant: str = DEFAULT_TENANT
    ) -> Job:
        job = await self.get(job_id, tenant)
        adapter = self._capable(job, "continue")
        if not is_allowed(job.state, JobState.RUNNING, Action.CONTINUE):
            raise InvalidState(
                f"only a running or succeeded job can be continued; this one is {job.state.value}",
                state=job.state.value,
            )
        # Write-ahead: should the process die after the provider accepts the continue and before
        # the write below (or the answer be lost to a 5xx), the job is still polled once the call
        # has had its time, with the succeeded -> running exit open for that poll.
        check_at = self.clock() + timedelta(seconds=self.idempotency_lease)

        def ahead(current: Job) -> Job:
            due = current.next_poll_at
            return current.continuing(self.clock(), check_at if due is None else min(due, check_at))

        job = await self._write(job, ahead)
        try:
            submission = await self._upstream(adapter.continue_(job.upstream_id, params))
        except UpstreamProblem as problem:
            if isinstance(problem.__cause__, _NO_EFFECT):
                # Refused, so nothing changed upstream: nothing is left pending here either.
                await self._write(job, lambda current: current.continue_withdrawn(self.clock()))
            raise

        def continued(current: Job) -> Job:
            now = self.clock()
            if current.state is JobState.SUCCEEDED and submission.state is JobState.RUNNING:
                running = transition(current, JobState.RUNNING, now, action=Action.CONTINUE)
                return replace(running, next_poll_at=now)
            if not is_allowed(current.state, JobState.RUNNING, Action.CONTINUE):
                raise IllegalTransition(current.state, JobState.RUNNING)
            return current.continuing(now)

        return await self._write(job, continued)

    async def rerun(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        job = await self.get(job_id, tenant)
        adapter = self.adapter(job.provider)
        await self._within_limits(job.tenant)  # a rerun makes a new job
        if adapter.capabilities.rerun:
            if job.state not in (JobState.SUCCEEDED, JobState.FAILED):
                raise InvalidState(
                    f"only a finished job can be rerun; this one is {job.state.value}",
                    state=job.state.value,
                )
            submission: Submission = await self._upstream(adapter.rerun(job.upstream_id))
            # Tracked from the rerun's own answer, with no second call that could fail after the
            # provider has made the new job (such a failure used to orphan it); the runner reads
            # its status at once.
            return await self._track(
                SubmitCommand(
                    provider=job.provider,
                    upstream_id=submission.upstream_id,
                    labels=job.labels,
                    callback_url=job.callback_url,
                    tenant=job.tenant,
                ),
                Origin(
                    submission.upstream_id,
                    submission.state or JobState.QUEUED,
                    submission.native_status,
                    unseen=True,
                ),
                job_id=new_id(),
                rerun_of=job.id,
            )
        if job.request is not None and adapter.capabilities.submit:
            command = SubmitCommand(
                provider=job.provider,
                request=job.request,
                labels=job.labels,
                callback_url=job.callback_url,
                tenant=job.tenant,
            )
            return await self._track(
                command, await self._origin(command), job_id=new_id(), rerun_of=job.id
            )
        raise ActionNotSupported(
            f"{job.provider} has no rerun, and this job was not submitted through jobgate, so "
            "there is no stored request to resubmit",
            action="rerun",
        )

    async def delete(self, job_id: str, tenant: str = DEFAULT_TENANT) -> None:
        if not await self.store.delete(job_id, tenant):
            raise JobNotFound(f"no job with id {job_id!r}")
        self.snapshots.drop([job_id])
        if self.capturer is not None:
            # After the row: a crash between the two leaves files no row points at, never a row
            # pointing at deleted files. A capture still streaming for it finds its write fenced.
            removed = await self.capturer.blobs.delete_prefix(f"{tenant}/{job_id}")
            if removed:
                log.info("vault.deleted", job_id=job_id, blobs=removed)
        log.info("job.deleted", job_id=job_id)

    async def called_back(
        self, job_id: str, tenant: str = DEFAULT_TENANT, final: bool = True
    ) -> Job:
        """Poll this job as soon as possible because its provider pushed (a callback is a hint,
        not the truth: the poll decides). ``final``: the callback said the job ended."""
        job = await self.get(job_id, tenant)
        if job.finished:
            return job
        now = self.clock()
        return await self._write(
            job, lambda current: current.called_back(now) if final else current.due_now(now)
        )

    # -- results -------------------------------------------------------------------------------

    async def result(
        self,
        job_id: str,
        *,
        page: int,
        page_size: int | None,
        redirect: bool,
        tenant: str = DEFAULT_TENANT,
    ) -> ResultAnswer:
        job = await self.get(job_id, tenant)
        stored = await self._from_vault(job, page=page, page_size=page_size, redirect=redirect)
        if stored is not None:
            return stored
        if job.vault.pending:
            job = await self.get(job_id, tenant)  # the capture may have ended while it was awaited
        locator = job.result
        if job.state is JobState.EXPIRED and job.vault.copy is None:
            raise ResultExpiredError(
                "the provider's result has expired and jobgate holds no copy of it"
                + (" (capture is off for this provider)" if not self._captures(job) else "")
            )
        if locator is None:
            if job.state is JobState.EXPIRED:
                # The provider's retention ended before jobgate saw a result: it is gone.
                raise ResultExpiredError(
                    "the job expired upstream before its result was fetched; the provider no "
                    "longer has it"
                )
            if job.state in (JobState.FAILED, JobState.CANCELED):
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

    async def wait_result(self, job_id: str, seconds: float, tenant: str = DEFAULT_TENANT) -> None:
        """Wait up to ``seconds`` for a result to exist (or the job to finish), and for a capture
        under way to end."""
        with self.hub.listen(job_id) as changed:
            deadline = self.clock() + timedelta(seconds=seconds)
            while True:
                job = await self.get(job_id, tenant)
                ready = job.result is not None or job.finished
                if ready and not (job.vault.pending and job.state is JobState.SUCCEEDED):
                    return
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    return
                await wait_set(changed, left)

    async def result_gone(self, job_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """The provider answered 410 for the job's result: its copy is gone. With no copy here
        either, the job is ``expired`` (the rule in ``gateway.vault.gone``)."""
        job = await self.get(job_id, tenant)
        if job.vault.upstream_gone:
            return

        def mark(current: Job) -> Job:
            now = self.clock()
            new = replace(
                current,
                vault=current.vault.mark_gone(),
                updated_at=now,
                version=current.version + 1,
            )
            if gone(new):
                new = transition(new, JobState.EXPIRED, now)
            return new

        with contextlib.suppress(InvalidState):
            await self._write(job, mark)

    # -- the vault -----------------------------------------------------------------------------

    def _captures(self, job: Job) -> bool:
        return self.capturer is not None and self.capturer.policy(job.provider).capture

    async def _from_vault(
        self, job: Job, *, page: int, page_size: int | None, redirect: bool
    ) -> ResultAnswer | None:
        """The answer from jobgate's own copy (no upstream call), or ``None`` to ask upstream."""
        if self.capturer is None:
            return None
        locator = job.result
        copy = job.vault.copy
        presigned = (
            locator is not None
            and locator.kind is ResultKind.POINTER
            and locator.url is not None
            and not locator.needs_provider_key
            and not job.vault.upstream_gone
        )
        if redirect and presigned and locator is not None and locator.url is not None:
            # The provider's pointer needs no key and may still be valid: it is the client's.
            return RedirectResult(locator.url)
        if copy is None and job.vault.pending and locator is not None:
            if locator.kind is not ResultKind.POINTER:
                return None  # inline and pages can be read upstream again meanwhile
            return await self._await_capture(
                job, page=page, page_size=page_size, single_use=not presigned
            )
        if copy is None:
            return None
        return await self._stored(job, copy, page=page, page_size=page_size)

    async def _await_capture(
        self, job: Job, *, page: int, page_size: int | None, single_use: bool
    ) -> ResultAnswer | None:
        """A pointer's capture is owed: follow it where it streams here, else wait for it (a
        single-use pointer must not be fetched twice); a reusable one is read upstream."""
        assert self.capturer is not None
        deadline = self.clock() + timedelta(seconds=self.capture_wait)
        with self.hub.listen(job.id) as changed:
            while True:
                following = self.capturer.following(job)
                if following is not None:
                    return FollowResult(following)
                if not single_use:
                    return None
                job = await self.get(job.id, job.tenant)
                if job.vault.copy is not None:
                    return await self._stored(job, job.vault.copy, page=page, page_size=page_size)
                if not job.vault.pending:
                    return None
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    raise ResultNotReady(
                        "the result is being captured; retry in a moment, or add ?wait=",
                        state=job.state.value,
                    )
                # A capture streaming here nudges the hub; one elsewhere ends with an event.
                await wait_set(changed, left)

    async def _stored(
        self, job: Job, copy: StoredCopy, *, page: int, page_size: int | None
    ) -> ResultAnswer | None:
        assert self.capturer is not None
        if copy.key is None:
            locator = job.result
            if locator is None or locator.inline is None:
                return None
            return StoredBytes(envelope(locator.inline), copy.sha256)
        blobs = self.capturer.blobs
        try:
            if copy.kind is ResultKind.PAGED:
                return await asyncio.to_thread(
                    _stored_page, blobs, copy, page, page_size or DEFAULT_PAGE_SIZE
                )
            path = blobs.path(copy.key)
            if not await asyncio.to_thread(path.is_file):
                raise FileNotFoundError(copy.key)
        except (OSError, BlobError):
            # A replica that does not share the vault's volume, or a file removed by hand: the
            # provider may still have the result.
            log.warning("vault.blob_missing", job_id=job.id, key=copy.key)
            return None
        return StoredFile(path, copy.sha256, copy.size, copy.content_type)

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
            job = await self.get(job.id, job.tenant)
        raise InvalidState("the job changed too often to update; retry", state=job.state.value)


def _not_found(job_id: str) -> JobNotFound:
    # Another tenant's job is "not found", word for word: no oracle for ids that exist.
    return JobNotFound(f"no job with id {job_id!r}")


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    jobs: list[Snapshot]
    next_cursor: str | None


def _taken_over() -> IdempotencyKeyInFlight:
    return IdempotencyKeyInFlight(
        "another request took this Idempotency-Key over after its lease ran out; retry to read "
        "its outcome"
    )


def _visible(job: Job) -> tuple[object, ...]:
    """What a client can see change (polls and lease bookkeeping excluded)."""
    return (
        job.state,
        job.native_status,
        job.progress,
        job.result,
        job.error,
        job.eta is None,
        job.vault.copy,
        job.vault.pending,
        job.vault.error,
    )


DEFAULT_PAGE_SIZE = 100
"""Records per page when a client names none: the page size providers default to."""


def _stored_page(
    blobs: FilesystemBlobStore, copy: StoredCopy, page: int, page_size: int
) -> StoredBytes:
    """One page of a stored paged result, read with two slices (the offsets, then the records)
    and spliced without decoding a record. Runs in a thread."""
    assert copy.key is not None
    assert copy.index_key is not None
    total = copy.total_records or 0
    first = min((page - 1) * page_size, total)
    last = min(first + page_size, total)
    offsets = blobs.read_range(copy.index_key, first * 8, (last + 1) * 8)
    start = int.from_bytes(offsets[:8], "big")
    end = int.from_bytes(offsets[-8:], "big")
    lines = blobs.read_range(copy.key, start, end) if last > first else b""
    records = b"[" + lines[:-1].replace(b"\n", b",") + b"]" if lines else b"[]"
    head = orjson.dumps(
        {
            "kind": "paged",
            "partial": False,
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, -(-total // page_size)),
            "total_records": total,
        }
    )
    body = head[:-1] + b',"records":' + records + b',"meta":' + orjson.dumps(dict(copy.meta)) + b"}"
    return StoredBytes(body, f"{copy.sha256[:32]}-{page}-{page_size}")


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
