"""Request and response models. The handlers validate with them and ``/openapi.json`` is generated
from them, so the documented shapes are the enforced ones."""

from __future__ import annotations

from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.auth import Scope

MAX_LABELS = 32


State = Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Example = tuple[str, dict[str, Any]]
"""A summary and a value: ``/docs`` offers each as a ready body for try-it."""

SUBMIT_EXAMPLES: dict[str, Example] = {
    "extract": (
        "Submit an extract job (inline result)",
        {
            "provider": "extract",
            "request": {"url": "https://example.com", "maxPages": 3},
            "labels": {"team": "growth"},
        },
    ),
    "catchall": (
        "Submit a CatchAll search (paged records)",
        {"provider": "catchall", "request": {"query": "Series B rounds in logistics", "limit": 10}},
    ),
    "pulse": (
        "Submit a Pulse extraction (the sandbox's ?sandbox=large gives an is_url result)",
        {"provider": "pulse", "request": {"fileUrl": "https://example.com/report.pdf"}},
    ),
    "adopt": (
        "Adopt a platform job created elsewhere",
        {"provider": "platform", "upstream_id": "job_0123456789abcdef", "labels": {"src": "etl"}},
    ),
}
CONTINUE_EXAMPLES: dict[str, Example] = {
    "catchall": ("CatchAll: more records, up to 30", {"new_limit": 30}),
}
KEY_EXAMPLES: dict[str, Example] = {
    "service": (
        "A key for a service that submits and reads",
        {"scopes": ["jobs:read", "jobs:write"], "name": "billing worker", "expires_in_days": 90},
    ),
}


def _examples(examples: dict[str, Example]) -> ConfigDict:
    return ConfigDict(
        extra="forbid", json_schema_extra={"examples": [value for _, value in examples.values()]}
    )


class SubmitBody(_Strict):
    """Submit a new upstream job (``request``) or adopt an existing one (``upstream_id``)."""

    model_config = _examples(SUBMIT_EXAMPLES)

    provider: str = Field(description="catchall, extract, pulse or platform", min_length=1)
    request: dict[str, Any] | None = Field(
        None, description="The provider's native submit body, forwarded as it is."
    )
    upstream_id: str | None = Field(
        None, min_length=1, max_length=256, description="Adopt this existing upstream job."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form tags for filtering."
    )
    callback_url: str | None = Field(
        None, max_length=2048, description="POSTed the signed canonical job when it finishes."
    )

    @field_validator("labels")
    @classmethod
    def _labels_bounded(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        for key, item in value.items():
            if not key or len(key) > 64 or ":" in key or len(item) > 256:
                raise ValueError(
                    "label keys are 1-64 characters without ':', values at most 256 characters"
                )
        return value

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("callback_url must be an absolute http or https URL")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.request is None) == (self.upstream_id is None):
            raise ValueError("give exactly one of 'request' (submit) or 'upstream_id' (adopt)")
        return self


class ContinueBody(_Strict):
    """Continue a finished job: for catchall, a higher record limit."""

    model_config = _examples(CONTINUE_EXAMPLES)

    # strict: the schema says integer, so true and "30" are refused rather than read as 1 and 30.
    new_limit: int | None = Field(
        None, ge=1, strict=True, description="CatchAll: the new, higher record limit."
    )


class Progress(BaseModel):
    fraction: float | None
    step: str | None
    step_index: int | None
    step_count: int | None


class JobError(BaseModel):
    code: str
    message: str


class ResultSummary(BaseModel):
    """Whether a result can be read, and where it comes from (``GET /v1/jobs/{id}/result``)."""

    available: bool
    partial: bool
    kind: Literal["inline", "paged", "pointer"] | None
    total_records: int | None
    source: Literal["jobgate", "provider"] | None = Field(
        description="``jobgate``: served from jobgate's copy, with no upstream call; "
        "``provider``: read from the provider on each request; null: no result to serve"
    )
    stored: bool = Field(description="jobgate holds a whole copy of the result")
    capturing: bool = Field(
        description="a capture of the result is under way or owed (retried after a failure)"
    )
    size: int | None = Field(description="bytes of the stored copy")
    sha256: str | None = Field(description="SHA-256 of the stored copy: its ETag")
    expires_at: str | None = Field(description="when the stored copy is deleted (retention)")
    error: JobError | None = Field(description="why the last capture failed, if it did")


class CadenceOut(BaseModel):
    """Why a running job's next poll is when it is."""

    schedule: Literal["learned", "guidance", "push", "callback", "retry"] = Field(
        description="learned: from this provider's finished jobs; guidance: the provider's "
        "published cadence (until enough jobs have finished); push: the provider pushes the "
        "end, polling is the safety net; callback: the provider pushed, the job is polled now; "
        "retry: after an upstream fault"
    )
    expected_lag_seconds: float = Field(
        description="seconds from the job's end to jobgate seeing it, if it ends before the "
        "next poll"
    )


class JobOut(BaseModel):
    """The canonical job."""

    id: str
    provider: str
    upstream_id: str
    state: State
    native_status: str | None
    progress: Progress
    eta: str | None
    result: ResultSummary
    error: JobError | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    next_poll_at: str | None
    cadence: CadenceOut | None = Field(
        description="how the next poll was chosen; null once the job is not polled"
    )
    polls: int
    rerun_of: str | None
    labels: dict[str, str]
    version: int


class JobEventData(JobOut):
    """``created`` and ``progress`` events: the job as the change left it."""

    model_config = ConfigDict(extra="forbid")
    job_id: str


class StateEventData(JobEventData):
    """``state`` events: the job after a change of state, and the state it left."""

    from_: State = Field(alias="from")


class RecordsEventData(_Strict):
    """``records`` events: catchall records that arrived while the job was ``enriching``, at most
    100 per event, from ``offset`` on; the finished result is read from ``/result``."""

    offset: int = Field(ge=0)
    count: int = Field(ge=1, le=100)
    total_records: int | None
    partial: bool
    records: list[Any]
    job_id: str
    provider: str
    state: State


class EndEventData(_Strict):
    """``end``: the job's stream is over (the job finished, or was deleted); no ``id``."""

    job_id: str
    state: State | None
    reason: Literal["finished", "deleted"]


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class ResultOut(BaseModel):
    """An inline result (``data``) or one page of records (``records``)."""

    kind: Literal["inline", "paged"]
    partial: bool
    data: Any | None = None
    page: int | None = None
    page_size: int | None = None
    total_pages: int | None = None
    total_records: int | None = None
    records: list[Any] | None = None
    meta: dict[str, Any] | None = None


class ProviderOut(BaseModel):
    name: str
    base_url: str
    capabilities: dict[str, Any]
    policy: dict[str, Any]
    circuit: str


class ProviderList(BaseModel):
    providers: list[ProviderOut]


class Problem(BaseModel):
    """RFC 9457 problem details. ``code`` is stable; ``errors`` lists field problems."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: str


# -- keys and stream tokens ------------------------------------------------------------------------


class KeyCreateBody(_Strict):
    """A new key for the caller's own tenant."""

    model_config = _examples(KEY_EXAMPLES)

    scopes: list[Scope] = Field(min_length=1, description="jobs:read, jobs:write and/or admin")
    name: str = Field("", max_length=200, description="What the key is for (shown in lists)")
    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="Lifetime in days; none: until revoked"
    )


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str = Field(description="jg_ and the key's first 8 characters: safe to show and log")
    scopes: list[Scope]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None = Field(description="Updated about once a minute, not per request")
    source: Literal["store", "config"]


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, stored only as a keyed hash")


class KeyList(BaseModel):
    keys: list[KeyOut]


class StreamTokenOut(BaseModel):
    """A short-lived, read-only token for ``?access_token=`` on the SSE routes only."""

    token: str
    expires_at: str
    tenant: str
