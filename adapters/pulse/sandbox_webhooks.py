"""The Pulse sandbox's webhooks: job events signed and delivered the way Svix delivers Pulse's.

Real Pulse sends its webhooks through Svix: ``POST /webhook`` answers ``{"link": ...}``, a
temporary link to the Svix portal where endpoints (a URL, and the ``whsec_`` secret Svix signs with)
are managed. The sandbox stands in for that portal with a list of endpoints,
``SandboxSettings.pulse_webhooks``, filled from configuration (the embedded gateway passes its own
callback URL) or through sandbox-only routes:

- ``POST /webhook``: ``{"link": "{base}/webhook/endpoints"}``, the real answer's shape;
- ``POST /webhook/endpoints`` ``{url, secret?}``: adds an endpoint and answers ``{id, url, secret}``
  (a ``whsec_`` secret is made when none is given; one given must be ``whsec_`` + base64);
- ``GET /webhook/endpoints``: ``{"data": [{id, url}]}``.

All three need ``x-api-key``, like every other path.

Events: when a job becomes ``processing``, ``completed``, ``failed`` or ``canceled``, each endpoint
receives ``{"type": "job.processing" | "job.completed" | "job.failed" | "job.cancelled",
"timestamp", "data": {job_id, status, created_at, updated_at}}`` with ``webhook-id`` (``msg_...``,
the same on every retry of one message), ``webhook-timestamp`` (wall-clock Unix seconds) and
``webhook-signature`` (made afresh for each attempt), as ``gateway/signatures.py`` defines them.
A job that passed through a state between two rounds still gets that state's event, first. An
``expire`` job's purge sends nothing (Pulse has no such event), nor does submission (the sandbox
sends no ``job.created``). Endpoints added later get only the events that happen after.

Sandbox jobs change state by the clock, not by a write, so the dispatcher finds transitions by
looking at every unsettled job each ``TICK`` (sandbox seconds). A failed delivery (connection
error, timeout, non-2xx) is retried after ``RETRY_DELAY`` sandbox seconds, doubled each time, at
most ``ATTEMPTS`` attempts in all. Logs name an endpoint's id and the event, never its secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.pulse.sandbox_errors import auth_error, error_response
from adapters.pulse.sandbox_jobs import JOBS_KEY, PulseJob, PulseJobs, iso
from adapters.sandbox_delivery import cancel_all, delivery_ctx, retry_at, send
from adapters.simulator import SETTINGS_KEY, SandboxSettings, Scenario, self_url
from gateway.signatures import generate_secret, parse_secret, secret_problem, signed_headers

JSON = Any

log = structlog.get_logger(__name__)

TICK: Final = 0.05
"""Sandbox seconds between two rounds of the dispatcher (never under ``MIN_TICK`` real)."""
MIN_TICK: Final = 0.01
ATTEMPTS: Final = 4
RETRY_DELAY: Final = 5.0
"""Sandbox seconds before the first retry of a failed delivery; doubled at each retry."""
TIMEOUT: Final = 10.0
"""Real seconds an endpoint has to answer."""
KEPT: Final = 1000
"""Succeeded deliveries remembered: a sandbox serving for days must not grow without end."""
EVENTS: Final[dict[str, str]] = {
    "processing": "job.processing",
    "completed": "job.completed",
    "failed": "job.failed",
    "canceled": "job.cancelled",
}
"""The native status a job reaches, and the event Pulse names it by (note the two "l"s)."""
_TERMINAL: Final = frozenset({"completed", "failed", "canceled"})


# --------------------------------------------------------------------------------------------------
# Which events a job owes


def reached(job: PulseJob, now: float) -> list[str]:
    """The notified statuses ``job`` has reached by ``now``, in the order it reached them."""
    at, canceled = now, False
    if job.canceled_at is not None and job.canceled_at <= now:
        at, canceled = job.canceled_at, True
    index, _ = job.timeline.position(at)
    statuses = ["processing"] if index >= 1 else []
    if canceled:
        statuses.append("canceled")
    elif index >= len(job.timeline.stages):
        # "expired" comes later and sends nothing: the job completed, and that was announced.
        statuses.append("failed" if job.scenario is Scenario.FAIL else "completed")
    return statuses


def endpoint_id(url: str, secret: str) -> str:
    """Stable for one endpoint, and saying nothing about its secret."""
    return "ep_" + hashlib.sha256(f"{url}\x00{secret}".encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# Delivery


@dataclass
class Delivery:
    msg_id: str
    endpoint: str
    url: str
    key: bytes = field(repr=False)
    event: str
    body: bytes
    attempts: int = 0
    next_at: float = 0.0
    in_flight: bool = False
    delivered: bool = False

    @property
    def gave_up(self) -> bool:
        return not self.delivered and self.attempts >= ATTEMPTS


class WebhookDispatcher:
    """Turns job transitions into signed deliveries to every configured endpoint."""

    def __init__(
        self,
        jobs: PulseJobs,
        settings: SandboxSettings,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.settings = settings
        self.wall = wall
        self.session: aiohttp.ClientSession | None = None
        self.notified: dict[str, list[str]] = {}
        """Per job, the statuses whose events were queued (or that happened with no endpoint)."""
        self.settled: set[str] = set()
        self.quiet_until: float | None = None
        """The last round that found no endpoint: what jobs reached by then, nobody was told."""
        self.queue: list[Delivery] = []
        self.sent: deque[Delivery] = deque(maxlen=KEPT)
        """The latest deliveries that succeeded, in order (the last ``KEPT``): for tests."""
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def tick(self) -> float:
        return max(MIN_TICK, self.settings.scaled(TICK))

    async def run(self) -> None:
        while True:
            self.step(self.settings.clock())
            await asyncio.sleep(self.tick)

    def step(self, now: float) -> None:
        self.collect(now)
        self.dispatch_due(now)

    def collect(self, now: float) -> None:
        """Queue one delivery per endpoint for each status a job reached since the last round."""
        if not self.settings.pulse_webhooks:
            # Nobody to tell, so no scan (most sandboxes have no endpoint, and many jobs): the
            # first round with an endpoint skips what happened up to here instead.
            self.quiet_until = now
            return
        quiet, self.quiet_until = self.quiet_until, None
        for job in list(self.jobs.jobs.values()):
            if job.job_id in self.settled or not job.notify:
                continue
            done = self.notified.setdefault(job.job_id, [])
            if quiet is not None:
                done.extend(status for status in reached(job, quiet) if status not in done)
            now_reached = reached(job, now)
            for status in now_reached:
                if status not in done:
                    done.append(status)
                    self.enqueue(job, status, now)
            if _TERMINAL.intersection(now_reached):
                self.settled.add(job.job_id)
                del self.notified[job.job_id]

    def enqueue(self, job: PulseJob, status: str, now: float) -> None:
        event = EVENTS[status]
        body = orjson.dumps(
            {
                "type": event,
                "timestamp": iso(job.wall(now)),
                "data": {
                    "job_id": job.job_id,
                    "status": status,
                    "created_at": iso(job.created_wall),
                    "updated_at": iso(job.wall(now)),
                },
            }
        )
        msg_id = f"msg_{uuid.uuid4().hex}"
        for url, secret in list(self.settings.pulse_webhooks):
            self.queue.append(
                Delivery(
                    msg_id=msg_id,
                    endpoint=endpoint_id(url, secret),
                    url=url,
                    key=parse_secret(secret),
                    event=event,
                    body=body,
                )
            )

    def dispatch_due(self, now: float) -> None:
        if self.session is None:
            return
        waiting: list[Delivery] = []
        for delivery in self.queue:
            if delivery.delivered or delivery.gave_up:
                continue
            waiting.append(delivery)
            if delivery.in_flight or now < delivery.next_at:
                continue
            delivery.in_flight = True
            task = asyncio.create_task(self.deliver(delivery))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        self.queue = waiting

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("pulse_webhook_crashed", error=repr(exc))

    async def deliver(self, delivery: Delivery) -> None:
        assert self.session is not None
        delivery.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Svix-Webhooks/1.0 (sandbox)",
            # A fresh timestamp and signature per attempt; the id stays, for the receiver's dedupe.
            **signed_headers(delivery.key, delivery.msg_id, int(self.wall()), delivery.body),
        }
        try:
            outcome, _ = await send(self.session, delivery.url, delivery.body, headers)
        finally:
            delivery.in_flight = False
        if outcome == "ok":
            delivery.delivered = True
            self.sent.append(delivery)
            log.info(
                "pulse_webhook_delivered",
                endpoint=delivery.endpoint,
                webhook_event=delivery.event,
                msg_id=delivery.msg_id,
                attempts=delivery.attempts,
            )
            return
        delivery.next_at = retry_at(self.settings, RETRY_DELAY, delivery.attempts)
        log.warning(
            "pulse_webhook_failed",
            endpoint=delivery.endpoint,
            webhook_event=delivery.event,
            msg_id=delivery.msg_id,
            attempt=delivery.attempts,
            outcome=outcome,
            gave_up=delivery.gave_up,
        )

    async def close(self) -> None:
        await cancel_all(self.tasks)


WEBHOOKS_KEY: Final = web.AppKey("pulse_webhooks", WebhookDispatcher)


webhooks_ctx: Final = delivery_ctx(WEBHOOKS_KEY, TIMEOUT)


def create_dispatcher(app: web.Application) -> WebhookDispatcher:
    """Install the dispatcher and its routes on the Pulse sandbox ``app``."""
    dispatcher = WebhookDispatcher(app[JOBS_KEY], app[SETTINGS_KEY])
    app[WEBHOOKS_KEY] = dispatcher
    app.cleanup_ctx.append(webhooks_ctx)
    app.router.add_post("/webhook", portal_link)
    app.router.add_post("/webhook/endpoints", add_endpoint)
    app.router.add_get("/webhook/endpoints", list_endpoints)
    return dispatcher


# --------------------------------------------------------------------------------------------------
# The portal's stand-in


async def portal_link(request: web.Request) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    body = {"link": self_url(request, "webhook/endpoints")}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def add_endpoint(request: web.Request) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    try:
        data: JSON = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(400, "INVALID_REQUEST", "the body must be a JSON object")
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return error_response(
            400, "INVALID_REQUEST", "url must be an http(s) URL", {"field": "url"}
        )
    secret = data.get("secret") or generate_secret()
    if not isinstance(secret, str) or (problem := secret_problem(secret)) is not None:
        reason = "must be a string" if not isinstance(secret, str) else problem
        return error_response(400, "INVALID_REQUEST", f"secret: {reason}", {"field": "secret"})
    settings = request.app[SETTINGS_KEY]
    settings.pulse_webhooks.append((url, secret))
    body = {"id": endpoint_id(url, secret), "url": url, "secret": secret}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def list_endpoints(request: web.Request) -> web.Response:
    if (denied := auth_error(request)) is not None:
        return denied
    endpoints = request.app[SETTINGS_KEY].pulse_webhooks
    body = {"data": [{"id": endpoint_id(url, secret), "url": url} for url, secret in endpoints]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")
