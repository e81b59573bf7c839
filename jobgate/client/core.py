"""The client's sans-I/O core: what to send, and what an answer means. No sockets, no sleeps, no
clocks: the drivers (:mod:`jobgate.client.sync`, :mod:`jobgate.client.aio`) send each
:class:`Call`, hand back the answer, and do what the core says (return, raise, sleep and retry).
Time and randomness come in as arguments, so every rule here is unit-tested without a server.

Single calls go through an :class:`Exchange` (parse, raise the typed problem, or retry after N
seconds). Operations of several requests are small state machines the drivers loop over:
:class:`JobPages` (the list cursor), :class:`WaitLoop` (long polls to a deadline) and
:class:`ResultPages` here; :class:`~jobgate.client.download.DownloadPlan` (resumable, verified
downloads) and :class:`~jobgate.client.events.EventStream` (SSE with Last-Event-ID reconnects)
in their own modules.

The models are the gateway's own (:mod:`gateway.web.models`): the client validates answers with
the classes the server renders them from, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from gateway.web.models import (
    JobList,
    JobOut,
    Problem,
    ProviderList,
    ProviderOut,
    ResultOut,
)
from jobgate.client.errors import (
    BY_STATUS,
    GatewayUnreachable,
    ProblemError,
    WaitTimeout,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})
MAX_WAIT_PER_CALL = 30.0
"""Seconds of one long poll: under the gateway's ``server.max_wait_seconds`` (60 by default) and
short enough that a proxy's idle timeout does not cut it."""
DEFAULT_RETRY_WAIT = 1.0
"""A 429/503 without Retry-After: wait this long (then double) rather than hammer the gateway."""
TRANSPORT_BACKOFF = 0.25
"""The first wait after a connection error; it doubles with each attempt."""
RETRYABLE_STATUS = frozenset({429, 503})
IN_FLIGHT = "idempotency_key_in_flight"

_PROBLEM_TYPES = ("application/problem+json", "application/json")


# -- calls --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request, and how to read its answer.

    ``idempotent``: may be sent again after a 429/503 or a connection error (GET, DELETE, and a
    submit, which always carries an Idempotency-Key so that a retry replays rather than duplicates).
    ``wait``: seconds the server may hold the answer (a long poll), added to the read timeout.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None
    has_body: bool = False
    idempotent: bool = False
    ok: tuple[int, ...] = (200,)
    wait: float = 0.0


def _job(response: httpx.Response) -> JobOut:
    return JobOut.model_validate_json(response.content)


def _job_list(response: httpx.Response) -> JobList:
    return JobList.model_validate_json(response.content)


def _providers(response: httpx.Response) -> list[ProviderOut]:
    return ProviderList.model_validate_json(response.content).providers


def nothing(response: httpx.Response) -> None:
    return None


def number(value: float) -> str:
    return f"{value:g}"


def _labels(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(("label", f"{key}:{value}") for key, value in (labels or {}).items())


def providers() -> Call[list[ProviderOut]]:
    return Call("GET", "/v1/providers", _providers, idempotent=True)


def new_idempotency_key() -> str:
    return f"jobgate-client-{uuid.uuid4()}"


def _create(
    provider: str,
    what: dict[str, Any],
    labels: Mapping[str, str] | None,
    callback_url: str | None,
    idempotency_key: str | None,
    new_key: Callable[[], str],
) -> Call[JobOut]:
    body: dict[str, Any] = {"provider": provider, **what}
    if labels:
        body["labels"] = dict(labels)
    if callback_url is not None:
        body["callback_url"] = callback_url
    key = idempotency_key if idempotency_key is not None else new_key()
    # The key makes the submit safe to resend: the gateway replays the first outcome for it.
    return Call(
        "POST",
        "/v1/jobs",
        _job,
        headers=(("Idempotency-Key", key),),
        body=body,
        has_body=True,
        idempotent=True,
        ok=(200, 201),
    )


def submit(
    provider: str,
    request: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    new_key: Callable[[], str] = new_idempotency_key,
) -> Call[JobOut]:
    what = {"request": dict(request)}
    return _create(provider, what, labels, callback_url, idempotency_key, new_key)


def adopt(
    provider: str,
    upstream_id: str,
    *,
    labels: Mapping[str, str] | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    new_key: Callable[[], str] = new_idempotency_key,
) -> Call[JobOut]:
    what = {"upstream_id": upstream_id}
    return _create(provider, what, labels, callback_url, idempotency_key, new_key)


def job_path(job_id: str, tail: str = "") -> str:
    # Ids go in the path as they are, escaped: a "/" or "?" in a mistyped id must not reach
    # another route.
    return f"/v1/jobs/{quote(job_id, safe='')}{tail}"


def get_job(job_id: str, *, wait: float | None = None) -> Call[JobOut]:
    params = (("wait", number(wait)),) if wait else ()
    return Call("GET", job_path(job_id), _job, params=params, idempotent=True, wait=wait or 0.0)


def list_page(
    *,
    provider: str | None = None,
    state: str | None = None,
    labels: Mapping[str, str] | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Call[JobList]:
    params: list[tuple[str, str]] = []
    if provider is not None:
        params.append(("provider", provider))
    if state is not None:
        params.append(("state", state))
    params.extend(_labels(labels))
    params.append(("limit", str(limit)))
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", "/v1/jobs", _job_list, params=tuple(params), idempotent=True)


def parse_result(response: httpx.Response) -> ResultOut | bytes:
    """An inline result or a page of records is jobgate's :class:`ResultOut`; anything else (a
    large result: the provider's own document) is returned as its bytes.

    The gateway marks neither with a header, so the body decides: a JSON object whose ``kind`` is
    ``inline`` or ``paged`` is ours.
    """
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            decoded = json.loads(response.content)
        except ValueError:
            return response.content
        if (
            isinstance(decoded, dict)
            and decoded.get("kind") in ("inline", "paged")
            and isinstance(decoded.get("partial"), bool)
        ):
            return ResultOut.model_validate(decoded)
    return response.content


def result(
    job_id: str,
    *,
    wait: float | None = None,
    page: int | None = None,
    page_size: int | None = None,
) -> Call[ResultOut | bytes]:
    params: list[tuple[str, str]] = []
    if wait:
        params.append(("wait", number(wait)))
    if page is not None:
        params.append(("page", str(page)))
    if page_size is not None:
        params.append(("page_size", str(page_size)))
    return Call(
        "GET",
        job_path(job_id, "/result"),
        parse_result,
        params=tuple(params),
        idempotent=True,
        wait=wait or 0.0,
    )


def cancel(job_id: str) -> Call[JobOut]:
    # Actions are never resent: a cancel or rerun whose answer was lost may have happened.
    return Call("POST", job_path(job_id, "/cancel"), _job, ok=(200, 202))


def rerun(job_id: str) -> Call[JobOut]:
    return Call("POST", job_path(job_id, "/rerun"), _job, ok=(200, 201))


def continue_(job_id: str, *, new_limit: int | None = None) -> Call[JobOut]:
    if new_limit is None:
        return Call("POST", job_path(job_id, "/continue"), _job, ok=(200, 202))
    return Call(
        "POST",
        job_path(job_id, "/continue"),
        _job,
        body={"new_limit": new_limit},
        has_body=True,
        ok=(200, 202),
    )


def delete(job_id: str) -> Call[None]:
    return Call("DELETE", job_path(job_id), nothing, idempotent=True, ok=(200, 204))


# -- answers: problems, Retry-After and the retry decision ---------------------------------------


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds: delta-seconds, or an HTTP date (RFC 9110), relative to ``now``.
    A date in the past is 0; garbage is ``None`` (as if absent)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def problem_from(response: httpx.Response, now: datetime) -> ProblemError:
    """The typed exception for an error answer: the problem's fields when the body is one, else
    ``http_<status>`` and the start of the body."""
    status = response.status_code
    kind = BY_STATUS.get(status, ProblemError)
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    request_id = response.headers.get("x-request-id")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    body: Any = None
    if content_type in _PROBLEM_TYPES:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        try:
            problem = Problem.model_validate(body)
        except ValidationError:
            problem = None
        known = set(Problem.model_fields)
        extra = {k: v for k, v in body.items() if k not in known}
        if problem is not None:
            return kind(
                status=status,
                code=problem.code,
                detail=problem.detail,
                title=problem.title,
                errors=problem.errors,
                retry_after=retry_after,
                request_id=request_id,
                extra=extra,
            )
        return kind(
            status=status,
            code=str(body["code"]),
            detail=str(body.get("detail") or body.get("title") or response.reason_phrase),
            title=str(body.get("title") or ""),
            retry_after=retry_after,
            request_id=request_id,
            extra=extra,
        )
    text = response.content[:200].decode("utf-8", "replace").strip()
    return kind(
        status=status,
        code=f"http_{status}",
        detail=text or response.reason_phrase or f"HTTP {status}",
        title=response.reason_phrase,
        retry_after=retry_after,
        request_id=request_id,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    max_retry_wait: float = 30.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Sleep this many seconds, then send the call again."""

    delay: float


def retry_delay(
    call: Call[Any], problem: ProblemError | None, attempt: int, policy: RetryPolicy
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or ``None``: do not retry.

    ``problem`` is the error answer, or ``None`` for a connection failure. Only idempotent calls
    are retried: a cancel whose answer was lost may have happened, so resending it is the
    caller's decision, not ours.
    """
    if not call.idempotent or attempt >= policy.max_retries:
        return None
    if problem is None:
        return min(policy.max_retry_wait, TRANSPORT_BACKOFF * 2.0**attempt)
    keyed = any(name == "Idempotency-Key" for name, _ in call.headers)
    retryable = problem.status in RETRYABLE_STATUS or (
        # The same key is still running elsewhere: its outcome will be replayed to a retry.
        keyed and problem.status == 409 and problem.code == IN_FLIGHT
    )
    if not retryable:
        return None
    if problem.retry_after is not None:
        return min(policy.max_retry_wait, problem.retry_after)
    return min(policy.max_retry_wait, DEFAULT_RETRY_WAIT * 2.0**attempt)


class Exchange(Generic[T]):
    """One call's attempts: each answer is parsed, raised, or turned into a :class:`Retry`."""

    def __init__(self, call: Call[T], policy: RetryPolicy, url: str) -> None:
        self.call = call
        self.policy = policy
        self.url = url
        self.attempt = 0

    def answered(self, response: httpx.Response, now: datetime) -> T | Retry:
        if response.status_code in self.call.ok:
            return self.call.parse(response)
        return self.refused(response, now)

    def refused(self, response: httpx.Response, now: datetime) -> Retry:
        """An error answer (its body read): retry it, or raise it."""
        problem = problem_from(response, now)
        delay = retry_delay(self.call, problem, self.attempt, self.policy)
        if delay is None:
            raise problem
        self.attempt += 1
        return Retry(delay)

    def failed(self, reason: str) -> Retry:
        """No answer (refused, reset, timed out): retry, or raise :class:`GatewayUnreachable`."""
        delay = retry_delay(self.call, None, self.attempt, self.policy)
        if delay is None:
            raise GatewayUnreachable(self.url, reason)
        self.attempt += 1
        return Retry(delay)


def transport_reason(exc: Exception) -> str:
    """A short reason for a transport failure: its class and message, never the request."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def safe_url(url: str) -> str:
    """``url`` without user info, for messages: a key put in the URL must not be echoed."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else str(parsed)


# -- the list cursor ------------------------------------------------------------------------------


class JobPages:
    """Every job matching a filter, page by page, stopping at the last page or at ``limit``."""

    def __init__(
        self,
        *,
        provider: str | None = None,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.provider = provider
        self.state = state
        self.labels = dict(labels or {})
        self.page_size = page_size
        self.left = limit
        self.cursor: str | None = None
        self.done = limit is not None and limit <= 0

    def next_call(self) -> Call[JobList] | None:
        if self.done:
            return None
        size = self.page_size if self.left is None else min(self.page_size, self.left)
        return list_page(
            provider=self.provider,
            state=self.state,
            labels=self.labels,
            limit=size,
            cursor=self.cursor,
        )

    def feed(self, page: JobList) -> list[JobOut]:
        jobs = page.jobs
        if self.left is not None:
            jobs = jobs[: self.left]
            self.left -= len(jobs)
        # An empty page with a cursor would loop forever: stop there too.
        self.cursor = page.next_cursor
        self.done = (
            self.cursor is None or not page.jobs or (self.left is not None and self.left <= 0)
        )
        return jobs


# -- wait: long polls to a deadline ---------------------------------------------------------------


class WaitLoop:
    """Long-poll a job (at most :data:`MAX_WAIT_PER_CALL` per call) until it is finished or
    ``timeout`` seconds have passed on the driver's monotonic clock."""

    def __init__(self, job_id: str, timeout: float | None, now: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else now + timeout
        self.last: JobOut | None = None

    def next_call(self, now: float) -> Call[JobOut]:
        if self.deadline is None:
            return get_job(self.job_id, wait=MAX_WAIT_PER_CALL)
        left = self.deadline - now
        if left <= 0 and self.last is not None:
            raise WaitTimeout(self.last, self.timeout or 0.0)
        return get_job(self.job_id, wait=min(MAX_WAIT_PER_CALL, max(0.0, left)))

    def feed(self, job: JobOut) -> JobOut | None:
        """The job when it is finished, else ``None``: call :meth:`next_call` again."""
        self.last = job
        return job if job.state in FINISHED else None


# -- paged results --------------------------------------------------------------------------------


class ResultPages:
    """Every page of a paged result; an inline result is its one and only page."""

    def __init__(self, job_id: str, *, page_size: int = 100, wait: float | None = None) -> None:
        self.job_id = job_id
        self.page_size = page_size
        self.wait = wait
        self.page = 1
        self.done = False

    def next_call(self) -> Call[ResultOut | bytes] | None:
        if self.done:
            return None
        # Only the first read waits for the result to exist; later pages are there already.
        wait = self.wait if self.page == 1 else None
        return result(self.job_id, wait=wait, page=self.page, page_size=self.page_size)

    def feed(self, answer: ResultOut | bytes) -> ResultOut:
        if not isinstance(answer, ResultOut):
            raise TypeError(
                f"job {self.job_id}'s result is a large document, not pages: use download()"
            )
        if answer.kind != "paged":
            self.done = True
            return answer
        total = answer.total_pages
        self.done = (
            not answer.records
            or total is None
            or self.page >= total
            or (answer.page is not None and answer.page >= total)
        )
        self.page += 1
        return answer


# -- what both drivers share --------------------------------------------------------------------


STREAM_READ_TIMEOUT = 45.0
"""An event stream's read timeout: three of the gateway's 15 s keep-alives. A connection silent
for longer is dead (a half-open TCP connection never says so), and is reconnected."""


@dataclass(frozen=True, slots=True)
class Config:
    """A client's settings, resolved once: the URL and key from the arguments or the environment
    (``JOBGATE_URL``, ``JOBGATE_API_KEY``). The key is kept out of the repr."""

    url: str
    api_key: str | None = field(repr=False)
    timeout: float
    policy: RetryPolicy

    @classmethod
    def resolve(
        cls,
        url: str | None,
        api_key: str | None,
        env: Mapping[str, str],
        *,
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
    ) -> Config:
        base = (url or env.get("JOBGATE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else env.get("JOBGATE_API_KEY")
        return cls(base, key or None, timeout, RetryPolicy(max_retries, max_retry_wait))

    @property
    def display_url(self) -> str:
        return safe_url(self.url)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": "jobgate-client", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def timeout_for(self, call: Call[Any], *, stream: bool = False) -> httpx.Timeout:
        """The client's timeout, with room for a long poll's wait, or a stream's silences."""
        read = max(self.timeout, STREAM_READ_TIMEOUT) if stream else self.timeout + call.wait
        return httpx.Timeout(self.timeout, read=read)

    def request_args(self, call: Call[Any], *, stream: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.build_request`` (sync and async alike)."""
        args: dict[str, Any] = {
            "method": call.method,
            "url": call.path,
            "params": list(call.params),
            "headers": dict(call.headers),
            "timeout": self.timeout_for(call, stream=stream),
        }
        if call.has_body:
            args["json"] = call.body
        return args


def now_utc() -> datetime:
    """The wall clock, for Retry-After dates only (drivers pass it in; tests pass their own)."""
    return datetime.now(UTC)
