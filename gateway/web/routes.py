"""The route table: registered by the app and rendered by ``/openapi.json`` from the same entries,
so the documentation cannot list a route the server lacks or miss one it has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from gateway.web import callbacks as cb
from gateway.web import handlers as h
from gateway.web import sse
from gateway.web.models import (
    ContinueBody,
    Health,
    JobList,
    JobOut,
    ProviderList,
    ResultOut,
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
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | str] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    tag: str = "jobs"
    media: str = "application/json"
    """The media type of the success answer (``text/event-stream`` for SSE)."""


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
WAIT = Param(
    "wait",
    "query",
    {"type": "number", "minimum": 0, "maximum": 60},
    "Long-poll: wait up to this many seconds for the job to change",
)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/providers",
        h.list_providers,
        "Providers, capabilities and poll policies",
        responses={200: ProviderList},
        tag="providers",
    ),
    Route(
        "POST",
        "/v1/jobs",
        h.submit_job,
        "Submit ({provider, request}) or adopt ({provider, upstream_id}) a job",
        body=SubmitBody,
        responses={
            201: JobOut,
            409: "Idempotency key in flight, or action not supported",
            422: "Invalid body, unknown provider, or key reused with another body",
            429: "The provider is rate limiting",
            503: "The provider is unavailable",
        },
        params=(
            Param(
                "Idempotency-Key",
                "header",
                {"type": "string", "maxLength": 255},
                "Replays the first answer for the same key and body (kept 24 h)",
            ),
        ),
    ),
    Route(
        "GET",
        "/v1/jobs",
        h.list_jobs,
        "List jobs, newest first",
        responses={200: JobList},
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
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}",
        h.get_job,
        "The canonical job; ?wait=N long-polls",
        responses={200: JobOut, 404: "No such job"},
        params=(JOB_ID, WAIT),
    ),
    Route(
        "DELETE",
        "/v1/jobs/{job_id}",
        h.delete_job,
        "Stop tracking the job",
        responses={204: "Deleted", 404: "No such job"},
        params=(JOB_ID,),
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/result",
        h.job_result,
        "The result: inline, a page of records, or a large result streamed (or 307 with "
        "?redirect=true)",
        responses={
            200: ResultOut,
            307: "Redirect to a presigned large-result URL",
            409: "No result yet",
            410: "The result expired upstream",
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
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        h.cancel_job,
        "Cancel upstream (pulse)",
        responses={202: JobOut, 409: "Not supported by the provider, or already finished"},
        params=(JOB_ID,),
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/rerun",
        h.rerun_job,
        "Rerun: native (platform) or a resubmission of the stored request",
        responses={201: JobOut, 409: "Not supported"},
        params=(JOB_ID,),
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/continue",
        h.continue_job,
        "Continue a finished job with a higher limit (catchall)",
        body=ContinueBody,
        responses={202: JobOut, 409: "Not supported"},
        params=(JOB_ID,),
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/events",
        sse.job_events,
        "Server-Sent Events for one job: its whole history first (unless Last-Event-ID), then "
        "live; ends with event 'end' once the job is finished",
        responses={200: "An SSE stream (id, event, data per event)", 404: "No such job"},
        params=(JOB_ID, *LAST_EVENT_ID),
        media="text/event-stream",
    ),
    Route(
        "GET",
        "/v1/events",
        sse.all_events,
        "Server-Sent Events for all jobs, from now (or after Last-Event-ID)",
        responses={200: "An SSE stream (id, event, data per event)"},
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
        ),
        media="text/event-stream",
    ),
    Route(
        "POST",
        "/v1/callbacks/{provider}",
        cb.receive_callback,
        "Inbound provider notification (extract callbackUrl, CatchAll webhook): a hint that "
        "polls the job it names now; the body is the provider's own",
        responses={
            202: cb.CallbackAck,
            401: "The callback token is missing or wrong",
            404: "The provider does not push, or has no callback_secret",
            422: "The body names no upstream job",
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
        ),
        tag="callbacks",
    ),
    Route("GET", "/healthz", h.healthz, "Liveness", responses={200: Health}, tag="service"),
    Route(
        "GET",
        "/readyz",
        h.readyz,
        "Readiness: the store answers",
        responses={200: Health, 503: "The store does not answer"},
        tag="service",
    ),
)
