"""What the client raises: one typed exception per problem status, plus the failures that never
reached an answer. Each carries the problem's fields so callers branch on ``code``, not on text.

No exception here holds a request or its headers: the API key must never end up in a traceback,
a log line or a repr.
"""

from __future__ import annotations

from typing import Any

from gateway.web.models import JobOut


class JobgateError(Exception):
    """Everything the client raises on purpose."""


class ProblemError(JobgateError):
    """An error answer: RFC 9457 problem+json, or any other 4xx/5xx (``code`` ``http_<status>``).

    ``str(exc)`` is one line, ``code: detail``, so a CLI can print it as it is.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str,
        detail: str,
        title: str = "",
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        # One line whatever the server sent: a detail with newlines would split a log record.
        self.detail = " ".join(detail.split())
        super().__init__(f"{code}: {self.detail}")
        self.status = status
        self.code = code
        self.title = title
        self.errors = errors or []
        self.retry_after = retry_after
        self.request_id = request_id
        self.extra = extra or {}
        """The problem's other members (``reason``, ``required_scope``, ``state``, ...)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"


class BadRequest(ProblemError):
    """400: a parameter, header or body could not be read."""


class Unauthorized(ProblemError):
    """401: no usable API key."""


class Forbidden(ProblemError):
    """403: the key lacks the route's scope."""


class NotFound(ProblemError):
    """404: no such job (or another tenant's), or no such route."""


class Conflict(ProblemError):
    """409: not possible in the job's state, or not supported by its provider."""


class Gone(ProblemError):
    """410: the result is gone, and jobgate holds no copy."""


class Unprocessable(ProblemError):
    """422: the body is understood but refused (fields named in ``errors``)."""


class RateLimited(ProblemError):
    """429: over a tenant's or a provider's limit; ``retry_after`` says when to try again."""


class UpstreamError(ProblemError):
    """502: the provider's answer was unusable."""


class Unavailable(ProblemError):
    """503: the provider (or the gateway's store) is not answering."""


BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Unprocessable,
    429: RateLimited,
    502: UpstreamError,
    503: Unavailable,
}


class GatewayUnreachable(JobgateError):
    """No answer at all: the connection failed, broke, or timed out. The message names the
    gateway's URL (never its key) and the transport's reason."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"gateway unreachable at {url}: {reason}")
        self.url = url
        self.reason = reason


class WaitTimeout(JobgateError):
    """``wait()`` ran out of time before the job finished; ``job`` is the last version seen."""

    def __init__(self, job: JobOut, timeout: float) -> None:
        super().__init__(
            f"job {job.id} is still {job.state} after waiting {timeout:g} s"
            f" (it may still finish: wait again)"
        )
        self.job = job
        self.timeout = timeout


class DownloadError(JobgateError):
    """A download's bytes do not match what the gateway said they would be (size or SHA-256)."""

    def __init__(self, message: str, *, expected: str | int | None, got: str | int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class UnexpectedAnswer(JobgateError):
    """A success answer this client cannot read: a proxy's HTML page, a ``--url`` that is not a
    jobgate, or a field this version does not know. One line: the status, the content type and
    the start of the body (never the request, so never its key).

    Raised in place of pydantic's ``ValidationError``, whose many lines would split a log record
    and whose text repeats the whole body."""

    HEAD = 100
    """Bytes of the body quoted in the message."""

    def __init__(self, status: int, content_type: str, body: bytes, *, what: str = "") -> None:
        head = " ".join(body[: self.HEAD].decode("utf-8", "replace").split())
        more = "..." if len(body) > self.HEAD else ""
        where = f" ({what})" if what else ""
        super().__init__(
            f"unexpected answer{where}: HTTP {status}, {content_type or 'no content type'}: "
            f"{head!r}{more}"
        )
        self.status = status
        self.content_type = content_type
        self.head = body[: self.HEAD]


class StreamError(JobgateError):
    """An event stream that could not be kept up: the answer was not an event stream, or it kept
    failing past the reconnect budget."""
