"""The canonical job record and the pure rule for folding an upstream report into it.

A :class:`Job` is immutable; every change makes a new one with ``version + 1``. Stores persist it as
JSON (``to_record`` / ``from_record``), and the web layer renders it (``public``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Final

import orjson

from adapters.base import (
    JSON,
    NO_PROGRESS,
    JobError,
    Progress,
    ResultKind,
    ResultLocator,
    StatusReport,
)
from gateway.states import FINISHED, Action, JobState, Refused, observe, require
from gateway.vault import EMPTY, Vault

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

ANOMALIES_KEPT: Final = 8
"""Distinct refused observations a job remembers having logged. Native statuses are the provider's
strings, so a provider inventing a new one per poll must not grow the record without bound; past
the cap the oldest is forgotten, and logged again if it comes back."""
_NATIVE_KEPT: Final = 80


def new_id(prefix: str = "job_") -> str:
    """A ULID-shaped id: sortable by creation time, so list cursors follow creation order."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


CALLBACK: Final = "callback"
"""The schedule of a poll a provider's callback asked for."""


@dataclass(frozen=True, slots=True)
class Cadence:
    """How a running job's next poll was chosen, so a client can see why it waits."""

    schedule: str
    """``learned`` (from the provider's finished jobs), ``guidance`` (the provider's published
    cadence, until enough jobs have finished), ``push`` (the provider pushes the end; polling is
    the safety net) or ``retry`` (after a fault)."""
    expected_lag: float
    """Seconds from the job's end to jobgate seeing it, if it ends before the next poll."""

    def to_record(self) -> dict[str, JSON]:
        return {"schedule": self.schedule, "expected_lag": round(self.expected_lag, 3)}

    def public(self) -> dict[str, JSON]:
        return {"schedule": self.schedule, "expected_lag_seconds": round(self.expected_lag, 3)}

    @classmethod
    def from_record(cls, data: object) -> Cadence | None:
        if not isinstance(data, Mapping):
            return None
        schedule, lag = data.get("schedule"), data.get("expected_lag")
        if not isinstance(schedule, str) or not isinstance(lag, int | float):
            return None
        return cls(schedule, float(lag))


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    provider: str
    upstream_id: str
    state: JobState
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    tenant: str = "default"
    native_status: str | None = None
    progress: Progress = NO_PROGRESS
    eta: datetime | None = None
    result: ResultLocator | None = None
    error: JobError | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    upstream_finished_at: datetime | None = None
    continued_at: datetime | None = None
    """When a ``continue`` last reopened the job: the cadence counts its age from there, and does
    not learn its duration (a continuation is not a whole job)."""
    next_poll_at: datetime | None = None
    cadence: Cadence | None = None
    """Why ``next_poll_at`` is when it is: the schedule that chose it and the lag it implies."""
    polls: int = 0
    unchanged_polls: int = 0
    failures: int = 0
    not_found: int = 0
    action: Action | None = None
    rerun_of: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    request: JSON = None
    """The native submit body, kept for a resubmitting rerun. Provider keys never travel in it."""
    callback_url: str | None = None
    push_asked: bool = False
    """jobgate asked the provider to push this job's end to it (extract's ``callbackUrl``,
    catchall's webhook in ``webhook_ids``): its polls are then only the safety net."""
    records_seen: int = 0
    """Partial-result records already sent as ``records`` events (the next one starts here)."""
    anomalies: tuple[str, ...] = ()
    """The refused observations already logged for this job (:func:`anomaly_key`), oldest first.
    In the record, not in a runner's memory, because the job's next poll may be claimed by another
    replica or a restarted process, and it goes when the job goes."""
    refusals: int = 0
    """Polls in a row whose report was refused; from the second on, the cadence backs off."""
    vault: Vault = EMPTY
    """The copy of the result jobgate holds, and any capture still owed (``gateway.vault``)."""
    version: int = 1

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    # -- typed changes: each is a new version. None of them touches ``state``: only
    # :func:`transition` does, so every change of state passes the table in ``gateway.states``.

    def rescheduled(
        self,
        now: datetime,
        at: datetime,
        *,
        failures: int | None = None,
        not_found: int | None = None,
    ) -> Job:
        """Poll again at ``at`` (after a fault, when counters say how many in a row)."""
        return replace(
            self,
            next_poll_at=at,
            failures=self.failures if failures is None else failures,
            not_found=self.not_found if not_found is None else not_found,
            updated_at=now,
            version=self.version + 1,
        )

    def due_now(self, now: datetime) -> Job:
        """Poll as soon as possible (a handed-back lease, a cancel to confirm, a callback that
        reports progress): no schedule chose this poll, so ``cadence`` is cleared."""
        return replace(
            self, next_poll_at=now, cadence=None, updated_at=now, version=self.version + 1
        )

    def called_back(self, now: datetime) -> Job:
        """Poll as soon as possible because the provider pushed: the poll that follows knows a
        callback came (``gateway.push``), and the resource says why it polls now."""
        return replace(
            self,
            next_poll_at=now,
            cadence=Cadence(CALLBACK, 0.0),
            updated_at=now,
            version=self.version + 1,
        )

    def continuing(self, now: datetime, poll_at: datetime | None = None) -> Job:
        """A ``continue`` was accepted upstream (or is about to be asked for): open the
        succeeded -> running exit for the next report, and poll at ``poll_at`` (at once by
        default) to see it."""
        return replace(
            self,
            action=Action.CONTINUE,
            next_poll_at=now if poll_at is None else poll_at,
            updated_at=now,
            version=self.version + 1,
        )

    def continue_withdrawn(self, now: datetime) -> Job:
        """The provider refused a ``continue`` written ahead: close the exit again, and drop the
        check poll of a job that was not being polled."""
        poll_at = None if self.state is JobState.SUCCEEDED else self.next_poll_at
        return replace(
            self, action=None, next_poll_at=poll_at, updated_at=now, version=self.version + 1
        )

    def stopped(self, now: datetime) -> Job:
        """Stop polling without a change of state (a succeeded job polled once more)."""
        return replace(
            self, next_poll_at=None, action=None, updated_at=now, version=self.version + 1
        )

    def scheduled(
        self, next_poll_at: datetime, eta: datetime | None, cadence: Cadence | None = None
    ) -> Job:
        """This version with its next poll and ETA decided (the runner, once a report is folded
        in): the same version, not a new one."""
        return _copy(self, {"next_poll_at": next_poll_at, "eta": eta, "cadence": cadence})

    def leased(self, until: datetime, version: int | None = None) -> Job:
        """Claimed until ``until``: the claim's version (by default the next one), not due again
        before the lease ends."""
        version = self.version + 1 if version is None else version
        return _copy(self, {"next_poll_at": until, "version": version})

    # -- persistence -------------------------------------------------------------------------

    def to_record(self) -> dict[str, JSON]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "provider": self.provider,
            "upstream_id": self.upstream_id,
            "state": self.state.value,
            "native_status": self.native_status,
            "progress": _progress_dict(self.progress),
            "eta": _iso(self.eta),
            "result": _locator_dict(self.result),
            "error": _error_dict(self.error),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "deadline_at": _iso(self.deadline_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "upstream_finished_at": _iso(self.upstream_finished_at),
            "continued_at": _iso(self.continued_at),
            "next_poll_at": _iso(self.next_poll_at),
            "cadence": self.cadence.to_record() if self.cadence else None,
            "polls": self.polls,
            "unchanged_polls": self.unchanged_polls,
            "failures": self.failures,
            "not_found": self.not_found,
            "action": self.action.value if self.action else None,
            "rerun_of": self.rerun_of,
            "labels": dict(self.labels),
            "request": self.request,
            "callback_url": self.callback_url,
            "push_asked": self.push_asked,
            "records_seen": self.records_seen,
            "anomalies": list(self.anomalies),
            "refusals": self.refusals,
            "vault": self.vault.to_record() if self.vault != EMPTY else None,
            "version": self.version,
        }

    def to_json(self) -> str:
        """``orjson.dumps(self.to_record())`` as text: the record the stores keep, with its times
        written by orjson (in UTC, with ``Z``: the same text as :meth:`to_record`'s) instead of
        formatted one by one in Python, which was most of the time a save spent encoding."""
        return orjson.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "provider": self.provider,
                "upstream_id": self.upstream_id,
                "state": self.state.value,
                "native_status": self.native_status,
                "progress": _progress_dict(self.progress),
                "eta": _utc(self.eta),
                "result": _locator_dict(self.result),
                "error": _error_dict(self.error),
                "created_at": _utc(self.created_at),
                "updated_at": _utc(self.updated_at),
                "deadline_at": _utc(self.deadline_at),
                "started_at": _utc(self.started_at),
                "finished_at": _utc(self.finished_at),
                "upstream_finished_at": _utc(self.upstream_finished_at),
                "continued_at": _utc(self.continued_at),
                "next_poll_at": _utc(self.next_poll_at),
                "cadence": self.cadence.to_record() if self.cadence else None,
                "polls": self.polls,
                "unchanged_polls": self.unchanged_polls,
                "failures": self.failures,
                "not_found": self.not_found,
                "action": self.action.value if self.action else None,
                "rerun_of": self.rerun_of,
                "labels": dict(self.labels),
                "request": self.request,
                "callback_url": self.callback_url,
                "push_asked": self.push_asked,
                "records_seen": self.records_seen,
                "anomalies": list(self.anomalies),
                "refusals": self.refusals,
                "vault": self.vault.to_record() if self.vault != EMPTY else None,
                "version": self.version,
            },
            option=orjson.OPT_UTC_Z,
        ).decode()

    @classmethod
    def from_record(cls, data: Mapping[str, JSON]) -> Job:
        progress = data.get("progress") or {}
        result = data.get("result")
        error = data.get("error")
        return cls(
            id=data["id"],
            tenant=data.get("tenant", "default"),
            provider=data["provider"],
            upstream_id=data["upstream_id"],
            state=JobState(data["state"]),
            native_status=data.get("native_status"),
            progress=Progress(**progress),
            eta=_dt(data.get("eta")),
            result=_locator(result) if result else None,
            error=JobError(**error) if error else None,
            created_at=_req_dt(data["created_at"]),
            updated_at=_req_dt(data["updated_at"]),
            deadline_at=_req_dt(data["deadline_at"]),
            started_at=_dt(data.get("started_at")),
            finished_at=_dt(data.get("finished_at")),
            upstream_finished_at=_dt(data.get("upstream_finished_at")),
            continued_at=_dt(data.get("continued_at")),
            next_poll_at=_dt(data.get("next_poll_at")),
            cadence=Cadence.from_record(data.get("cadence")),
            polls=data.get("polls", 0),
            unchanged_polls=data.get("unchanged_polls", 0),
            failures=data.get("failures", 0),
            not_found=data.get("not_found", 0),
            action=Action(data["action"]) if data.get("action") else None,
            rerun_of=data.get("rerun_of"),
            labels=dict(data.get("labels") or {}),
            request=data.get("request"),
            callback_url=data.get("callback_url"),
            push_asked=data.get("push_asked", False),
            records_seen=data.get("records_seen", 0),
            anomalies=tuple(data.get("anomalies") or ()),
            refusals=data.get("refusals", 0),
            vault=Vault.from_record(data.get("vault")),
            version=data.get("version", 1),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        """``Job.from_record(orjson.loads(text))``, for the stores' reads of their records (a
        claim reads one per poll): the same rules, the job built with :func:`_build` rather than
        the frozen ``__init__``, and ISO times read as they are (Python 3.11 reads the ``Z``)."""
        data = orjson.loads(text)
        progress = data.get("progress") or {}
        result = data.get("result")
        error = data.get("error")
        action = data.get("action")
        return _build(
            {
                "id": data["id"],
                "tenant": data.get("tenant", "default"),
                "provider": data["provider"],
                "upstream_id": data["upstream_id"],
                "state": JobState(data["state"]),
                "native_status": data.get("native_status"),
                "progress": Progress(**progress),
                "eta": _time(data.get("eta")),
                "result": _locator(result) if result else None,
                "error": JobError(**error) if error else None,
                "created_at": _req_time(data["created_at"]),
                "updated_at": _req_time(data["updated_at"]),
                "deadline_at": _req_time(data["deadline_at"]),
                "started_at": _time(data.get("started_at")),
                "finished_at": _time(data.get("finished_at")),
                "upstream_finished_at": _time(data.get("upstream_finished_at")),
                "continued_at": _time(data.get("continued_at")),
                "next_poll_at": _time(data.get("next_poll_at")),
                "cadence": Cadence.from_record(data.get("cadence")),
                "polls": data.get("polls", 0),
                "unchanged_polls": data.get("unchanged_polls", 0),
                "failures": data.get("failures", 0),
                "not_found": data.get("not_found", 0),
                "action": Action(action) if action else None,
                "rerun_of": data.get("rerun_of"),
                "labels": dict(data.get("labels") or {}),
                "request": data.get("request"),
                "callback_url": data.get("callback_url"),
                "push_asked": data.get("push_asked", False),
                "records_seen": data.get("records_seen", 0),
                "anomalies": tuple(data.get("anomalies") or ()),
                "refusals": data.get("refusals", 0),
                "vault": Vault.from_record(data.get("vault")),
                "version": data.get("version", 1),
            }
        )

    def public(self) -> dict[str, JSON]:
        """The job resource as clients see it (``JobOut`` in gateway/web/models.py)."""
        return {
            "id": self.id,
            "provider": self.provider,
            "upstream_id": self.upstream_id,
            "state": self.state.value,
            "native_status": self.native_status,
            "progress": _progress_dict(self.progress),
            "eta": _iso(self.eta),
            "result": self._result_summary(),
            "error": _error_dict(self.error),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            # A finished job's due time is the vault's business (a capture, the end of retention),
            # not a poll a client should expect.
            "next_poll_at": _iso(self.next_poll_at) if self.polling else None,
            "cadence": self.cadence.public() if self.cadence and self.polling else None,
            "polls": self.polls,
            "rerun_of": self.rerun_of,
            "labels": dict(self.labels),
            "version": self.version,
        }

    @property
    def polling(self) -> bool:
        """Whether ``next_poll_at`` is a status poll (not the vault's work on a finished job)."""
        return not self.finished or self.action is Action.CONTINUE

    def _result_summary(self) -> dict[str, JSON]:
        result = self.result
        vault = self.vault
        copy = vault.copy
        servable = copy is not None or (result is not None and self.state is not JobState.EXPIRED)
        source = None
        if copy is not None:
            source = "jobgate"
        elif servable:
            source = "provider"
        kind = copy.kind if copy is not None else (result.kind if result else None)
        return {
            "available": servable,
            "partial": bool(result and result.partial and copy is None),
            "kind": kind.value if kind else None,
            "total_records": copy.total_records
            if copy is not None and copy.total_records is not None
            else (result.total_records if result else None),
            "source": source,
            "stored": copy is not None,
            "capturing": vault.pending,
            "size": copy.size if copy else None,
            "sha256": copy.sha256 if copy else None,
            "expires_at": _iso(copy.expires_at) if copy else None,
            "error": _error_dict(vault.error),
        }


def _generated(name: str, value: str) -> Callable[..., Job]:
    """A function ``name`` that makes a :class:`Job` in a straight line of slot writes, each
    field's value given by the expression ``value`` (with ``{f}`` for the field's name).

    ``dataclasses.replace`` walks the fields and calls the frozen ``__init__``, which writes each
    slot through ``object.__setattr__``; on the poll loop's path (a claim decodes a job, a poll
    makes a version or two of it) that was a tenth of the runner's time, and this takes a quarter
    of it. Generated from the fields, so a field added to ``Job`` needs no change here."""
    namespace: dict[str, object] = {"new": object.__new__, "Job": Job}
    lines = [f"def {name}(job, changes):", "    made = new(Job)"]
    for item in fields(Job):
        namespace[f"set_{item.name}"] = getattr(Job, item.name).__set__  # the slot's descriptor
        lines.append(f"    set_{item.name}(made, {value.format(f=item.name)})")
    lines.append("    return made")
    exec("\n".join(lines), namespace)  # our own field names: nothing from outside
    made: Callable[..., Job] = namespace[name]  # type: ignore[assignment]
    return made


_copy_job: Final = _generated("copy", "changes['{f}'] if '{f}' in changes else job.{f}")
_build_job: Final = _generated("build", "changes['{f}']")


def _copy(job: Job, changes: Mapping[str, object]) -> Job:
    """``dataclasses.replace(job, **changes)``, faster (:func:`_generated`)."""
    return _copy_job(job, changes)


def _build(values: Mapping[str, object]) -> Job:
    """``Job(**values)`` with every field given (a missing one is a ``KeyError``), faster."""
    return _build_job(None, values)


def transition(
    job: Job,
    target: JobState,
    now: datetime,
    *,
    action: Action | None = None,
    error: JobError | None = None,
) -> Job:
    """THE way a job's state changes: the runner's observations, its own verdicts (a deadline,
    a lost upstream job) and user actions all come here.

    Raises :class:`~gateway.states.IllegalTransition` and changes nothing when the table forbids
    the move. A finish stamps ``finished_at`` and stops polling; a continue (succeeded ->
    running) clears ``finished_at``, stamps ``continued_at`` and consumes the action.
    """
    require(job.state, target, action)
    if target is job.state:
        return job
    continued_at = job.continued_at
    if target is JobState.RUNNING and job.state is JobState.SUCCEEDED:
        finished_at: datetime | None = None
        continued_at = now
    elif target in FINISHED:
        finished_at = now
    else:
        finished_at = job.finished_at
    finished = target in FINISHED
    return replace(
        job,
        continued_at=continued_at,
        state=target,
        error=error or job.error,
        started_at=job.started_at or (None if target is JobState.QUEUED else now),
        finished_at=finished_at,
        next_poll_at=None if finished else job.next_poll_at,
        eta=None if finished else job.eta,
        action=None,
        updated_at=now,
        version=job.version + 1,
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of folding a report into a job: the new job, what changed, and any anomaly."""

    job: Job
    state_changed: bool
    progress_changed: bool
    refused: Refused | None = None


def apply_report(job: Job, report: StatusReport, now: datetime) -> Applied:
    """Fold one upstream observation into ``job``. Pure; the caller schedules the next poll.

    A refused state (backwards, unknown, illegal) keeps the canonical state but still records the
    poll and the native status, so the anomaly is visible on the job and nothing else is lost.
    """
    outcome = observe(job.state, report.state, report.native_status, job.action)
    refused = outcome if isinstance(outcome, Refused) else None
    moved = job
    if refused is None:
        assert isinstance(outcome, JobState)
        moved = transition(job, outcome, now, action=job.action)
    state_changed = moved.state is not job.state
    progress_changed = report.progress != job.progress and refused is None
    result = report.result if report.result is not None else job.result
    started_at = job.started_at
    if started_at is None and moved.state is not JobState.QUEUED:
        started_at = report.times.started_at or now  # the upstream's own clock beats ours
    # Every poll comes here: the fast copy (``replace``'s rules, a quarter of its cost).
    new = _copy(
        moved,
        {
            "native_status": report.native_status,
            "progress": report.progress if refused is None else job.progress,
            "result": result if refused is None else job.result,
            "error": report.error if refused is None and report.error else job.error,
            "started_at": started_at,
            "upstream_finished_at": report.times.finished_at or job.upstream_finished_at,
            "polls": job.polls + 1,
            "unchanged_polls": 0
            if (state_changed or progress_changed)
            else job.unchanged_polls + 1,
            "refusals": job.refusals + 1 if refused is not None else 0,
            "failures": 0,
            "not_found": 0,
            # A continue opens the succeeded -> running exit for the next report only: if that
            # report still says "completed", the continue did not restart the job and polling
            # stops again.
            "action": None,
            "updated_at": now,
            "version": job.version + 1,
        },
    )
    return Applied(new, state_changed, progress_changed, refused)


def anomaly_key(refused: Refused) -> str:
    """What makes a refused observation the same as an earlier one for logging: its kind and the
    native status (the canonical state it refused is implied by both for one job)."""
    return f"{refused.anomaly.value}:{refused.native_status[:_NATIVE_KEPT]}"


def note_anomaly(job: Job, refused: Refused) -> tuple[Job, bool]:
    """Remember on ``job`` (the version :func:`apply_report` just made) that ``refused`` is being
    logged. Returns the job and whether this is the first time: a repeat is not logged again.

    The runner calls this, not :func:`apply_report`, so that only an observation that really is
    logged is remembered (an adoption folds a report in without logging its refusal).
    """
    key = anomaly_key(refused)
    if key in job.anomalies:
        return job, False
    return replace(job, anomalies=(*job.anomalies, key)[-ANOMALIES_KEPT:]), True


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An entry for a job's event log, before the store numbers it."""

    kind: str
    """``created``, ``state``, ``progress``, ``records``, ``anomaly`` or ``deleted``."""
    data: Mapping[str, JSON]


def job_events(before: Job | None, after: Job) -> list[NewEvent]:
    """The event-log entries a change deserves: the creation, a state change, or a visible step
    of progress or result. Every writer (runner and service) takes its events from here."""
    # Most polls change nothing visible: decide before building the snapshot, which is not free.
    if before is None:
        return [NewEvent("created", after.public())]
    if after.state is not before.state:
        return [NewEvent("state", {**after.public(), "from": before.state.value})]
    if (
        after.progress != before.progress
        or after.result != before.result
        or after.vault.copy != before.vault.copy
        or after.vault.error != before.vault.error
    ):
        return [NewEvent("progress", after.public())]
    return []


# --------------------------------------------------------------------------------------------------
# (de)serialisation helpers


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _utc(value: datetime | None) -> datetime | None:
    """For orjson, which writes a UTC time as :func:`_iso` does (``astimezone`` returns a time
    already in UTC as it is)."""
    return value.astimezone(UTC) if value else None


def _dt(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _time(value: object) -> datetime | None:
    """:func:`_dt` without its ``Z`` rewrite, which Python 3.11's ``fromisoformat`` reads."""
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _req_time(value: object) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise ValueError(f"missing timestamp in job record: {value!r}")
    return parsed


def _req_dt(value: object) -> datetime:
    parsed = _dt(value)
    if parsed is None:
        raise ValueError(f"missing timestamp in job record: {value!r}")
    return parsed


def _progress_dict(progress: Progress) -> dict[str, JSON]:
    return {
        "fraction": progress.fraction,
        "step": progress.step,
        "step_index": progress.step_index,
        "step_count": progress.step_count,
    }


def _error_dict(error: JobError | None) -> dict[str, str] | None:
    return {"code": error.code, "message": error.message} if error else None


def _locator_dict(locator: ResultLocator | None) -> dict[str, JSON] | None:
    if locator is None:
        return None
    return {
        "kind": locator.kind.value,
        "partial": locator.partial,
        "inline": locator.inline,
        "url": locator.url,
        "needs_provider_key": locator.needs_provider_key,
        "total_records": locator.total_records,
        "meta": dict(locator.meta),
    }


def _locator(data: Mapping[str, JSON]) -> ResultLocator:
    return ResultLocator(
        kind=ResultKind(data["kind"]),
        partial=bool(data.get("partial")),
        inline=data.get("inline"),
        url=data.get("url"),
        needs_provider_key=bool(data.get("needs_provider_key")),
        total_records=data.get("total_records"),
        meta=dict(data.get("meta") or {}),
    )
