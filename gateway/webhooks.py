"""Outbound webhooks: signed per Standard Webhooks, delivered at least once, across restarts too.

Three parts:

- pure rules: the signature (:func:`sign`, from ``gateway/signatures.py``), the retry schedule
  (:func:`retry_delay`), what an answer means (:func:`outcome_of`) and which events go where
  (:func:`category_of`, :func:`targets`);
- :class:`WebhookDispatcher` tails the persisted event log from a cursor kept in the store, and for
  each terminal (or, where asked, progress) event enqueues one delivery per target URL. Enqueueing
  and moving the cursor are one transaction, so a crash anywhere loses no event and doubles none,
  and the state write itself never waits on webhooks;
- :class:`WebhookSender` claims due deliveries under a lease, POSTs them through an SSRF-safe client
  (the result fetcher's checks and pinned resolver), and records each attempt;
- :class:`CallbackCheck` applies the same rules (:func:`webhook_policy`, :func:`vet_url`) to a
  job's ``callback_url`` when it is submitted, so a client learns at once that its callback would
  never come. Delivery checks again: a name can resolve elsewhere by then.

Every retry of a delivery carries the same ``webhook-id``, so receivers can drop duplicates; the
timestamp and signature are made afresh for each attempt. Logs name a target's host, never its
URL (a callback URL may carry a token in its query), and never the secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from aiohttp import web

from adapters.http import utcnow
from gateway.auth import DEFAULT_TENANT
from gateway.errors import CallbackURLRefused
from gateway.events import EventHub, wait_set
from gateway.leased import LeasedLoop, LeasedWork
from gateway.results import (
    _PINS,  # the fetcher's per-request pins; a POST must be pinned exactly like a GET
    STANDARD_PORTS,
    FetchPolicy,
    FetchTimeout,
    HostResolver,
    PointerFetchFailed,
    ResultFetcher,
    UnsafeURL,
    system_resolver,
    vet_url,
)
from gateway.settings import Settings
from gateway.signatures import generate_secret, parse_secret, signed_headers
from gateway.states import FINISHED
from gateway.store.base import Delivery, DeliveryOutcome, Event, JobStore, NewDelivery

log = structlog.get_logger("jobgate.webhooks")

CURSOR = "webhooks"
"""The store cursor naming the last event the dispatcher has turned into deliveries."""
USER_AGENT = "jobgate-webhooks/1"

Category = Literal["terminal", "progress"]

# --------------------------------------------------------------------------------------------------
# Pure rules


def message_id(job_id: str, event_id: int) -> str:
    """Stable for every attempt of a delivery. The job id keeps it unique even across stores whose
    event ids restart (a fresh database), which a receiver deduplicating by it would not forgive.
    """
    return f"msg_{job_id.removeprefix('job_')}_{event_id}"


def retry_delay(schedule: Sequence[float], attempts: int) -> float | None:
    """Seconds to wait before the next attempt after ``attempts`` have been made (the first entry
    is the wait before the first one), or ``None`` once the schedule is exhausted."""
    if attempts < 0:
        raise ValueError("attempts must be >= 0")
    return float(schedule[attempts]) if attempts < len(schedule) else None


def outcome_of(status: int) -> Literal["delivered", "disabled", "retry"]:
    """A 2xx delivers; 410 Gone disables the endpoint; anything else, a 3xx included (redirects are
    never followed), is a failed attempt."""
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "disabled"
    return "retry"


def category_of(event: Event) -> Category | None:
    """``terminal`` when the job has finished (a job adopted already finished counts), ``progress``
    for any other change of state or progress; ``None`` for what webhooks do not carry."""
    if event.kind in ("created", "state") and event.state in FINISHED:
        return "terminal"
    if event.kind in ("state", "progress"):
        return "progress"
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    events: frozenset[str]
    tenants: frozenset[str] | None = None
    """Only these tenants' jobs; ``None``: every tenant's (an operator's endpoint)."""


def targets(
    category: Category,
    callback_url: str | None,
    endpoints: Iterable[Endpoint],
    tenant: str = DEFAULT_TENANT,
) -> list[str]:
    """Where one event goes: the job's own callback URL (terminal events only), then every
    endpoint subscribed to the category and to the job's tenant, each URL once."""
    urls: list[str] = []
    if category == "terminal" and callback_url:
        urls.append(callback_url)
    for endpoint in endpoints:
        if endpoint.tenants is not None and tenant not in endpoint.tenants:
            continue
        if category in endpoint.events and endpoint.url not in urls:
            urls.append(endpoint.url)
    return urls


def payload(event: Event) -> str:
    """The canonical job as the event recorded it (``job.public()``), without the log's extras."""
    return orjson.dumps({k: v for k, v in event.data.items() if k != "from"}).decode()


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class WebhookConfig:
    key: bytes
    endpoints: tuple[Endpoint, ...]
    schedule: tuple[float, ...]
    policy: FetchPolicy
    concurrency: int = 16
    retention: timedelta = timedelta(days=7)

    @property
    def timeout(self) -> float:
        return self.policy.timeout.total


def webhooks_enabled(settings: Settings) -> bool:
    """Whether anything is sent at all: only what can be signed (a secret, or the embedded
    sandbox's own)."""
    return settings.webhooks.secret is not None or settings.sandbox.embedded


def webhook_policy(settings: Settings) -> FetchPolicy:
    """Where webhooks may go: the rules for every delivery and for a ``callback_url`` at submit.
    Raises ``ValueError`` for host patterns the SSRF policy cannot take.

    The configured endpoints' hosts and ports are allowed as they are: the operator wrote them.
    """
    hooks = settings.webhooks
    own = [urlsplit(endpoint.url) for endpoint in hooks.endpoints]
    return FetchPolicy(
        allowed_hosts=frozenset({*hooks.allowed_hosts, *(parts.hostname or "" for parts in own)}),
        allowed_networks=tuple(
            ipaddress.ip_network(net, strict=False) for net in hooks.allowed_networks
        ),
        allowed_ports=frozenset(
            {*STANDARD_PORTS, *hooks.allowed_ports, *(p.port for p in own if p.port)}
        ),
        max_redirects=0,
        timeout=FetchTimeout(connect=min(hooks.timeout, 10.0), total=hooks.timeout),
        label="webhook URL",
    )


def webhook_config(settings: Settings) -> WebhookConfig | None:
    """The webhook configuration, or ``None`` when nothing can be signed (no secret outside the
    embedded sandbox). Raises ``ValueError`` for host patterns the SSRF policy cannot take."""
    if not webhooks_enabled(settings):
        return None
    hooks = settings.webhooks
    if hooks.secret is not None:
        secret = hooks.secret.get_secret_value()
    else:
        secret = generate_secret()
        # Only the fact: the secret itself never reaches a log line.
        log.info("webhooks.secret_generated", lifetime="this process")
    return WebhookConfig(
        key=parse_secret(secret),
        endpoints=tuple(
            Endpoint(
                e.url,
                frozenset(e.events),
                frozenset(e.tenants) if e.tenants is not None else None,
            )
            for e in hooks.endpoints
        ),
        schedule=tuple(hooks.schedule),
        policy=webhook_policy(settings),
        concurrency=hooks.concurrency,
        retention=timedelta(hours=hooks.retention_hours),
    )


# --------------------------------------------------------------------------------------------------
# The HTTP client


class WebhookClient(ResultFetcher):
    """POSTs under the result fetcher's rules: scheme and host allow-list, every resolved address
    checked, the connection pinned to the checked addresses, no proxy, no cookies. Redirects are
    answers, never followed."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The answer's status. Raises :class:`UnsafeURL` for a target that may never be called,
        :class:`PointerFetchFailed` when no answer came (worth retrying)."""
        target, pins = await vet_url(url, self.policy, self._resolve)
        timeout = aiohttp.ClientTimeout(
            total=self.policy.timeout.total, connect=self.policy.timeout.connect
        )
        token = _PINS.set(pins)
        try:
            async with self._client().post(
                target.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Only the host and the kind of failure: the URL's query may carry the receiver's token.
            raise PointerFetchFailed(
                f"could not deliver to {target.host} ({type(exc).__name__})"
            ) from exc
        finally:
            _PINS.reset(token)


# --------------------------------------------------------------------------------------------------
# The check at submit

CALLBACK_RESOLVER_KEY: web.AppKey[HostResolver] = web.AppKey("jobgate_callback_resolver")
"""Replaces the system resolver of the ``callback_url`` check (tests: a table, never DNS)."""


class CallbackCheck:
    """Refuses, at submit, a ``callback_url`` that delivery would refuse: the same policy and the
    same checks, the resolution included. Raises :class:`CallbackURLRefused` naming the reason.

    A name that cannot be resolved now is refused too: what cannot be checked is not accepted, and
    the refusal is not stored under an Idempotency-Key, so a retry is judged afresh. ``policy`` is
    ``None`` when this gateway sends no webhooks, and then every ``callback_url`` is refused.
    """

    def __init__(self, policy: FetchPolicy | None, resolver: HostResolver = system_resolver):
        self.policy = None if policy is None else replace(policy, label="callback_url")
        self.resolver = resolver

    @classmethod
    def from_settings(
        cls, settings: Settings, resolver: HostResolver | None = None
    ) -> CallbackCheck:
        policy = webhook_policy(settings) if webhooks_enabled(settings) else None
        return cls(policy, resolver or system_resolver)

    async def __call__(self, url: str) -> None:
        if self.policy is None:
            raise CallbackURLRefused(
                "this gateway sends no webhooks (no webhooks.secret is configured), "
                "so a callback_url would never be called"
            )
        try:
            await vet_url(url, self.policy, self.resolver)
        except (UnsafeURL, PointerFetchFailed) as exc:
            # The messages name the host and the reason, never the path or query (a token).
            raise CallbackURLRefused(exc.message) from None


# --------------------------------------------------------------------------------------------------
# The dispatcher: event log -> deliveries


class WebhookDispatcher:
    """Turns persisted events into persisted deliveries, from a cursor that survives restarts."""

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        config: WebhookConfig,
        *,
        on_enqueued: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.hub = hub
        self.config = config
        self.on_enqueued = on_enqueued
        self.clock = clock
        self.batch = batch
        self.cursor = 0

    async def start(self) -> None:
        """Load the cursor. On first use it starts at the log's end: turning webhooks on must not
        replay every job that ever finished."""
        cursor = await self.store.get_cursor(CURSOR)
        if cursor is None:
            cursor = await self.store.last_event_id()
            await self.store.set_cursor(CURSOR, cursor)
        self.cursor = cursor

    async def step(self) -> int:
        """Enqueue the deliveries of the next batch of events; the number of events read."""
        events = await self.store.events_after(self.cursor, tenant=None, limit=self.batch)
        if not events:
            return 0
        callback_urls = await self._callback_urls(events)
        due = self.clock() + timedelta(seconds=retry_delay(self.config.schedule, 0) or 0.0)
        deliveries: list[NewDelivery] = []
        for event in events:
            category = category_of(event)
            if category is None:
                continue
            callback_url = callback_urls.get(event.job_id) if category == "terminal" else None
            body = payload(event)
            deliveries.extend(
                NewDelivery(event.id, event.job_id, url, category, body, due)
                for url in targets(category, callback_url, self.config.endpoints, event.tenant)
            )
        last = events[-1].id
        added = await self.store.enqueue_deliveries(deliveries, cursor=(CURSOR, last))
        self.cursor = last
        if added:
            self.on_enqueued()
        return len(events)

    async def _callback_urls(self, events: Sequence[Event]) -> dict[str, str | None]:
        """The callback URL of each job that finished in ``events`` (the log does not carry it).

        Looked up together rather than one after another: under a burst of finishing jobs, each
        lookup would otherwise queue behind the runner's writes on its own.
        """
        wanted = {e.job_id: e.tenant for e in events if category_of(e) == "terminal"}
        jobs = await asyncio.gather(*(self.store.get(j, t) for j, t in wanted.items()))
        return {job.id: job.callback_url for job in jobs if job is not None}

    async def run(self) -> None:
        # Registered before the first read, so an event committed during a read still wakes us.
        with self.hub.listen(None) as wake:
            while True:
                try:
                    read = await self.step()
                except Exception:
                    # A loop that must never die: a store hiccup is logged and retried, and the
                    # cursor has not moved past anything that was not enqueued.
                    log.exception("webhooks.dispatch_failed")
                    read = 0
                    await asyncio.sleep(1.0)
                if read < self.batch:
                    # The periodic re-read covers writers the hub does not hear (another process).
                    await wait_set(wake, 1.0)


# --------------------------------------------------------------------------------------------------
# The sender: deliveries -> HTTP


class WebhookSender:
    """Claims due deliveries and sends them, at most ``config.concurrency`` at a time: the leased
    loop of ``gateway.leased``, whose stop hands interrupted attempts back due now."""

    def __init__(
        self,
        store: JobStore,
        config: WebhookConfig,
        client: WebhookClient,
        *,
        clock: Callable[[], datetime] = utcnow,
        tick: float = 0.01,
    ) -> None:
        self.store = store
        self.config = config
        self.client = client
        self.clock = clock
        self._next_purge: datetime | None = None
        self.loop: LeasedLoop[Delivery] = LeasedLoop(
            LeasedWork(
                name="webhooks",
                claim=self._claim,
                run=self._send_guarded,
                hand_back=self._hand_back,
                next_due=store.next_delivery_due,
                clock=clock,
            ),
            capacity=config.concurrency,
            tick=tick,
        )

    @property
    def lease(self) -> timedelta:
        # Long enough for the slowest attempt: a lease that ran out mid-attempt means a duplicate.
        return timedelta(seconds=2 * self.config.timeout + 5)

    def wake(self) -> None:
        self.loop.wake()

    async def step(self) -> int:
        """Start sending what is due (as far as there is room); the number started."""
        return await self.loop.step()

    async def drain(self) -> None:
        """Wait for every attempt in flight (tests)."""
        await self.loop.drain()

    async def run(self) -> None:
        await self.loop.run()

    async def stop(self) -> None:
        await self.loop.stop()

    async def send(self, delivery: Delivery) -> DeliveryOutcome:
        """One attempt at ``delivery`` (as claimed), recorded in the store."""
        started = self.clock()
        msg_id = message_id(delivery.job_id, delivery.event_id)
        body = delivery.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(self.config.key, msg_id, int(started.timestamp()), body),
        }
        host = urlsplit(delivery.url).hostname
        attempts = delivery.attempts + 1
        status: int | None = None
        error: str | None = None
        outcome: DeliveryOutcome
        try:
            status = await self.client.post(delivery.url, body, headers)
        except UnsafeURL as exc:
            error = f"{exc.code}: {exc.message}"
            outcome = "failed"  # the target will not become safe by waiting
        except PointerFetchFailed as exc:
            error = exc.message
            outcome = "retry"
        else:
            outcome = outcome_of(status)
            if outcome == "retry":
                error = (
                    f"redirect not followed ({status})"
                    if 300 <= status < 400
                    else f"answered {status}"
                )
        now = self.clock()
        retry_at: datetime | None = None
        if outcome == "retry":
            delay = retry_delay(self.config.schedule, attempts)
            if delay is None:
                outcome = "failed"
            else:
                retry_at = now + timedelta(seconds=delay)
        assert delivery.next_attempt_at is not None, "a claimed delivery carries its lease"
        await self.store.finish_delivery(
            delivery.id,
            leased_until=delivery.next_attempt_at,
            outcome=outcome,
            attempts=attempts,
            now=now,
            retry_at=retry_at,
            last_status=status,
            last_error=error,
        )
        fields = {
            "job_id": delivery.job_id,
            "delivery_id": delivery.id,
            "webhook_id": msg_id,
            "host": host,
            "attempt": attempts,
            "status": status,
        }
        if outcome == "delivered":
            log.info("webhook.delivered", **fields)
        elif outcome == "disabled":
            log.warning("webhook.endpoint_disabled", **fields)
        elif outcome == "failed":
            log.warning("webhook.failed", error=error, **fields)
        else:
            assert retry_at is not None
            log.info(
                "webhook.retry",
                error=error,
                retry_in=round((retry_at - now).total_seconds(), 3),
                **fields,
            )
        return outcome

    # -- internals -----------------------------------------------------------------------------

    async def _claim(self, room: int) -> list[Delivery]:
        now = self.clock()
        await self._purge(now)
        return await self.store.claim_due_deliveries(now, limit=room, lease_until=now + self.lease)

    async def _send_guarded(self, delivery: Delivery) -> None:
        try:
            await self.send(delivery)
        except Exception:
            # A boundary that must never die: one bad attempt must not stop the others. The
            # delivery stays leased and is tried again when the lease runs out.
            log.exception("webhook.attempt_crashed", delivery_id=delivery.id)

    async def _purge(self, now: datetime) -> None:
        if self._next_purge is not None and now < self._next_purge:
            return
        self._next_purge = now + timedelta(hours=1)
        purged = await self.store.purge_deliveries(now - self.config.retention)
        if purged:
            log.info("webhooks.purged", deliveries=purged)

    async def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Interrupted attempts are due again now, uncounted (a fenced write: one that finished
        meanwhile stays finished)."""
        now = self.clock()
        for delivery in deliveries:
            assert delivery.next_attempt_at is not None
            await self.store.finish_delivery(
                delivery.id,
                leased_until=delivery.next_attempt_at,
                outcome="retry",
                attempts=delivery.attempts,
                now=now,
                retry_at=now,
                last_status=delivery.last_status,
                last_error=delivery.last_error,
            )


# --------------------------------------------------------------------------------------------------
# Composition


class Webhooks:
    """The dispatcher and the sender, for the app's lifecycle: ``start`` then ``close``."""

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        config: WebhookConfig,
        *,
        client: WebhookClient | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.client = client or WebhookClient(config.policy)
        self.sender = WebhookSender(store, config, self.client, clock=clock)
        self.dispatcher = WebhookDispatcher(
            store, hub, config, on_enqueued=self.sender.wake, clock=clock
        )

    @classmethod
    def from_settings(cls, settings: Settings, store: JobStore, hub: EventHub) -> Webhooks | None:
        config = webhook_config(settings)
        if config is None:
            log.info("webhooks.disabled", reason="no webhooks.secret")
            return None
        return cls(store, hub, config)

    async def start(self) -> list[asyncio.Task[None]]:
        await self.dispatcher.start()
        log.info(
            "webhooks.started",
            endpoints=len(self.config.endpoints),
            attempts=len(self.config.schedule),
        )
        return [
            asyncio.create_task(self.dispatcher.run(), name="jobgate-webhook-dispatcher"),
            asyncio.create_task(self.sender.run(), name="jobgate-webhook-sender"),
        ]

    async def close(self) -> None:
        await self.client.close()
