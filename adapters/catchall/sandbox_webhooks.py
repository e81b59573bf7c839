"""The CatchAll sandbox's webhooks: organisation-level CRUD and the deliveries of finished jobs.

Paths, as the official SDK 4.0.0 calls them (``client.webhooks``):

- ``POST /catchAll/webhooks`` ``{name, url, type?, delivery_mode?, method?, headers?, params?,
  auth?, formatter_config?, project_id?}`` → 201 ``{success, message, webhook}``.
- ``GET /catchAll/webhooks?page=&page_size=&search=`` → ``{total, page, page_size, total_pages,
  webhooks}``, oldest first (page_size default 10, max 100); ``search`` is a case-insensitive
  substring of the name or the url.
- ``GET /catchAll/webhooks/{id}`` → ``{success, message, webhook}``; ``PATCH`` the same (only the
  fields given change; ``headers``, ``params`` and ``auth`` are replaced whole; ``is_active``
  pauses delivery); ``DELETE`` → 204, and the jobs it was assigned to no longer deliver to it.

A webhook as answered: ``{id, name, url, type, delivery_mode, method, headers, params, auth,
formatter_config, is_active, organization_id, created_by_user_id, created_at, updated_at}``. The
auth's secret part (``token``, ``value``, ``password``) is masked, as the real API documents; the
mask's form (``****`` and the last four characters) is this sandbox's guess.

Validation follows FastAPI: 422 ``{"detail": [{type, loc, msg, input}]}``; ``auth`` is a union
tagged by ``type`` (``api_key`` {header, value}, ``bearer`` {token}, ``basic`` {username,
password}), so its issues sit under ``["body", "auth", <tag>, <field>]``. ``type`` is guessed from
the url when absent (Slack and Teams hosts, else ``generic``); ``custom`` needs a
``formatter_config``. ``method`` is POST or PUT. An unknown webhook id, or one of another key, is
404 ``{"detail"}``; so is any ``project_id`` (the sandbox has no projects).

The real API demands an HTTPS url and refuses IP addresses. The sandbox accepts HTTPS to any host
and also plain ``http`` to a loopback host (``127.0.0.1``, ``::1``, ``localhost``), so that a local
gateway can receive its pushes.

Deliveries: a job submitted with ``webhook_ids`` (checked by the submit handler: each must be one
of the key's webhooks, else 400) is remembered in ``WebhookStore.pending``. ``WebhookDispatcher``,
one background task per application started and stopped by ``webhooks_ctx``, wakes every
``DELIVERY_TICK`` sandbox seconds; once a job's finish time has passed it sends the
``WebhookPayload`` body (``latest_job_id`` is the job id, ``records_count``, ``updated_at``, the
first ``PAYLOAD_RECORDS`` records, the monitor fields null) to each of the job's active webhooks,
with the webhook's method, query params, custom headers and auth header (``api_key``: ``header:
value``; ``bearer`` and ``basic``: ``Authorization``). A failed delivery (connection error,
timeout, non-2xx) is retried with a doubling delay, at most ``DELIVERY_ATTEMPTS`` times; every
attempt is kept in ``WebhookStore.history`` (the sandbox serves no ``webhook-history`` endpoint).
A ``continue`` starts a new round: the job is delivered again when it completes again.
``per_record`` webhooks get the same single body as ``full`` ones, and Slack or Teams webhooks no
formatted message; failed jobs are delivered too (``records_count`` 0).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import orjson
import structlog
from aiohttp import web
from yarl import URL

from adapters.catchall.sandbox_jobs import JOBS_KEY, Job, JobStore, iso
from adapters.catchall.sandbox_records import make_record
from adapters.catchall.sandbox_validation import Checker, error, json_body, query_int
from adapters.sandbox_delivery import cancel_all, delivery_ctx, retry_at, send
from adapters.simulator import SETTINGS_KEY, SandboxSettings

log = structlog.get_logger(__name__)

WEBHOOK_TYPES: Final = ("generic", "slack", "teams", "custom")
DELIVERY_MODES: Final = ("full", "per_record")
METHODS: Final = ("POST", "PUT")
AUTH_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "bearer": ("token",),
    "api_key": ("header", "value"),
    "basic": ("username", "password"),
}
SECRET_FIELDS: Final = frozenset({"token", "value", "password"})
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
LIST_PAGE_SIZE: Final = 10
LIST_MAX_PAGE_SIZE: Final = 100

DELIVERY_TICK: Final = 0.05
"""Sandbox seconds between two wake-ups of the dispatcher (never under ``MIN_TICK`` real)."""
MIN_TICK: Final = 0.01
DELIVERY_ATTEMPTS: Final = 4
DELIVERY_RETRY_DELAY: Final = 5.0
"""Sandbox seconds before the first retry of a failed delivery; doubled at each retry."""
DELIVERY_TIMEOUT: Final = 10.0
"""Real seconds a receiver has to answer."""
HISTORY_KEPT: Final = 1000
"""Delivery attempts remembered, the latest: a sandbox serving for days must not grow forever."""
PAYLOAD_RECORDS: Final = 100
"""At most this many records travel in a delivery; ``records_count`` still counts them all."""


@dataclass
class Webhook:
    id: str
    owner: str
    seq: int
    name: str
    url: str
    type: str
    delivery_mode: str
    method: str
    headers: dict[str, str]
    params: dict[str, str]
    auth: dict[str, str] | None
    formatter_config: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    is_active: bool = True

    def public(self) -> dict[str, Any]:
        """The webhook as the API answers it: the auth's secret masked."""
        auth = None
        if self.auth is not None:
            auth = {k: _masked(v) if k in SECRET_FIELDS else v for k, v in self.auth.items()}
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "type": self.type,
            "delivery_mode": self.delivery_mode,
            "method": self.method,
            "headers": self.headers,
            "params": self.params,
            "auth": auth,
            "formatter_config": self.formatter_config,
            "is_active": self.is_active,
            "organization_id": _organisation(self.owner),
            "created_by_user_id": None,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }

    def auth_headers(self) -> dict[str, str]:
        """The header the configured auth adds to each delivery."""
        auth = self.auth
        if auth is None:
            return {}
        if auth["type"] == "api_key":
            return {auth["header"]: auth["value"]}
        if auth["type"] == "bearer":
            return {"Authorization": f"Bearer {auth['token']}"}
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def _masked(value: str) -> str:
    return "****" + value[-4:] if len(value) > 8 else "****"


def _organisation(owner: str) -> str:
    """A stable organisation id per API key, never the key itself."""
    return "org_" + hashlib.sha256(owner.encode()).hexdigest()[:12]


@dataclass
class Delivery:
    """One (job, round, webhook) delivery's progress."""

    attempts: int = 0
    delivered: bool = False
    in_flight: bool = False
    next_at: float = 0.0

    @property
    def gave_up(self) -> bool:
        return not self.delivered and self.attempts >= DELIVERY_ATTEMPTS


@dataclass
class WebhookStore:
    """Every webhook, the jobs owed a delivery, and each delivery's progress and history."""

    webhooks: dict[str, Webhook] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    """Job ids whose current round may still owe a delivery."""
    deliveries: dict[tuple[str, int, str], Delivery] = field(default_factory=dict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))

    def owned(self, webhook_id: str, owner: str) -> Webhook | None:
        hook = self.webhooks.get(webhook_id)
        return hook if hook is not None and hook.owner == owner else None

    def of(self, owner: str) -> list[Webhook]:
        return sorted((h for h in self.webhooks.values() if h.owner == owner), key=lambda h: h.seq)


WEBHOOKS_KEY: Final = web.AppKey("catchall_webhooks", WebhookStore)


# --------------------------------------------------------------------------------------------------
# Validation


def _check_url(check: Checker, url: str, kind: str | None) -> None:
    parsed = URL(url)
    host = (parsed.host or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        check.fail("url_parsing", ["url"], "Input should be a valid URL", url)
    elif parsed.scheme != "https" and host not in LOOPBACK_HOSTS:
        check.fail("value_error", ["url"], "Value error, URL must use HTTPS", url)
    elif kind == "slack" and not url.startswith("https://hooks.slack.com/"):
        msg = "Value error, Slack webhook URL must start with https://hooks.slack.com/"
        check.fail("value_error", ["url"], msg, url)
    elif kind == "teams" and not host.endswith((".webhook.office.com", ".webhook.office365.com")):
        msg = "Value error, Teams webhook URL must be on *.webhook.office.com"
        check.fail("value_error", ["url"], msg, url)


def _guess_type(url: str) -> str:
    host = (URL(url).host or "").lower()
    if url.startswith("https://hooks.slack.com/"):
        return "slack"
    if host.endswith((".webhook.office.com", ".webhook.office365.com")):
        return "teams"
    return "generic"


def _check_auth(check: Checker) -> dict[str, str] | None:
    value = check.body.get("auth")
    if value is None:
        return None
    if not isinstance(value, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        check.fail("model_attributes_type", ["auth"], msg, value)
        return None
    tag = value.get("type")
    if tag is None:
        msg = "Unable to extract tag using discriminator 'type'"
        check.fail("union_tag_not_found", ["auth"], msg, value)
        return None
    if tag not in AUTH_FIELDS:
        expected = ", ".join(f"'{t}'" for t in AUTH_FIELDS)
        msg = f"Input tag '{tag}' found using 'type' does not match any of the expected tags: "
        check.fail("union_tag_invalid", ["auth"], msg + expected, value)
        return None
    before = len(check.issues)
    inner = Checker(value, [*check.loc, "auth", tag], check.issues)
    found = {name: inner.string(name, required=True) for name in AUTH_FIELDS[tag]}
    if len(check.issues) > before:
        return None
    return {"type": tag, **{k: v for k, v in found.items() if v is not None}}


def _check_mapping(check: Checker, name: str) -> dict[str, Any] | None:
    value = check.body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        check.fail("dict_type", [name], "Input should be a valid dictionary", value)
        return None
    return value


@dataclass(frozen=True, slots=True)
class Fields:
    """The webhook fields a create or update body gives (``None``: not given)."""

    name: str | None
    url: str | None
    type: str | None
    delivery_mode: str | None
    method: str | None
    headers: dict[str, str] | None
    params: dict[str, str] | None
    auth: dict[str, str] | None
    formatter_config: dict[str, Any] | None
    is_active: bool | None
    project_id: str | None


def check_fields(body: dict[str, Any], *, creating: bool) -> Fields:
    """The body's webhook fields; 422 with every issue found when any is wrong."""
    check = Checker(body)
    name = check.string("name", required=creating)
    url = check.string("url", required=creating)
    # Absent or null: not given (the server's default at create, unchanged at update).
    kind = check.choice("type", WEBHOOK_TYPES, None) if body.get("type") is not None else None
    mode = (
        check.choice("delivery_mode", DELIVERY_MODES, None)
        if body.get("delivery_mode") is not None
        else None
    )
    method = check.choice("method", METHODS, None) if body.get("method") is not None else None
    headers = check.string_map("headers")
    params = check.string_map("params")
    auth = _check_auth(check)
    formatter = _check_mapping(check, "formatter_config")
    active = body.get("is_active")
    if creating and active is not None:
        active = None  # not a create field: ignored, as pydantic ignores extra fields
    elif active is not None and not isinstance(active, bool):
        check.fail("bool_type", ["is_active"], "Input should be a valid boolean", active)
        active = None
    project = check.string("project_id")
    if url is not None:
        _check_url(check, url, kind)
    if kind == "custom" and formatter is None and creating:
        msg = "Value error, formatter_config is required when type is custom"
        check.fail("value_error", ["formatter_config"], msg, None)
    if check.issues:
        raise error(422, check.issues)
    return Fields(name, url, kind, mode, method, headers, params, auth, formatter, active, project)


# --------------------------------------------------------------------------------------------------
# Handlers


def _settings(request: web.Request) -> SandboxSettings:
    return request.app[SETTINGS_KEY]


def _hooks(request: web.Request) -> WebhookStore:
    return request.app[WEBHOOKS_KEY]


def _owner(request: web.Request) -> str:
    key = request.headers.get("x-api-key")
    if key is None or not _settings(request).key_ok(key):
        raise error(403, "Invalid API key")
    return key


def _hook(request: web.Request, owner: str) -> Webhook:
    webhook_id = request.match_info["webhook_id"]
    hook = _hooks(request).owned(webhook_id, owner)
    if hook is None:
        raise error(404, f"Webhook {webhook_id} not found")
    return hook


def _no_projects(fields: Fields) -> None:
    if fields.project_id is not None:
        raise error(404, f"Project {fields.project_id} not found")


async def create_webhook(request: web.Request) -> web.Response:
    owner = _owner(request)
    fields = check_fields(await json_body(request), creating=True)
    _no_projects(fields)
    assert fields.name is not None
    assert fields.url is not None
    store = _hooks(request)
    jobs = request.app[JOBS_KEY]
    now = datetime.now(UTC)
    hook = Webhook(
        id=jobs.new_id(),
        owner=owner,
        seq=len(store.webhooks),
        name=fields.name,
        url=fields.url,
        type=fields.type or _guess_type(fields.url),
        delivery_mode=fields.delivery_mode or "full",
        method=fields.method or "POST",
        headers=fields.headers or {},
        params=fields.params or {},
        auth=fields.auth,
        formatter_config=fields.formatter_config,
        created_at=now,
        updated_at=now,
    )
    store.webhooks[hook.id] = hook
    return web.json_response(
        {"success": True, "message": "Webhook created successfully", "webhook": hook.public()},
        status=201,
    )


async def list_webhooks(request: web.Request) -> web.Response:
    owner = _owner(request)
    page = query_int(request, "page", 1, 1)
    page_size = query_int(request, "page_size", LIST_PAGE_SIZE, 1, LIST_MAX_PAGE_SIZE)
    search = request.query.get("search", "").lower()
    found = [
        h
        for h in _hooks(request).of(owner)
        if not search or search in h.name.lower() or search in h.url.lower()
    ]
    chosen = found[(page - 1) * page_size : page * page_size]
    return web.json_response(
        {
            "total": len(found),
            "page": page,
            "page_size": page_size,
            "total_pages": max(1, math.ceil(len(found) / page_size)),
            "webhooks": [h.public() for h in chosen],
        }
    )


async def get_webhook(request: web.Request) -> web.Response:
    hook = _hook(request, _owner(request))
    return web.json_response(
        {"success": True, "message": "Webhook retrieved successfully", "webhook": hook.public()}
    )


async def update_webhook(request: web.Request) -> web.Response:
    owner = _owner(request)
    hook = _hook(request, owner)
    body = await json_body(request)
    fields = check_fields(body, creating=False)
    if fields.url is None and fields.type is not None:
        # A new type is checked against the url it will keep.
        check = Checker(body)
        _check_url(check, hook.url, fields.type)
        if check.issues:
            raise error(422, check.issues)
    for name in ("name", "url", "type", "delivery_mode", "method", "headers", "params", "auth"):
        value = getattr(fields, name)
        if value is not None:
            setattr(hook, name, value)
    if fields.formatter_config is not None:
        hook.formatter_config = fields.formatter_config
    if fields.is_active is not None:
        hook.is_active = fields.is_active
    hook.updated_at = datetime.now(UTC)
    return web.json_response(
        {"success": True, "message": "Webhook updated successfully", "webhook": hook.public()}
    )


async def delete_webhook(request: web.Request) -> web.Response:
    hook = _hook(request, _owner(request))
    del _hooks(request).webhooks[hook.id]
    return web.Response(status=204)


def check_job_webhooks(request: web.Request, owner: str, webhook_ids: list[str]) -> tuple[str, ...]:
    """The submit body's ``webhook_ids`` without repeats; 400 for one this key does not own.

    Checked after the body's validation (422 first, as FastAPI validates before the handler runs).
    400 rather than 404 because the official SDK documents 400, 401, 403 and 422 for submit and
    no 404, and because submit already answers an unknown ``connected_dataset_ids`` entry so.
    """
    store = _hooks(request)
    unique = tuple(dict.fromkeys(webhook_ids))
    for webhook_id in unique:
        if store.owned(webhook_id, owner) is None:
            raise error(400, f"Webhook not found or not accessible: {webhook_id}")
    return unique


def add_routes(app: web.Application) -> None:
    app[WEBHOOKS_KEY] = WebhookStore()
    app[DISPATCHER_KEY] = WebhookDispatcher(app[JOBS_KEY], app[WEBHOOKS_KEY], app[SETTINGS_KEY])
    app.router.add_post("/catchAll/webhooks", create_webhook)
    app.router.add_get("/catchAll/webhooks", list_webhooks)
    app.router.add_get("/catchAll/webhooks/{webhook_id}", get_webhook)
    app.router.add_patch("/catchAll/webhooks/{webhook_id}", update_webhook)
    app.router.add_delete("/catchAll/webhooks/{webhook_id}", delete_webhook)
    app.cleanup_ctx.append(webhooks_ctx)


# --------------------------------------------------------------------------------------------------
# Deliveries


def webhook_record(job: Job, index: int, at: datetime) -> dict[str, Any]:
    """Record ``index`` in the shape webhook payloads carry (``MonitorRecord``)."""
    record = make_record(job, index)
    stamp = iso(at)
    for citation in record["citations"]:
        citation["id"] = hashlib.sha256(citation["link"].encode()).hexdigest()[:24]
        citation["job_id"] = job.job_id
        citation["added_on"] = stamp
    return {**record, "added_on": stamp, "updated_on": stamp}


def payload(job: Job, now: float, wall: datetime) -> dict[str, Any]:
    """The ``WebhookPayload`` body for a finished job; the monitor fields are null."""
    view = job.view(now)
    shown = min(view.valid, PAYLOAD_RECORDS)
    return {
        "monitor_id": None,
        "reference_job_id": None,
        "latest_job_id": job.job_id,
        "records_count": view.valid,
        "jobs_processed": None,
        "updated_at": iso(wall),
        "cron_expression": None,
        "timezone": None,
        "records": [webhook_record(job, i, wall) for i in range(shown)],
    }


class WebhookDispatcher:
    """Delivers each finished job's payload to each of its webhooks, with retries."""

    def __init__(self, jobs: JobStore, hooks: WebhookStore, settings: SandboxSettings) -> None:
        self.jobs = jobs
        self.hooks = hooks
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def tick(self) -> float:
        return max(MIN_TICK, self.settings.scaled(DELIVERY_TICK))

    async def run(self) -> None:
        while True:
            self.dispatch_due(self.settings.clock())
            await asyncio.sleep(self.tick)

    def dispatch_due(self, now: float) -> None:
        for job_id in list(self.hooks.pending):
            job = self.jobs.jobs.get(job_id)
            if job is None:
                self.hooks.pending.discard(job_id)
                continue
            if now < job.finishes_at():
                continue
            settled = True
            for webhook_id in job.webhook_ids:
                hook = self.hooks.webhooks.get(webhook_id)
                if hook is None or not hook.is_active:
                    continue  # deleted or paused: nothing is owed
                key = (job.job_id, job.round, webhook_id)
                state = self.hooks.deliveries.setdefault(key, Delivery())
                if state.delivered or state.gave_up:
                    continue
                settled = False
                if state.in_flight or now < state.next_at:
                    continue
                state.in_flight = True
                task = asyncio.create_task(self.deliver(job, hook, state))
                self.tasks.add(task)
                task.add_done_callback(self._done)
            if settled:
                self.hooks.pending.discard(job_id)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("catchall_webhook_crashed", error=repr(exc))

    async def deliver(self, job: Job, hook: Webhook, state: Delivery) -> None:
        if self.session is None:
            state.in_flight = False
            return
        state.attempts += 1
        body = orjson.dumps(payload(job, self.settings.clock(), datetime.now(UTC)))
        headers = {**hook.headers, **hook.auth_headers(), "Content-Type": "application/json"}
        url = URL(hook.url).update_query(hook.params) if hook.params else URL(hook.url)
        try:
            outcome, code = await send(self.session, url, body, headers, method=hook.method)
        finally:
            state.in_flight = False
        state.delivered = outcome == "ok"
        self.hooks.history.append(
            {
                "webhook_id": hook.id,
                "job_id": job.job_id,
                "status_code": code,
                "attempt_number": state.attempts,
                "status": "SUCCESS" if state.delivered else "FAILED",
                "created_at": iso(datetime.now(UTC)),
            }
        )
        if state.delivered:
            log.info("catchall_webhook_delivered", job_id=job.job_id, webhook_id=hook.id)
            return
        state.next_at = retry_at(self.settings, DELIVERY_RETRY_DELAY, state.attempts)
        log.warning(
            "catchall_webhook_failed",
            job_id=job.job_id,
            webhook_id=hook.id,
            attempt=state.attempts,
            outcome=outcome,
            gave_up=state.gave_up,
        )

    async def close(self) -> None:
        await cancel_all(self.tasks)


DISPATCHER_KEY: Final = web.AppKey("catchall_webhook_dispatcher", WebhookDispatcher)


webhooks_ctx: Final = delivery_ctx(DISPATCHER_KEY, DELIVERY_TIMEOUT)


__all__ = [
    "DISPATCHER_KEY",
    "WEBHOOKS_KEY",
    "Delivery",
    "Webhook",
    "WebhookDispatcher",
    "WebhookStore",
    "add_routes",
    "check_job_webhooks",
    "payload",
]
