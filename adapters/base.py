"""The adapter protocol: what every provider adapter promises the gateway, and the typed values it
returns.

An adapter makes one upstream call per method and returns a typed value or raises a typed error.
It never loops or sleeps: the runner owns time (see ``gateway/runner``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from adapters.redact import Scrubber
from gateway.states import JobState

JSON = Any
"""A decoded JSON value. Kept as ``Any`` because provider bodies are open-ended by design."""


# --------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Progress:
    """Normalised progress. Every field is optional: providers report very different things."""

    fraction: float | None = None
    step: str | None = None
    step_index: int | None = None
    step_count: int | None = None

    def __post_init__(self) -> None:
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"progress fraction {self.fraction} is outside 0..1")


NO_PROGRESS = Progress()


@dataclass(frozen=True, slots=True)
class JobError:
    """A job's failure as the provider described it."""

    code: str
    message: str


class ResultKind(StrEnum):
    INLINE = "inline"
    PAGED = "paged"
    POINTER = "pointer"


@dataclass(frozen=True, slots=True)
class ResultLocator:
    """Where a job's result is, as the last status report said.

    ``partial`` marks results that exist while the job still runs (catchall from ``enriching`` on).
    For ``POINTER``, ``url`` is the large-result location and ``needs_provider_key`` tells whether
    the provider's key must accompany the download (a proxy URL) or must not (a presigned URL).
    """

    kind: ResultKind
    partial: bool = False
    inline: JSON = None
    url: str | None = None
    needs_provider_key: bool = False
    total_records: int | None = None
    meta: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateHints:
    """What the provider said about when to call again. Times are absolute, from the caller's clock.

    ``retry_at`` comes from ``Retry-After`` (seconds or an HTTP date); ``reset_at`` from
    ``X-RateLimit-Reset``. The runner's policy lets them win over its computed delay.
    """

    retry_at: datetime | None = None
    reset_at: datetime | None = None
    limit: int | None = None
    remaining: int | None = None

    @property
    def empty(self) -> bool:
        return self.retry_at is None and self.reset_at is None and self.remaining is None


NO_HINTS = RateHints()


@dataclass(frozen=True, slots=True)
class Timestamps:
    created_at: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One observation of an upstream job, mapped onto the canonical model without losing the native
    answer: ``native_status`` is verbatim, and ``state`` is ``None`` when the status is unknown."""

    upstream_id: str
    state: JobState | None
    native_status: str
    progress: Progress = NO_PROGRESS
    error: JobError | None = None
    result: ResultLocator | None = None
    times: Timestamps = Timestamps()
    hints: RateHints = NO_HINTS
    job_type: str | None = None

    def scrubbed(self, scrubber: Scrubber) -> StatusReport:
        """This report with secrets masked in every field that carries provider text (the native
        status, the step, the error, the type). Results are the client's data and stay as sent."""
        error = self.error
        if error is not None:
            error = JobError(code=scrubber.text(error.code), message=scrubber.text(error.message))
        return replace(
            self,
            native_status=scrubber.text(self.native_status),
            progress=replace(self.progress, step=scrubber.optional(self.progress.step)),
            error=error,
            job_type=scrubber.optional(self.job_type),
        )


@dataclass(frozen=True, slots=True)
class Submission:
    """The answer to a submit, rerun or continue: the upstream id and what else came back."""

    upstream_id: str
    native_status: str | None = None
    state: JobState | None = None
    original_id: str | None = None
    hints: RateHints = NO_HINTS
    extra: Mapping[str, JSON] = field(default_factory=dict)

    def scrubbed(self, scrubber: Scrubber) -> Submission:
        """This answer with secrets masked in its provider text (the native status, the extras)."""
        return replace(
            self,
            native_status=scrubber.optional(self.native_status),
            extra=scrubber.value(self.extra),
        )


@dataclass(frozen=True, slots=True)
class InlineResult:
    data: JSON


@dataclass(frozen=True, slots=True)
class ResultPage:
    records: list[JSON]
    page: int
    page_size: int
    total_pages: int
    total_records: int | None
    partial: bool
    meta: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResultPointer:
    url: str
    needs_provider_key: bool
    meta: Mapping[str, JSON] = field(default_factory=dict)


ResultPayload = InlineResult | ResultPage | ResultPointer


@dataclass(frozen=True, slots=True)
class Candidates:
    """One page of upstream jobs a lost submit may have created (see ``find_submitted``)."""

    upstream_ids: tuple[str, ...]
    next_page: int | None
    """The page to ask for next, or ``None`` when older jobs cannot match."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    submit: bool
    cancel: bool = False
    rerun: bool = False
    continue_: bool = False
    partial_results: bool = False
    push: bool = False
    result_kind: ResultKind = ResultKind.INLINE

    def as_dict(self) -> dict[str, JSON]:
        return {
            "submit": self.submit,
            "adopt": True,
            "cancel": self.cancel,
            "rerun": self.rerun,
            "continue": self.continue_,
            "partial_results": self.partial_results,
            "push": self.push,
            "result_kind": self.result_kind.value,
        }


# --------------------------------------------------------------------------------------------------
# Errors. ``code`` is stable: the gateway exposes it in problem+json bodies and metrics labels.


class AdapterError(Exception):
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        hints: RateHints = NO_HINTS,
        detail: JSON = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.hints = hints
        self.detail = detail

    def scrub(self, scrubber: Scrubber) -> None:
        """Mask secrets the provider echoed into this error. In place, so that a bare ``raise``
        re-raises it with its traceback and cause."""
        self.message = scrubber.text(self.message)
        self.args = (self.message, *self.args[1:])
        self.detail = scrubber.value(self.detail)


class AuthRejected(AdapterError):
    code = "upstream_auth_rejected"


class NotFound(AdapterError):
    code = "upstream_not_found"


class RequestRejected(AdapterError):
    """The provider refused the request itself (400/413/422): retrying the same call cannot help."""

    code = "upstream_rejected"


class RateLimited(AdapterError):
    code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class UpstreamUnavailable(AdapterError):
    """5xx, timeouts and connection failures: transient, retry later."""

    code = "upstream_unavailable"


class NotSent(UpstreamUnavailable):
    """No connection could be made, so the request never reached the provider: unlike a 5xx or a
    read timeout, this proves the call had no effect upstream (a submit created nothing)."""


class MalformedResponse(AdapterError):
    code = "upstream_malformed"


class UnsupportedAction(AdapterError):
    code = "action_not_supported"


class ResultExpired(AdapterError):
    code = "result_expired"


TRANSIENT_ERRORS: tuple[type[AdapterError], ...] = (
    RateLimited,
    UpstreamUnavailable,
    MalformedResponse,
)
"""Errors after which the runner polls again later instead of ending the job."""


# --------------------------------------------------------------------------------------------------
# The protocol


@runtime_checkable
class Adapter(Protocol):
    """One provider. Every method makes at most one upstream call."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def status_table(self) -> Mapping[str, JobState]: ...

    def auth_headers(self) -> dict[str, str]:
        """The header that carries the provider key (the result fetcher needs it for proxies)."""
        ...

    async def submit(self, request: Mapping[str, JSON]) -> Submission: ...

    async def fetch_status(self, upstream_id: str) -> StatusReport: ...

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload: ...

    async def cancel(self, upstream_id: str) -> Submission: ...

    async def rerun(self, upstream_id: str) -> Submission: ...

    async def continue_(self, upstream_id: str, params: Mapping[str, JSON]) -> Submission: ...

    async def find_submitted(
        self, request: Mapping[str, JSON], *, since: datetime, until: datetime, page: int = 1
    ) -> Candidates:
        """Upstream jobs created between ``since`` and ``until`` that match ``request``: how a
        submit whose answer was lost in a crash is reconciled. Raises :class:`UnsupportedAction`
        where the provider offers no way to tell."""
        ...
