"""Domain errors of the service layer. Each has a stable ``code`` and the HTTP status it maps to;
the web layer renders them as RFC 9457 problem+json without knowing any use case."""

from __future__ import annotations

from typing import Any

from adapters.base import AdapterError
from adapters.redact import redact_text


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}
        """Response headers the problem must carry (``WWW-Authenticate``)."""


class Unauthorized(ServiceError):
    """No usable credential (RFC 6750: ``WWW-Authenticate: Bearer``). ``code`` says which:
    ``auth_required``, ``invalid_key``, ``key_expired``, ``key_revoked`` or
    ``invalid_stream_token``."""

    status = 401
    title = "Authentication required"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        challenge = 'Bearer realm="jobgate"'
        if code != "auth_required":
            challenge += ', error="invalid_token"'
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(ServiceError):
    """A valid credential without the scope the route needs."""

    status = 403
    code = "insufficient_scope"
    title = "The key lacks the scope this operation needs"

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message, required_scope=scope)
        self.headers["WWW-Authenticate"] = (
            f'Bearer realm="jobgate", error="insufficient_scope", scope="{scope}"'
        )


class TenantLimited(ServiceError):
    """The tenant is over one of its limits (``limits`` in the settings)."""

    status = 429
    title = "The tenant is over its limit"

    def __init__(self, code: str, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = code


class KeyNotFound(ServiceError):
    status = 404
    code = "key_not_found"
    title = "No such key"


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"
    title = "The request is not valid"


class CallbackURLRefused(InvalidRequest):
    """A ``callback_url`` that webhook delivery would refuse; the message names the reason."""

    code = "callback_url_refused"
    title = "The callback_url will not be called"


class UnknownProvider(ServiceError):
    status = 422
    code = "unknown_provider"
    title = "Unknown provider"


class JobNotFound(ServiceError):
    status = 404
    code = "job_not_found"
    title = "No such job"


class ActionNotSupported(ServiceError):
    status = 409
    code = "action_not_supported"
    title = "The provider does not support this action"


class InvalidState(ServiceError):
    status = 409
    code = "invalid_state"
    title = "The job is not in a state that allows this"


class ResultNotReady(ServiceError):
    status = 409
    code = "result_not_ready"
    title = "The job has no result yet"


class ResultExpiredError(ServiceError):
    status = 410
    code = "result_expired"
    title = "The result has expired upstream"


class IdempotencyKeyReused(ServiceError):
    status = 422
    code = "idempotency_key_reused"
    title = "The Idempotency-Key was used with a different request"


class IdempotencyKeyInFlight(ServiceError):
    status = 409
    code = "idempotency_key_in_flight"
    title = "A request with this Idempotency-Key is still being processed"


class IdempotencyOutcomeUnknown(ServiceError):
    status = 409
    code = "idempotency_outcome_unknown"
    title = "The outcome of the first request with this Idempotency-Key is unknown"


class ReplayedProblem(ServiceError):
    """A failure stored under an Idempotency-Key, answered again as it was the first time."""

    def __init__(self, status: int, code: str, title: str, message: str) -> None:
        super().__init__(message, replayed=True)
        self.status = status
        self.code = code
        self.title = title


class UpstreamProblem(ServiceError):
    """An upstream call made on the client's behalf failed; ``code`` is the adapter's code."""

    title = "The provider could not complete the request"

    def __init__(self, error: AdapterError) -> None:
        # The adapters mask what providers echo; this catches an error raised anywhere else, on
        # the way to paths that skip the problem renderer (the idempotency record of a submit).
        super().__init__(redact_text(error.message))
        self.code = error.code
        self.status = _UPSTREAM_STATUS.get(error.code, 502)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            self.extra["retry_after"] = round(retry_after, 3)


_UPSTREAM_STATUS = {
    "upstream_rejected": 422,
    "upstream_not_found": 422,
    "upstream_rate_limited": 429,
    "upstream_unavailable": 503,
    "upstream_malformed": 502,
    "upstream_auth_rejected": 502,
    "action_not_supported": 409,
    "result_expired": 410,
}
