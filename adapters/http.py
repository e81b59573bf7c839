"""The shared HTTP plumbing of every adapter: one call, explicit timeouts, typed errors, rate hints.

Subclasses supply their auth header, their error-body parser and their status table; this
module turns transport failures, 5xx, 429 and undecodable bodies into ``adapters.base`` errors,
and masks secrets (``adapters.redact``) in every error and report a provider's answer becomes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Concatenate, Final, ParamSpec, Protocol, TypeVar, cast

import aiohttp
import orjson

from adapters.base import (
    JSON,
    NO_HINTS,
    AdapterError,
    AuthRejected,
    Candidates,
    Capabilities,
    MalformedResponse,
    NotFound,
    NotSent,
    RateHints,
    RateLimited,
    RequestRejected,
    ResultExpired,
    ResultPayload,
    StatusReport,
    Submission,
    UnsupportedAction,
    UpstreamUnavailable,
)
from adapters.redact import Scrubber
from gateway.states import JobState

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    total: float = 60.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return _client_timeout(self)


@functools.lru_cache(maxsize=64)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """One ``ClientTimeout`` per distinct setting (it is frozen), not one per call."""
    return aiohttp.ClientTimeout(
        total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
    )


@dataclass(frozen=True, slots=True)
class Connection:
    """Where a provider lives and how to authenticate. The key is excluded from ``repr`` so that a
    logged or raised connection never carries it."""

    base_url: str
    api_key: str = field(repr=False)
    timeouts: Timeouts = Timeouts()

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


class CallObserver(Protocol):
    """Told about every upstream call; the gateway's metrics implement it."""

    def __call__(self, provider: str, operation: str, outcome: str, seconds: float) -> None: ...


# --------------------------------------------------------------------------------------------------
# Pure helpers


def parse_time(value: object) -> datetime | None:
    """ISO 8601 (with ``Z`` or an offset, naive taken as UTC) or epoch seconds; else ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            # An absurd epoch from upstream is a missing timestamp, not a crash in the poll loop.
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """``Retry-After`` as delta-seconds or as an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if seconds < 0:
        return None
    return now + timedelta(seconds=seconds)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def parse_rate_hints(headers: Mapping[str, str], now: datetime) -> RateHints:
    """Retry-After, and the X-RateLimit-* trio (reset in epoch seconds, or seconds if small)."""
    retry_at = parse_retry_after(headers.get("Retry-After"), now)
    reset_raw = _int_header(headers, "X-RateLimit-Reset")
    reset_at: datetime | None = None
    if reset_raw is not None:
        # Some APIs send seconds-until-reset rather than an epoch; no epoch is that small.
        reset_at = (
            now + timedelta(seconds=reset_raw)
            if reset_raw < 1_000_000_000
            else datetime.fromtimestamp(reset_raw, UTC)
        )
    limit = _int_header(headers, "X-RateLimit-Limit")
    remaining = _int_header(headers, "X-RateLimit-Remaining")
    if retry_at is None and reset_at is None and limit is None and remaining is None:
        return NO_HINTS
    return RateHints(retry_at=retry_at, reset_at=reset_at, limit=limit, remaining=remaining)


def lookup_status(table: Mapping[str, JobState], native: object) -> JobState | None:
    """Map a native status through a table whose keys are lower case; unknown gives ``None``."""
    if not isinstance(native, str):
        return None
    return table.get(native.strip().lower())


def require_mapping(body: JSON, what: str) -> dict[str, JSON]:
    if not isinstance(body, dict):
        raise MalformedResponse(f"{what}: expected a JSON object, got {type(body).__name__}")
    return body


def require_str(body: Mapping[str, JSON], *keys: str, what: str) -> str:
    """The first of ``keys`` that holds a non-empty string (providers disagree on field names)."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    raise MalformedResponse(f"{what}: missing {' or '.join(keys)}")


# --------------------------------------------------------------------------------------------------
# The outward boundary

OUTWARD_METHODS: Final = (
    "submit",
    "fetch_status",
    "fetch_result",
    "cancel",
    "rerun",
    "continue_",
    "find_submitted",
)
"""The protocol methods the gateway calls: every provider answer leaves an adapter through one
(``tests/unit/test_redact.py`` checks this list against the ``Adapter`` protocol)."""

_A = TypeVar("_A", bound="HttpAdapter")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _scrubbed(
    method: Callable[Concatenate[_A, _P], Awaitable[_T]],
) -> Callable[Concatenate[_A, _P], Awaitable[_T]]:
    """``method`` with its errors and reports passed through the adapter's scrubber."""

    @functools.wraps(method)
    async def outward(self: _A, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            value = await method(self, *args, **kwargs)
        except AdapterError as error:
            error.scrub(self.scrubber)
            raise
        if isinstance(value, StatusReport | Submission):
            return cast(_T, value.scrubbed(self.scrubber))  # a masked copy of the same type
        return value

    return outward


# --------------------------------------------------------------------------------------------------
# The base class


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: JSON
    hints: RateHints
    headers: Mapping[str, str]


class HttpAdapter:
    """Shared behaviour for adapters that speak JSON over HTTP.

    Subclasses set ``name``, ``capabilities`` and ``status_table``, and implement
    :meth:`auth_headers` and :meth:`error_message`.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    status_table: ClassVar[Mapping[str, JobState]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each protocol method a provider defines so that what it raises or returns is
        scrubbed. Providers quote the key back in error bodies and failed jobs' messages, and
        that text becomes problem details, stored jobs, events, webhooks and log lines. Scrubbing
        here, the one door every answer leaves by, makes all of those clean by construction,
        including errors raised outside :meth:`call` and a provider added later."""
        super().__init_subclass__(**kwargs)
        for name in OUTWARD_METHODS:
            method = cls.__dict__.get(name)
            if inspect.iscoroutinefunction(method):
                setattr(cls, name, _scrubbed(method))

    def __init__(
        self,
        session: aiohttp.ClientSession,
        connection: Connection,
        *,
        clock: Clock = utcnow,
        observer: CallObserver | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        """``secrets`` are masked besides this provider's own key (which is always masked): the
        gateway may pass every configured secret."""
        self.session = session
        self.connection = connection
        self.clock = clock
        self.observer = observer
        self.scrubber = Scrubber((connection.api_key, *secrets))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.connection.base_url!r})"

    # -- to override ---------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.connection.api_key}

    def error_message(self, body: JSON) -> tuple[str, JSON]:
        """The human message and any structured detail from the provider's error body."""
        return (str(body)[:500], None)

    # -- the one call ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json: JSON = None,
        data: Any = None,
        params: Mapping[str, str | int] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Reply:
        """Make one request and return the decoded body, or raise the matching typed error."""
        started = time.perf_counter()
        outcome = "error"
        try:
            reply = await self._send(method, path, json=json, data=data, params=params)
            if reply.status in ok:
                outcome = "ok"
                return reply
            error = self._error_for(reply)
            outcome = error.code.removeprefix("upstream_")
            raise error
        except MalformedResponse:
            outcome = "malformed"
            raise
        except UpstreamUnavailable:
            outcome = "unavailable"
            raise
        finally:
            if self.observer is not None:
                self.observer(self.name, operation, outcome, time.perf_counter() - started)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: JSON,
        data: Any,
        params: Mapping[str, str | int] | None,
    ) -> Reply:
        headers = {"Accept": "application/json", **self.auth_headers()}
        body: bytes | None = None
        if json is not None:
            body = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method,
                self.connection.url(path),
                data=body if body is not None else data,
                params=params,
                headers=headers,
                timeout=self.connection.timeouts.client_timeout(),
                allow_redirects=False,
            ) as response:
                # The secrets go before anything reads the body: a message cut to length could
                # otherwise keep the head of a key the provider quoted back.
                raw = self.scrubber.mask_bytes(await response.read())
                hints = parse_rate_hints(response.headers, self.clock())
                status = response.status
                # Read-only and case-insensitive already: no copy (it outlives the response).
                reply_headers = response.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NotSent(
                f"{self.name}: {method} {path} failed: could not connect ({type(exc).__name__})"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamUnavailable(f"{self.name}: {method} {path} timed out") from exc
        except aiohttp.ClientError as exc:
            # The exception text can carry the URL but never the key, which travels in a header.
            raise UpstreamUnavailable(
                f"{self.name}: {method} {path} failed: {type(exc).__name__}"
            ) from exc
        except asyncio.CancelledError:
            raise
        decoded = self._decode(raw, status)
        return Reply(status=status, body=decoded, hints=hints, headers=reply_headers)

    def _decode(self, raw: bytes, status: int) -> JSON:
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if status >= 500:
                # A proxy's HTML error page: the status already says what happened.
                return raw[:200].decode("utf-8", "replace")
            raise MalformedResponse(
                f"{self.name}: undecodable JSON body (HTTP {status})", status=status
            ) from exc

    def _error_for(self, reply: Reply) -> AdapterError:
        message, detail = self.error_message(reply.body)
        status = reply.status
        prefix = f"{self.name}: HTTP {status}: {message}"
        kwargs: dict[str, Any] = {"status": status, "hints": reply.hints, "detail": detail}
        if status in (401, 403):
            return AuthRejected(prefix, **kwargs)
        if status == 404:
            return NotFound(prefix, **kwargs)
        if status == 410:
            return ResultExpired(prefix, **kwargs)
        if status == 429:
            return RateLimited(prefix, retry_after=self._retry_after_seconds(reply.hints), **kwargs)
        if status >= 500 or status == 408:
            return UpstreamUnavailable(prefix, **kwargs)
        return RequestRejected(prefix, **kwargs)

    def _retry_after_seconds(self, hints: RateHints) -> float:
        now = self.clock()
        when = hints.retry_at or hints.reset_at
        if when is None:
            return 0.0
        return max(0.0, (when - now).total_seconds())

    # -- optional actions: unsupported unless a subclass overrides them ------------------------

    def unsupported(self, action: str) -> UnsupportedAction:
        return UnsupportedAction(f"{self.name} does not support {action}")

    async def submit(self, request: Mapping[str, JSON]) -> Submission:
        raise self.unsupported("submit")

    async def fetch_status(self, upstream_id: str) -> StatusReport:
        raise NotImplementedError(f"{type(self).__name__} must implement fetch_status")

    async def fetch_result(
        self, upstream_id: str, *, page: int = 1, page_size: int | None = None
    ) -> ResultPayload:
        raise self.unsupported("result retrieval")

    async def cancel(self, upstream_id: str) -> Submission:
        raise self.unsupported("cancel")

    async def rerun(self, upstream_id: str) -> Submission:
        raise self.unsupported("rerun")

    async def continue_(self, upstream_id: str, params: Mapping[str, JSON]) -> Submission:
        raise self.unsupported("continue")

    async def find_submitted(
        self, request: Mapping[str, JSON], *, since: datetime, until: datetime, page: int = 1
    ) -> Candidates:
        raise self.unsupported("finding the jobs a submit created")
