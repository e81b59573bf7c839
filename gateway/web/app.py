"""``create_app(settings)``: the composition root. Every resource is opened in ``cleanup_ctx`` and
closed in reverse order, so a test that builds an app leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web

from adapters.base import Adapter
from adapters.http import Connection
from adapters.registry import PROVIDERS
from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.access import Access
from gateway.blobs import FilesystemBlobStore
from gateway.cadence import DurationBook
from gateway.callbacks import CallbackConfig, CallbackInbox, callback_secrets, signed_endpoints
from gateway.capturer import Capturer
from gateway.events import EventHub
from gateway.feed import RemoteFeed
from gateway.logs import secrets_of
from gateway.metrics import Metrics
from gateway.policy import PollPolicy
from gateway.quota import LocalQuota, SharedQuota
from gateway.results import FetchPolicy, ResultFetcher
from gateway.runner import Runner
from gateway.service import JobService
from gateway.settings import Settings
from gateway.snapshots import Snapshots
from gateway.store.base import JobStore
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from gateway.web.bodies import close_after_a_broken_body
from gateway.web.cors import setup_cors
from gateway.web.docs import docs_asset, docs_page
from gateway.web.middleware import gateway_middleware
from gateway.web.observability import (
    echo_request_id,
    metrics_endpoint,
)
from gateway.web.openapi import openapi_json
from gateway.web.pages import setup_pages
from gateway.web.problems import MAX_BODY_KEY
from gateway.web.routes import ROUTES
from gateway.web.sse import setup_sse
from gateway.web.state import COMPONENTS_KEY, Components
from gateway.webhooks import CALLBACK_RESOLVER_KEY, CallbackCheck, Webhooks
from gateway.writer import JobWriter

log = structlog.get_logger("jobgate.app")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[gateway_middleware],
        # Carried by the app, so every runner (jobgate serve, the tests' servers) applies it; the
        # timeout before a first request is GatewayRunner's (gateway/web/server.py).
        handler_args={"keepalive_timeout": settings.server.keepalive_timeout_seconds},
    )
    app.on_response_prepare.append(echo_request_id)
    app.on_response_prepare.append(close_after_a_broken_body)
    app[COMPONENTS_KEY] = Components(settings=settings, metrics=Metrics())
    app[MAX_BODY_KEY] = settings.server.max_body_bytes
    setup_cors(app, settings.server.cors_origins)
    setup_sse(app)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.handler.__name__)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
    setup_pages(app)  # the jobs page: /, /ui/ and its files (public, like /docs)
    app.router.add_get("/docs/assets/{name}", docs_asset)
    # Prometheus text, not JSON: served beside the API rather than documented in its OpenAPI.
    app.router.add_get("/metrics", metrics_endpoint)
    # The store first: a store that cannot be opened stops start-up before anything else runs.
    app.cleanup_ctx.append(_store)
    if settings.sandbox.embedded:
        app.cleanup_ctx.append(_embedded_sandbox)
    app.cleanup_ctx.append(_core)
    return app


def make_store(settings: Settings) -> JobStore:
    if settings.store.kind == "memory":
        return MemoryStore()
    if settings.store.kind == "postgres":
        return PostgresStore(
            settings.store.postgres_dsn(),
            schema=settings.store.schema_,
            max_size=settings.store.pool_size,
        )
    path = Path(settings.store.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path, exclusive=True)


async def _store(app: web.Application) -> AsyncIterator[None]:
    components = app[COMPONENTS_KEY]
    store = make_store(components.settings)
    await store.open()
    components.store = store
    try:
        yield
    finally:
        components.store = None
        await store.close()


async def _embedded_sandbox(app: web.Application) -> AsyncIterator[None]:
    """The four provider sandboxes in this process, for ``make run`` and the demo."""
    settings = app[COMPONENTS_KEY].settings
    config = settings.sandbox
    sandbox = create_sandbox_app(
        SandboxSettings(
            speed=config.speed,
            faults=config.faults,
            seed=config.seed,
            # Pulse's pushes are set up on Pulse's side (Svix), not per job: tell the sandbox where
            # they go, with the secret _core's callback_secrets() gives the inbox (one per process).
            pulse_webhooks=signed_endpoints(settings),
        )
    )
    runner = web.AppRunner(sandbox, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    app[COMPONENTS_KEY].sandbox_url = f"http://{config.host}:{config.port}"
    log.info("sandbox.started", url=app[COMPONENTS_KEY].sandbox_url, speed=config.speed)
    try:
        yield
    finally:
        await runner.cleanup()


USER_CALLS = 16
"""Connections a provider's pool keeps beside the poll loop's: submits, cancels and results."""


def provider_session(concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive pool per provider, sized to its policy: the runner never has more than
    ``concurrency`` polls in flight for it, so its polls always find a connection to reuse (one
    pool for every provider capped them all at aiohttp's 100 together), and a provider's burst
    cannot take another's connections."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + USER_CALLS))


def api_host(base_url: str) -> str:
    """The provider's own host: the only one its key may travel to, besides the API calls."""
    return urlsplit(base_url).hostname or ""


def _fetch_policy(settings: Settings, name: str) -> FetchPolicy:
    provider = settings.providers[name]
    own_host = api_host(provider.base_url)
    return FetchPolicy(
        max_bytes=provider.results.max_bytes,
        # Large reads: each chunk of a capture is a write, a hash update and a follower's wake-up.
        chunk_size=256 * 1024,
        allowed_hosts=frozenset({own_host, *provider.result_hosts}),
        allowed_networks=tuple(
            ipaddress.ip_network(net, strict=False) for net in provider.result_networks
        ),
        allowed_ports=provider.pointer_ports(),
    )


async def _core(app: web.Application) -> AsyncIterator[None]:
    components = app[COMPONENTS_KEY]
    settings = components.settings
    store = components.require_store()
    # First: it is what refuses to start without a secret, and nothing is open yet to leak.
    access = Access.from_settings(settings, store, components.metrics.auth_rejected)
    # Before anything is opened too: a vault that cannot be written stops start-up with one line.
    blobs = FilesystemBlobStore(settings.vault_path())
    await blobs.open()
    sessions: list[aiohttp.ClientSession] = []
    hub = EventHub()
    adapters: dict[str, Adapter] = {}
    policies: dict[str, PollPolicy] = {}
    key_headers: dict[str, tuple[str, str]] = {}
    provider_hosts: dict[str, str] = {}
    enabled = [name for name, provider in settings.providers.items() if provider.enabled]
    pushing = [name for name in enabled if PROVIDERS[name].adapter.capabilities.push]
    callbacks = CallbackConfig(settings.server.public_base_url, callback_secrets(settings, pushing))
    # Every adapter masks every secret, not only its own key: a provider may echo anything it was
    # sent, and the callback URL it was given carries a token.
    masked = [*secrets_of(settings), *callbacks.secrets.values()]
    for name in enabled:
        provider = settings.providers[name]
        session = provider_session(provider.policy.concurrency)
        sessions.append(session)
        adapter = PROVIDERS[name].adapter(
            session,
            Connection(provider.base_url, settings.provider_key(name), provider.timeouts()),
            observer=components.metrics.upstream_call,
            secrets=masked,
        )
        adapters[name] = adapter
        policies[name] = provider.policy.to_policy()
        key_headers[name] = next(iter(adapter.auth_headers().items()))
        provider_hosts[name] = api_host(provider.base_url)
        components.fetchers[name] = ResultFetcher(_fetch_policy(settings, name))
    snapshots = Snapshots(settings.server.job_cache_size)
    # Another replica's writes and claims, named by the store (NOTIFY): drop what they changed.
    store.subscribe_jobs(
        lambda job_ids: snapshots.drop_all() if job_ids is None else snapshots.drop(job_ids)
    )
    writer = JobWriter(store, hub, observer=components.metrics, snapshots=snapshots)
    # The rate-limit quota the runner spends; captured pages spend from it too.
    quota = SharedQuota(store.quota, policies) if isinstance(store, PostgresStore) else None
    capturer = Capturer(
        blobs,
        adapters,
        components.fetchers,
        {name: settings.providers[name].results.to_policy() for name in enabled},
        policies,
        quota=quota or LocalQuota(policies),
        key_headers=key_headers,
        provider_hosts=provider_hosts,
        # Inside the claim's lease, with room to write the outcome: a capture that ran past its
        # lease could meet another replica's capture of the same result.
        timeout=settings.runner.lease_seconds * 0.8,
        on_stream=hub.nudge,
        observe=components.metrics.vault,
    )
    components.access = access
    components.metrics.add_tenants(settings.known_tenants())
    # What every replica learned of the providers' durations, before the first poll is scheduled.
    durations = DurationBook(
        store, policies, {name: PROVIDERS[name].cadence_key for name in enabled}
    )
    await durations.load()
    runner = Runner(
        store,
        adapters,
        policies,
        hub,
        tick=settings.runner.tick_ms / 1000,
        batch=settings.runner.batch,
        lease=settings.runner.lease_seconds,
        observer=components.metrics,
        push_expected=callbacks.expects_push,
        writer=writer,
        quota=capturer.quota,
        capturer=capturer,
        cadence=durations,
    )
    components.metrics.add_providers(adapters)
    components.runner = runner
    components.service = JobService(
        store,
        adapters,
        policies,
        hub,
        wake=runner.wake,
        key_headers=key_headers,
        provider_hosts=provider_hosts,
        public_base_url=settings.server.public_base_url,
        callback_secrets=callbacks.secrets,
        writer=writer,
        check_callback=CallbackCheck.from_settings(settings, app.get(CALLBACK_RESOLVER_KEY)),
        idempotency_lease=settings.store.idempotency_lease_seconds,
        limits=settings.limits.of,
        on_limited=components.metrics.limited,
        capturer=capturer,
        capture_wait=settings.vault.capture_wait_seconds,
        first_poll=runner.first_poll,
    )
    components.callbacks = CallbackInbox(
        callbacks,
        store,
        components.service.called_back,
        status_tables={name: adapter.status_table for name, adapter in adapters.items()},
    )
    # Outbound webhooks tail the persisted event log, so they need no hook in the runner.
    webhooks = Webhooks.from_settings(settings, store, hub)
    tasks = await webhooks.start() if webhooks is not None else []
    tasks.append(asyncio.create_task(_purge_keys(store, settings), name="jobgate-key-purge"))
    tasks.append(asyncio.create_task(access.run_flusher(), name="jobgate-key-last-used"))
    # A key revoked by another process (a replica, `jobgate keys revoke`) is forgotten at once.
    store.subscribe(lambda kind: access.forget() if kind == "keys" else None)
    tasks.append(
        asyncio.create_task(
            _recover_keys(components.service, settings), name="jobgate-key-recovery"
        )
    )
    if settings.store.kind == "postgres":
        # Other replicas' changes reach this one's waiters, streams and runner.
        feed = RemoteFeed(store, hub, on_due=runner.wake, on_changed=snapshots.drop)
        await feed.start()
        store.subscribe(feed.signal)
        tasks.append(asyncio.create_task(feed.run(), name="jobgate-feed"))
    # Every replica, polling or not: one that only serves the API still picks new jobs' first
    # polls by what the others learned.
    tasks.append(asyncio.create_task(durations.run(), name="jobgate-durations"))
    if settings.runner.enabled:
        tasks.append(asyncio.create_task(runner.run(), name="jobgate-runner"))
    log.info("gateway.started", providers=sorted(adapters), store=settings.store.kind)
    _announce_auth(settings)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fetcher in components.fetchers.values():
            await fetcher.close()
        if webhooks is not None:
            await webhooks.close()
        for session in sessions:
            await session.close()
        with contextlib.suppress(Exception):  # the last minute of key use; best effort
            await access.flush_last_used()
        components.access = None
        components.service = None
        components.runner = None
        components.callbacks = None


def _announce_auth(settings: Settings) -> None:
    if settings.auth_required():
        log.info("auth.required", keys_configured=len(settings.auth.keys))
        return
    # One plain line an operator cannot miss: who can reach this port can do anything.
    log.warning(
        "auth.off",
        message="no API keys are needed: every caller on this machine is the 'default' tenant "
        "with every scope. Set JOBGATE_AUTH__REQUIRED=true to require keys "
        "(jobgate keys create --tenant T --scopes jobs:read,jobs:write)",
        host=settings.server.host,
    )


async def _recover_keys(service: JobService, settings: Settings) -> None:
    """Settle keys whose holder died mid-call, a few times per lease, so an upstream job made
    just before a crash is tracked even if its client never retries. The first round waits too:
    a client retrying at start-up recovers its own key at once, and start-up makes no upstream
    call that a provider outage could hold up."""
    interval = settings.store.idempotency_lease_seconds / 4
    while True:
        await asyncio.sleep(interval)
        try:
            settled = await service.recover_abandoned()
        except Exception:  # a store or provider outage: the next round tries again
            log.exception("idempotency.recovery_failed")
        else:
            if settled:
                log.info("idempotency.recovered", keys=settled)


async def _purge_keys(store: JobStore, settings: Settings) -> None:
    """Forget idempotency keys past their time to live, hourly (and once at start-up)."""
    ttl = timedelta(hours=settings.store.idempotency_ttl_hours)
    while True:
        purged = await store.purge_idempotency(datetime.now(UTC) - ttl)
        if purged:
            log.info("idempotency.purged", keys=purged)
        await asyncio.sleep(3600)
