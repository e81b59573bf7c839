"""The route table: registered by the app and rendered by ``/openapi.json`` from the same entries,
so the documentation cannot list a route the server lacks or miss one it has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from gateway.auth import Scope
from gateway.web import callbacks as cb
from gateway.web import handlers as h
from gateway.web import keys, sse
from gateway.web.models import (
    ContinueBody,
    EndEventData,
    Health,
    JobEventData,
    JobList,
    JobOut,
    KeyCreateBody,
    KeyCreated,
    KeyList,
    KeyOut,
    ProviderList,
    RecordsEventData,
    ResultOut,
    StateEventData,
    StreamTokenOut,
    SubmitBody,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str  # "query", "path" or "header"
    schema: dict[str, object]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class EventStream:
    """A ``text/event-stream`` answer: each event's name and the schema of its JSON ``data``."""

    description: str
    events: tuple[tuple[str, type[BaseModel]], ...]
    opens_with_id: bool = False
    """May open with a message of an id alone (``/v1/events`` from now: where now was)."""


@dataclass(frozen=True, slots=True)
class OrStreamed:
    """A JSON answer that is ``model``, or a provider's own document streamed through as it is."""

    model: type[BaseModel]
    description: str


@dataclass(frozen=True, slots=True)
class Bytes:
    """Raw bytes: a range of a stored large result."""

    description: str


Answer = type[BaseModel] | str | EventStream | OrStreamed | Bytes
"""A model (JSON), a description (a problem for 4xx/5xx, no body otherwise), or one of the above."""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    responses: dict[int, Answer] = field(default_factory=dict)
    """Every status the operation answers; ``/openapi.json`` documents no catch-all besides."""
    params: tuple[Param, ...] = ()
    tag: str = "jobs"
    scope: Scope | None = Scope.ADMIN
    """What a key needs to call it (checked by ``gateway/web/auth.py``); ``None``: anyone. The
    default is the narrowest, so a route added without thought fails closed."""
    stream: bool = False
    """Also accepts ``?access_token=`` (a stream token): the SSE routes, for ``EventSource``."""


JOB_ID = Param("job_id", "path", {"type": "string"}, "The jobgate job id", required=True)
LAST_EVENT_ID = (
    Param(
        "Last-Event-ID",
        "header",
        {"type": "integer", "minimum": 0},
        "Resume after this event id (EventSource sends it when it reconnects)",
    ),
    Param(
        "last_event_id",
        "query",
        {"type": "integer", "minimum": 0},
        "The same, for EventSource polyfills that cannot set headers (the header wins)",
    ),
)
ACCESS_TOKEN = Param(
    "access_token",
    "query",
    {"type": "string"},
    "A stream token from POST /v1/stream-tokens, for EventSource (which cannot send "
    "Authorization); accepted on the SSE routes only",
)
WAIT = Param(
    "wait",
    "query",
    {"type": "number", "minimum": 0, "maximum": 60},
    "Long-poll: wait up to this many seconds for the job to change",
)

# -- the statuses routes share ---------------------------------------------------------------------

BAD_QUERY = "invalid_query or invalid_header: a parameter cannot be read (the detail names it)"
NO_JOB = "job_not_found: no such job"
BODY: dict[int, Answer] = {
    400: "invalid_json, invalid_body, or request_too_deep (nested past server.max_json_depth, "
    "which the detail names)",
    408: "body_timeout: the body did not arrive within server.body_timeout_seconds",
    413: "body_too_large: over server.max_body_bytes",
    415: "unsupported_media_type: the body is not JSON",
    422: "validation_error: unknown, missing or mistyped fields, each named in errors[]",
}
UPSTREAM: dict[int, Answer] = {
    429: "upstream_rate_limited: the provider is rate limiting (Retry-After says when to retry)",
    502: "upstream_malformed, upstream_auth_rejected or upstream_error: the provider's answer "
    "was unusable",
    503: "upstream_unavailable: the provider is down or did not answer in time",
}
UPSTREAM_REFUSED = "upstream_rejected or upstream_not_found: the provider refused the call"
JOB_EVENTS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("created", JobEventData),
    ("state", StateEventData),
    ("progress", JobEventData),
    ("records", RecordsEventData),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/providers",
        h.list_providers,
        "Providers, capabilities and poll policies",
        responses={200: ProviderList},
        tag="providers",
        scope=Scope.READ,
    ),
    Route(
        "POST",
        "/v1/jobs",
        h.submit_job,
        "Submit ({provider, request}) or adopt ({provider, upstream_id}) a job",
        body=SubmitBody,
        responses={
            201: JobOut,
            **BODY,
            400: f"{BODY[400]}; invalid_header: a bad Idempotency-Key",
            409: "idempotency_key_in_flight (a request with this key is still running), "
            "idempotency_outcome_unknown (an earlier request with this key may or may not have "
            "created an upstream job), or action_not_supported (submit to a provider whose jobs "
            "are created elsewhere)",
            422: "validation_error (each field named in errors[]), unknown_provider, "
            "idempotency_key_reused (another body under this key), callback_url_refused, "
            "upstream_rejected or upstream_not_found",
            **UPSTREAM,
        },
        params=(
            Param(
                "Idempotency-Key",
                "header",
                {"type": "string", "maxLength": 255},
                "Replays the first answer for the same key and body (kept 24 h); each "
                "tenant has its own keys",
            ),
        ),
        scope=Scope.WRITE,
    ),
    Route(
        "GET",
        "/v1/jobs",
        h.list_jobs,
        "List jobs, newest first",
        responses={200: JobList, 400: BAD_QUERY},
        params=(
            Param("provider", "query", {"type": "string"}, "Only this provider"),
            Param("state", "query", {"type": "string"}, "Only this canonical state"),
            Param("label", "query", {"type": "string"}, "key:value; repeat to AND several"),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 500},
                "Page size (default 50)",
            ),
            Param("cursor", "query", {"type": "string"}, "next_cursor from the previous page"),
        ),
        scope=Scope.READ,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}",
        h.get_job,
        "The canonical job; ?wait=N long-polls. ETag is the job's version: with If-None-Match "
        "naming it the answer is 304, and a read never answers with a version older than one "
        "If-None-Match names (whichever replica serves it)",
        responses={
            200: JobOut,
            304: "Not modified: If-None-Match named the job's current version",
            400: BAD_QUERY,
            404: NO_JOB,
        },
        params=(
            JOB_ID,
            WAIT,
            Param(
                "If-None-Match",
                "header",
                {"type": "string"},
                'ETags of versions the client holds ("7", W/"7", or *)',
            ),
        ),
        scope=Scope.READ,
    ),
    Route(
        "DELETE",
        "/v1/jobs/{job_id}",
        h.delete_job,
        "Stop tracking the job",
        responses={204: "Deleted", 404: NO_JOB},
        params=(JOB_ID,),
        scope=Scope.WRITE,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/result",
        h.job_result,
        "The result: inline, a page of records, or a large result (or 307 with "
        "?redirect=true). Once jobgate holds a copy (the job's result.source is jobgate) it is "
        "served from that copy with no upstream call: ETag (the SHA-256 of the copy, or of the "
        "page), If-None-Match, and Range on large results",
        responses={
            200: OrStreamed(
                ResultOut,
                "An inline result or a page of records; a large result (is_url) is the "
                "provider's own document with its Content-Type, from jobgate's copy (or, while "
                "it is being captured, as the capture writes it)",
            ),
            206: Bytes("A byte range of a stored large result (Range)"),
            304: "Not modified: If-None-Match named the stored copy's ETag",
            307: "Redirect to a presigned large-result URL",
            412: "precondition_failed: If-Match names no ETag of the stored copy (an If-Range "
            "naming another copy is not an error: the whole copy is sent)",
            400: BAD_QUERY,
            404: NO_JOB,
            409: "result_not_ready: no result yet, the job ended without one, or a capture of a "
            "single-use result is under way on another replica (retry, or add ?wait=)",
            410: "result_expired: the provider's result is gone and jobgate holds no copy (capture "
            "off, failed, or past its retention)",
            422: UPSTREAM_REFUSED,
            429: UPSTREAM[429],
            502: "unsafe_result_url, result_too_large or result_fetch_failed (the pointer was "
            "refused or could not be fetched), or the provider's answer was unusable",
            503: UPSTREAM[503],
        },
        params=(
            JOB_ID,
            WAIT,
            Param("page", "query", {"type": "integer", "minimum": 1}, "Page (paged results)"),
            Param(
                "page_size",
                "query",
                {"type": "integer", "minimum": 1, "maximum": 1000},
                "Records per page (paged results)",
            ),
            Param(
                "redirect",
                "query",
                {"type": "boolean"},
                "Answer 307 to a pointer that needs no provider key",
            ),
        ),
        scope=Scope.READ,
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        h.cancel_job,
        "Cancel upstream (pulse)",
        responses={
            202: JobOut,
            404: NO_JOB,
            409: "action_not_supported (the provider cannot cancel), or invalid_state (the job "
            "is already finished)",
            422: UPSTREAM_REFUSED,
            **UPSTREAM,
        },
        params=(JOB_ID,),
        scope=Scope.WRITE,
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/rerun",
        h.rerun_job,
        "Rerun: native (platform) or a resubmission of the stored request",
        responses={
            201: JobOut,
            404: NO_JOB,
            409: "action_not_supported (no native rerun and no stored request), or "
            "invalid_state (a native rerun needs a finished job)",
            422: UPSTREAM_REFUSED,
            **UPSTREAM,
        },
        params=(JOB_ID,),
        scope=Scope.WRITE,
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/continue",
        h.continue_job,
        "Continue a finished job with a higher limit (catchall)",
        body=ContinueBody,
        responses={
            202: JobOut,
            **BODY,
            404: NO_JOB,
            409: "action_not_supported (the provider cannot continue), or invalid_state",
            422: "validation_error (each field named in errors[]), upstream_rejected or "
            "upstream_not_found",
            **UPSTREAM,
        },
        params=(JOB_ID,),
        scope=Scope.WRITE,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/events",
        sse.job_events,
        "Server-Sent Events for one job: its whole history first (unless Last-Event-ID), then "
        "live; ends with event 'end' once the job is finished",
        responses={
            200: EventStream(
                "The job's events (id, event, data); 'end' (no id) closes a finished job's stream",
                (*JOB_EVENTS, ("end", EndEventData)),
            ),
            400: BAD_QUERY,
            404: NO_JOB,
        },
        params=(JOB_ID, *LAST_EVENT_ID, ACCESS_TOKEN),
        scope=Scope.READ,
        stream=True,
    ),
    Route(
        "GET",
        "/v1/events",
        sse.all_events,
        "Server-Sent Events for all the tenant's jobs, from now (or after Last-Event-ID)",
        responses={
            200: EventStream(
                "Every job's events (id, event, data), from now. Started from now (no "
                "Last-Event-ID), the stream opens with a message of an id alone, no event and no "
                "data: where now was, to resume from if the connection drops before any event",
                JOB_EVENTS,
                opens_with_id=True,
            ),
            400: BAD_QUERY,
        },
        params=(
            Param(
                "provider",
                "query",
                {"type": "string"},
                "Only these providers: repeat, or separate with commas",
            ),
            Param(
                "state",
                "query",
                {"type": "string"},
                "Only events of jobs in these canonical states: repeat, or separate with commas",
            ),
            *LAST_EVENT_ID,
            ACCESS_TOKEN,
        ),
        scope=Scope.READ,
        stream=True,
    ),
    Route(
        "POST",
        "/v1/callbacks/{provider}",
        cb.receive_callback,
        "Inbound provider notification (extract callbackUrl, CatchAll webhook, Pulse's Standard "
        "Webhooks events): a hint that polls the job it names now; the body is the provider's "
        "own. extract and catchall authenticate with the callback token; pulse with the "
        "webhook-id, webhook-timestamp and webhook-signature headers (a replayed webhook-id is "
        "202 with duplicate: true)",
        responses={
            202: cb.CallbackAck,
            **BODY,
            401: "callback_unauthorized: the callback token is missing or wrong, or (pulse) the "
            "signature headers are missing, the timestamp is outside 5 minutes or no signature "
            "matches (the problem's reason says which)",
            404: "callbacks_not_enabled: the provider does not push, or has no callback_secret",
            422: "invalid_callback: the body names no upstream job",
        },
        params=(
            Param("provider", "path", {"type": "string"}, "A provider that pushes", required=True),
            Param("token", "query", {"type": "string"}, "The provider's callback secret"),
            Param(
                "X-Jobgate-Callback-Token",
                "header",
                {"type": "string"},
                "The provider's callback secret (instead of ?token=)",
            ),
            Param("webhook-id", "header", {"type": "string"}, "pulse: the message id (msg_...)"),
            Param("webhook-timestamp", "header", {"type": "string"}, "pulse: Unix seconds, signed"),
            Param(
                "webhook-signature",
                "header",
                {"type": "string"},
                "pulse: v1,<base64 HMAC-SHA256 of id.timestamp.body>, space-separated",
            ),
        ),
        tag="callbacks",
        # The provider authenticates with its callback token, checked by the handler's inbox.
        scope=None,
    ),
    Route(
        "POST",
        "/v1/stream-tokens",
        keys.create_stream_token,
        "A short-lived read-only token for the SSE routes' ?access_token= (EventSource cannot "
        "send Authorization)",
        responses={201: StreamTokenOut},
        tag="keys",
        scope=Scope.READ,
    ),
    Route(
        "POST",
        "/v1/keys",
        keys.create_key,
        "Create an API key for this tenant; the key is in this answer only",
        body=KeyCreateBody,
        responses={201: KeyCreated, **BODY},
        tag="keys",
        scope=Scope.ADMIN,
    ),
    Route(
        "GET",
        "/v1/keys",
        keys.list_keys,
        "This tenant's API keys (never the keys themselves)",
        responses={200: KeyList},
        tag="keys",
        scope=Scope.ADMIN,
    ),
    Route(
        "DELETE",
        "/v1/keys/{key_id}",
        keys.revoke_key,
        "Revoke one of this tenant's keys, on every replica within a second",
        responses={
            200: KeyOut,
            404: "key_not_found: no usable key with this id in this tenant",
            422: "invalid_request: the key is defined in the configuration (auth.keys)",
        },
        params=(Param("key_id", "path", {"type": "string"}, "The key's id", required=True),),
        tag="keys",
        scope=Scope.ADMIN,
    ),
    Route(
        "GET",
        "/healthz",
        h.healthz,
        "Liveness",
        responses={200: Health},
        tag="service",
        scope=None,
    ),
    Route(
        "GET",
        "/readyz",
        h.readyz,
        "Readiness: the store answers",
        responses={200: Health, 503: Health},
        tag="service",
        scope=None,
    ),
)
