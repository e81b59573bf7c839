"""The client's sans-I/O core: what to send, and what an answer means. No sockets, no sleeps, no
clocks: the drivers (:mod:`jobgate.client.sync`, :mod:`jobgate.client.aio`) send each
:class:`Call`, hand back the answer, and do what the core says (return, raise, sleep and retry).
Time and randomness come in as arguments, so every rule here is unit-tested without a server.

Single calls go through an :class:`Exchange` (parse, raise the typed problem or
:class:`~jobgate.client.errors.UnexpectedAnswer`, or retry after N seconds, within the retry
budget of :class:`Attempts` and before any deadline). A call may be rebuilt for each attempt
(:class:`Calls`): :class:`ResultWait` turns a wait of any length into long polls the gateway
accepts. Operations of several requests are small state machines the drivers loop over:
:class:`JobPages` (the list cursor), :class:`WaitLoop` (long polls to a deadline) and
:class:`ResultPages` here; :class:`~jobgate.client.download.DownloadPlan` (resumable, verified
downloads) and :class:`~jobgate.client.events.EventStream` (SSE with Last-Event-ID reconnects)
in their own modules. Each driver only does the I/O these say, so the blocking and the asyncio
client cannot decide differently.

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
from typing import Any, Generic, Protocol, TypeVar
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
    UnexpectedAnswer,
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
NOT_READY = "result_not_ready"
MAX_RETRY_AFTER_DIGITS = 9
"""A Retry-After of more digits (over 31 years) is garbage, read as absent: ``int()`` of a long
enough digit string raises, and ``float()`` of a longer one overflows."""
SMALL_RESULT = 1 << 20
"""A JSON result answer up to this many bytes is read whole to see whether it is jobgate's own
(inline or a page); anything larger, or not JSON, is the provider's document, streamed."""

_PROBLEM_TYPES = ("application/problem+json", "application/json")


# -- calls --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request, and how to read its answer.

    ``idempotent``: may be sent again after a 429/503 or a connection error (GET, DELETE, and a
    submit, which always carries an Idempotency-Key so that a retry replays rather than duplicates).
    ``wait``: seconds the server may hold the answer (a long poll), added to the read timeout.
    ``settled``: error answers (status, code) that, to a resent call, mean the first one did it:
    a DELETE whose answer was lost finds the job gone. ``parse`` reads those answers too.
    ``stream_large``: a driver that can hand out a body unread may do so when it is not small
    JSON (:func:`small_json`); ``parse`` is only for the bodies read whole.
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
    settled: tuple[tuple[int, str], ...] = ()
    stream_large: bool = False


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


def get_job(job_id: str, *, wait: float | None = None, retry: bool = True) -> Call[JobOut]:
    """``retry=False``: one try, for a caller that has a fallback and no time to spare."""
    params = (("wait", number(wait)),) if wait else ()
    return Call("GET", job_path(job_id), _job, params=params, idempotent=retry, wait=wait or 0.0)


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


def small_json(headers: Mapping[str, str]) -> bool:
    """Whether a result answer is JSON of a known length under :data:`SMALL_RESULT` bytes."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    length = headers.get("content-length", "")
    json_type = content_type == "application/json" or content_type.endswith("+json")
    return json_type and length.isdigit() and len(length) < 10 and int(length) <= SMALL_RESULT


def result(
    job_id: str,
    *,
    wait: float | None = None,
    page: int | None = None,
    page_size: int | None = None,
    stream: bool = False,
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
        stream_large=stream,
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
    return Call(
        "DELETE",
        job_path(job_id),
        nothing,
        idempotent=True,
        ok=(200, 204),
        settled=((404, "job_not_found"),),
    )


# -- answers: problems, Retry-After and the retry decision ---------------------------------------


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in seconds: delta-seconds, or an HTTP date (RFC 9110), relative to ``now``.
    A date in the past is 0; garbage is ``None`` (as if absent)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value)) if len(value) <= MAX_RETRY_AFTER_DIGITS else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
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
    """The longest wait before a retry. A Retry-After longer than this is not retried early:
    its problem is raised, ``retry_after`` set, for the caller to decide."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Sleep this many seconds, then send the call again."""

    delay: float


def retry_delay(
    call: Call[Any],
    problem: ProblemError | None,
    attempt: int,
    policy: RetryPolicy,
    left: float | None = None,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or ``None``: do not retry.

    ``problem`` is the error answer, or ``None`` for a connection failure. Only idempotent calls
    are retried: a cancel whose answer was lost may have happened, so resending it is the
    caller's decision, not ours. ``left``: seconds to the operation's deadline; a retry that
    would start at or after it is not made.
    """
    if not call.idempotent or attempt >= policy.max_retries:
        return None
    if problem is None:
        delay = min(policy.max_retry_wait, TRANSPORT_BACKOFF * 2.0**attempt)
    else:
        keyed = any(name == "Idempotency-Key" for name, _ in call.headers)
        retryable = problem.status in RETRYABLE_STATUS or (
            # The same key is still running elsewhere: its outcome will be replayed to a retry.
            keyed and problem.status == 409 and problem.code == IN_FLIGHT
        )
        if not retryable:
            return None
        if problem.retry_after is None:
            delay = min(policy.max_retry_wait, DEFAULT_RETRY_WAIT * 2.0**attempt)
        elif problem.retry_after > policy.max_retry_wait:
            # Retrying after a shorter wait than asked would only be refused again (and counts
            # against a rate limit): the caller gets the problem, with retry_after, instead.
            return None
        else:
            delay = problem.retry_after
    if left is not None and delay >= left:
        return None
    return delay


class Attempts:
    """One operation's retry budget, bounded by its deadline (monotonic seconds, or ``None``)."""

    def __init__(self, policy: RetryPolicy, url: str, deadline: float | None = None) -> None:
        self.policy = policy
        self.url = url
        self.deadline = deadline
        self.attempt = 0

    def refused(self, call: Call[Any], problem: ProblemError, clock: float) -> Retry:
        """An error answer: retry it, or raise it."""
        delay = retry_delay(call, problem, self.attempt, self.policy, self._left(clock))
        if delay is None:
            raise problem
        self.attempt += 1
        return Retry(delay)

    def failed(self, call: Call[Any], reason: str, clock: float) -> Retry:
        """No answer (refused, reset, timed out): retry, or raise :class:`GatewayUnreachable`."""
        delay = retry_delay(call, None, self.attempt, self.policy, self._left(clock))
        if delay is None:
            raise GatewayUnreachable(self.url, reason)
        self.attempt += 1
        return Retry(delay)

    def _left(self, clock: float) -> float | None:
        return None if self.deadline is None else self.deadline - clock


class Calls(Protocol[T]):
    """Calls built afresh for each attempt: a long poll whose ``?wait=`` shrinks to its deadline,
    asked ``again`` while its answer says "not yet" and time is left."""

    @property
    def deadline(self) -> float | None: ...

    def next_call(self, clock: float) -> Call[T]: ...

    def again(self, problem: ProblemError, clock: float) -> bool: ...


def unexpected(response: httpx.Response, what: str = "") -> UnexpectedAnswer:
    content_type = response.headers.get("content-type", "")
    return UnexpectedAnswer(response.status_code, content_type, response.content, what=what)


class Exchange(Generic[T]):
    """One operation's attempts: each answer is parsed, raised, or turned into a :class:`Retry`.

    ``calls`` is one call, sent as it is each time, or :class:`Calls` that build each attempt;
    retries never go past their deadline. The driver asks :meth:`next_call` before each send.
    """

    def __init__(self, calls: Call[T] | Calls[T], policy: RetryPolicy, url: str) -> None:
        self.calls = calls
        self.call: Call[T] | None = calls if isinstance(calls, Call) else None
        deadline = None if isinstance(calls, Call) else calls.deadline
        self.attempts = Attempts(policy, url, deadline)

    @property
    def attempt(self) -> int:
        return self.attempts.attempt

    def next_call(self, clock: float) -> Call[T]:
        if not isinstance(self.calls, Call):
            self.call = self.calls.next_call(clock)
        assert self.call is not None
        return self.call

    def streams(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether the driver hands this answer's body out unread (a large result)."""
        call = self._current()
        return call.stream_large and status in call.ok and not small_json(headers)

    def answered(self, response: httpx.Response, now: datetime, clock: float) -> T | Retry:
        """A whole answer: its value, a :class:`Retry`, or the problem raised."""
        call = self._current()
        if response.status_code in call.ok:
            return self.parse(response)
        problem = problem_from(response, now)
        if self.attempts.attempt > 0 and (problem.status, problem.code) in call.settled:
            return self.parse(response)
        if not isinstance(self.calls, Call) and self.calls.again(problem, clock):
            return Retry(0.0)  # not ready yet, and time is left: the next call waits what is left
        return self.attempts.refused(call, problem, clock)

    def parse(self, response: httpx.Response) -> T:
        """The answer's value; a body that does not read raises :class:`UnexpectedAnswer` (one
        line, with no pydantic error chained to it)."""
        try:
            return self._current().parse(response)
        except ValueError:  # pydantic's ValidationError is one, and so is a JSON decode error
            pass
        raise unexpected(response)

    def failed(self, reason: str, clock: float) -> Retry:
        """No answer (refused, reset, timed out): retry, or raise :class:`GatewayUnreachable`."""
        return self.attempts.failed(self._current(), reason, clock)

    def _current(self) -> Call[T]:
        assert self.call is not None, "next_call() first"
        return self.call


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
    ``timeout`` seconds have passed on the driver's monotonic clock. Each poll is one
    :class:`Exchange` over this loop, so its retries stop at the deadline too."""

    def __init__(self, job_id: str, timeout: float | None, now: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else now + timeout
        self.last: JobOut | None = None

    def next_call(self, clock: float) -> Call[JobOut]:
        if self.deadline is None:
            return get_job(self.job_id, wait=MAX_WAIT_PER_CALL)
        left = self.deadline - clock
        if left <= 0 and self.last is not None:
            raise WaitTimeout(self.last, self.timeout or 0.0)
        return get_job(self.job_id, wait=min(MAX_WAIT_PER_CALL, max(0.0, left)))

    def again(self, problem: ProblemError, clock: float) -> bool:
        return False

    def feed(self, job: JobOut) -> JobOut | None:
        """The job when it is finished, else ``None``: call :meth:`next_call` again."""
        self.last = job
        return job if job.state in FINISHED else None


class ResultWait(Generic[T]):
    """A call that waits up to ``wait`` seconds for a job's result to exist.

    The gateway refuses a ``?wait=`` over its ``server.max_wait_seconds`` (60 by default), so a
    longer wait is long polls of at most :data:`MAX_WAIT_PER_CALL` each: ``build`` makes the call
    for a given ``?wait=`` (``None``: no wait), and a ``result_not_ready`` answer is asked
    again while the job is not over and time is left."""

    def __init__(self, build: Callable[[float | None], Call[T]], wait: float | None, now: float):
        self.build = build
        self.deadline = now + wait if wait else None

    def next_call(self, clock: float) -> Call[T]:
        if self.deadline is None:
            return self.build(None)
        return self.build(min(MAX_WAIT_PER_CALL, max(0.0, self.deadline - clock)))

    def again(self, problem: ProblemError, clock: float) -> bool:
        return (
            self.deadline is not None
            and problem.status == 409
            and problem.code == NOT_READY
            # A job that ended without a result never gets one: no use asking again.
            and problem.extra.get("state") not in FINISHED
            and self.deadline - clock > 0
        )


def result_wait(
    job_id: str,
    *,
    wait: float | None,
    now: float,
    page: int | None = None,
    page_size: int | None = None,
    stream: bool = False,
) -> ResultWait[ResultOut | bytes]:
    def build(seconds: float | None) -> Call[ResultOut | bytes]:
        return result(job_id, wait=seconds, page=page, page_size=page_size, stream=stream)

    return ResultWait(build, wait, now)


# -- paged results --------------------------------------------------------------------------------


class ResultPages:
    """Every page of a paged result; an inline result is its one and only page."""

    def __init__(self, job_id: str, *, page_size: int = 100, wait: float | None = None) -> None:
        self.job_id = job_id
        self.page_size = page_size
        self.wait = wait
        self.page = 1
        self.done = False

    def next_call(self, clock: float) -> ResultWait[ResultOut | bytes] | None:
        if self.done:
            return None
        # Only the first read waits for the result to exist; later pages are there already.
        wait = self.wait if self.page == 1 else None
        return result_wait(
            self.job_id, wait=wait, now=clock, page=self.page, page_size=self.page_size
        )

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


@dataclass(frozen=True, slots=True)
class ResultStream(Generic[T]):
    """A result that is the provider's document (``content_type``, ``size`` when known), its
    bytes in ``chunks`` as they arrive: an iterator, or an async one."""

    content_type: str
    size: int | None
    chunks: T

    @property
    def is_json(self) -> bool:
        kind = self.content_type.split(";")[0].strip().lower()
        return kind == "application/json" or kind.endswith("+json")


def stream_of(response: httpx.Response, chunks: T) -> ResultStream[T]:
    """The document ``response`` carries, its bytes read through ``chunks`` (the driver's)."""
    length = response.headers.get("content-length", "")
    size = int(length) if length.isdigit() else None
    return ResultStream(response.headers.get("content-type", ""), size, chunks)


# -- what both drivers share --------------------------------------------------------------------


STREAM_READ_TIMEOUT = 45.0
"""An event stream's read timeout: three of the gateway's 15 s keep-alives. A connection silent
for longer is dead (a half-open TCP connection never says so), and is reconnected."""


@dataclass(frozen=True, slots=True, repr=False)
class Config:
    """A client's settings, resolved once: the URL and key from the arguments or the environment
    (``JOBGATE_URL``, ``JOBGATE_API_KEY``). The repr shows neither the key nor a URL's user info
    (where a key may have been put)."""

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

    def __repr__(self) -> str:
        return f"Config(url={self.display_url!r}, timeout={self.timeout!r}, policy={self.policy!r})"

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
