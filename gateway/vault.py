"""The result vault's record on a job, and its pure rules: what to capture, when, and what the
job says about where its result comes from. No I/O here (``gateway.capturer`` does the work).

A job carries one :class:`Vault`. ``copy`` is the result jobgate holds, if any; ``pending`` says a
capture of the job's current result is owed. The two are separate so that a ``continue`` keeps
serving the earlier copy until the new capture is complete.

The job's next due time (``next_poll_at``) carries the vault's work too: a capture owed is due
like a poll, and a held copy is due at the end of its retention, when it is deleted. So captures
ride the runner's claims: the same lease, the same fairness and quota, the same hand-back on a stop,
and a crash mid-capture means the lease runs out and the capture runs again elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import orjson

from adapters.base import JSON, JobError, ResultKind
from gateway.policy import PollPolicy
from gateway.states import JobState

if TYPE_CHECKING:
    from gateway.jobs import Job

CAPTURE_ATTEMPTS: Final = 8
"""Failed captures in a row before giving up (each waits the provider's error backoff)."""


class Source(StrEnum):
    """Where ``GET /v1/jobs/{id}/result`` gets its bytes."""

    JOBGATE = "jobgate"
    PROVIDER = "provider"


@dataclass(frozen=True, slots=True)
class StoredCopy:
    """A whole result jobgate holds. ``key`` is the blob's key; ``None`` means the result is small
    and inline, kept in the job's own record."""

    kind: ResultKind
    size: int
    sha256: str
    stored_at: datetime
    expires_at: datetime | None
    key: str | None = None
    content_type: str = "application/json"
    total_records: int | None = None
    index_key: str | None = None
    """Paged results: the blob of record offsets (8-byte big-endian, one per record, then the
    end), so a page is one slice of the records blob."""
    meta: Mapping[str, JSON] = field(default_factory=dict)

    def to_record(self) -> dict[str, JSON]:
        return {
            "kind": self.kind.value,
            "size": self.size,
            "sha256": self.sha256,
            "stored_at": _iso(self.stored_at),
            "expires_at": _iso(self.expires_at),
            "key": self.key,
            "content_type": self.content_type,
            "total_records": self.total_records,
            "index_key": self.index_key,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_record(cls, data: Mapping[str, JSON]) -> StoredCopy:
        stored_at = _dt(data.get("stored_at"))
        assert stored_at is not None
        return cls(
            kind=ResultKind(data["kind"]),
            size=data["size"],
            sha256=data["sha256"],
            stored_at=stored_at,
            expires_at=_dt(data.get("expires_at")),
            key=data.get("key"),
            content_type=data.get("content_type") or "application/json",
            total_records=data.get("total_records"),
            index_key=data.get("index_key"),
            meta=dict(data.get("meta") or {}),
        )

    def blob_keys(self) -> tuple[str, ...]:
        return tuple(k for k in (self.key, self.index_key) if k is not None)


@dataclass(frozen=True, slots=True)
class Vault:
    copy: StoredCopy | None = None
    pending: bool = False
    """A capture of the job's current result is owed (the runner does it when the job is due)."""
    generation: int = 0
    """Bumped for every result to capture: names its blobs, so a retry rewrites the same ones and a
    continue's capture never overwrites the copy still being served."""
    attempts: int = 0
    error: JobError | None = None
    """Why the last capture failed (kept after giving up, cleared by a success)."""
    upstream_gone: bool = False
    """The provider's copy is known to be gone: its status said so, its pointer answered 410, or
    the pointer was single-use and the capture spent it."""
    retired: bool = False
    """A copy was held and deleted at the end of its retention."""

    def to_record(self) -> dict[str, JSON]:
        return {
            "copy": self.copy.to_record() if self.copy else None,
            "pending": self.pending,
            "generation": self.generation,
            "attempts": self.attempts,
            "error": {"code": self.error.code, "message": self.error.message}
            if self.error
            else None,
            "upstream_gone": self.upstream_gone,
            "retired": self.retired,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, JSON] | None) -> Vault:
        if not data:
            return EMPTY
        copy = data.get("copy")
        error = data.get("error")
        return cls(
            copy=StoredCopy.from_record(copy) if copy else None,
            pending=bool(data.get("pending")),
            generation=data.get("generation", 0),
            attempts=data.get("attempts", 0),
            error=JobError(**error) if error else None,
            upstream_gone=bool(data.get("upstream_gone")),
            retired=bool(data.get("retired")),
        )

    # -- changes (pure) ----------------------------------------------------------------------

    def owe(self) -> Vault:
        """A new result to capture (a success, or a success again after a continue)."""
        return replace(self, pending=True, generation=self.generation + 1, attempts=0, error=None)

    def stored(self, copy: StoredCopy, *, upstream_gone: bool = False) -> Vault:
        return replace(
            self,
            copy=copy,
            pending=False,
            attempts=0,
            error=None,
            upstream_gone=self.upstream_gone or upstream_gone,
            retired=False,
        )

    def failed(self, error: JobError, *, final: bool, upstream_gone: bool = False) -> Vault:
        attempts = self.attempts + 1
        give_up = final or attempts >= CAPTURE_ATTEMPTS
        return replace(
            self,
            pending=not give_up,
            attempts=attempts,
            error=error,
            upstream_gone=self.upstream_gone or upstream_gone,
        )

    def dropped(self) -> Vault:
        """Nothing more to capture (the job left ``succeeded``, or capture is off)."""
        return replace(self, pending=False)

    def retire(self) -> Vault:
        return replace(self, copy=None, retired=True)

    def mark_gone(self) -> Vault:
        return replace(self, upstream_gone=True)


EMPTY: Final = Vault()


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    """One provider's vault settings (``providers.NAME.results``)."""

    capture: bool = True
    max_bytes: int = 1024 * 1024 * 1024
    retention: timedelta | None = timedelta(days=7)
    """``None`` keeps a copy as long as the job exists."""
    redirect: bool = False
    """Leave pointers that need no provider key (presigned URLs) upstream, to be redirected to
    with ``?redirect=true`` instead of captured."""
    inline_threshold: int = 64 * 1024
    """Inline results up to this size stay in the job's record; larger ones move to a blob."""


OFF: Final = CapturePolicy(capture=False)


def wants_capture(
    policy: CapturePolicy, kind: ResultKind, *, needs_provider_key: bool, inline_size: int | None
) -> bool:
    """Whether a result of this shape goes to a blob (a background capture). Pure."""
    if not policy.capture:
        return False
    if kind is ResultKind.POINTER:
        return needs_provider_key or not policy.redirect
    if kind is ResultKind.INLINE:
        return inline_size is not None and inline_size > policy.inline_threshold
    return True


def expiry(policy: CapturePolicy, now: datetime) -> datetime | None:
    return None if policy.retention is None else now + policy.retention


WATCH_MAX: Final = 3600.0
"""Seconds between status reads, at most, of a finished job whose result jobgate does not hold,
watched for the provider's ``expired``."""


def envelope(data: JSON, *, partial: bool = False) -> bytes:
    """An inline result exactly as ``/result`` serves it: its SHA-256 is the copy's ETag."""
    return orjson.dumps({"kind": "inline", "partial": partial, "data": data})


def settle(before: Job, after: Job, policy: CapturePolicy, now: datetime, *, pages: bool) -> Job:
    """What the vault owes once a report has been folded in (``before`` -> ``after``). Pure.

    A complete result seen on entering ``succeeded`` (a success, a success again after a
    continue, an adoption of a finished job: ``settle(job, job)``) is owed a capture; a small
    inline one is kept in the record at once. ``pages``: the provider's paged results also feed
    ``records`` events, so their pages are read at the end even with capture off (the last
    records arrive only with completion).
    """
    vault = after.vault
    locator = after.result
    if after.state is not JobState.SUCCEEDED:
        return replace(after, vault=vault.dropped()) if vault.pending else after
    if before.state is JobState.SUCCEEDED and before is not after:
        # Still succeeded (a watch poll, a continue the provider did not act on): the result is
        # the one already settled. Its record stays as the vault left it (an inline body moved to
        # a file, or deleted at the end of its retention), not as the provider repeats it.
        return replace(after, result=before.result)
    if locator is None or locator.partial:
        return after
    if locator.kind is ResultKind.INLINE and locator.inline is not None:
        body = envelope(locator.inline)
        if policy.capture and len(body) <= policy.inline_threshold:
            copy = StoredCopy(
                kind=ResultKind.INLINE,
                size=len(body),
                sha256=hashlib.sha256(body).hexdigest(),
                stored_at=now,
                expires_at=expiry(policy, now),
            )
            fresh = replace(vault, generation=vault.generation + 1)
            return replace(after, vault=fresh.stored(copy))
    size = len(envelope(locator.inline)) if locator.kind is ResultKind.INLINE else None
    owed = wants_capture(
        policy, locator.kind, needs_provider_key=locator.needs_provider_key, inline_size=size
    )
    if owed or (pages and locator.kind is ResultKind.PAGED):
        return replace(after, vault=vault.owe())
    return replace(after, vault=vault.dropped())


def next_due(
    job: Job, poll: PollPolicy, now: datetime, *, can_expire: bool, retry_in: float = 0.0
) -> datetime | None:
    """When a finished job is next due for the vault's work, or ``None``. Pure.

    A capture owed is due now (or after ``retry_in``, a failed attempt's backoff); a held copy at
    the end of its retention; a job whose result jobgate does not hold is watched, at a slowly
    growing interval, for the provider's ``expired``, where the provider can say it.
    """
    if job.state is not JobState.SUCCEEDED:
        return None
    vault = job.vault
    if vault.pending:
        return now + timedelta(seconds=retry_in)
    if vault.copy is not None:
        return vault.copy.expires_at
    if can_expire and not vault.upstream_gone:
        return now + timedelta(seconds=watch_delay(poll, job.unchanged_polls))
    return None


def watch_delay(poll: PollPolicy, unchanged: int) -> float:
    return float(min(WATCH_MAX, poll.max_interval * 2 ** min(unchanged, 16)))


def gone(job: Job) -> bool:
    """Whether no copy of the job's result can be served any more (the ``expired`` rule): the
    provider's copy is gone and jobgate holds none, nor is about to. Pure."""
    vault = job.vault
    return (
        job.state is JobState.SUCCEEDED
        and vault.upstream_gone
        and vault.copy is None
        and not vault.pending
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
