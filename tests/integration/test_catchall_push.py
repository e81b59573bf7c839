"""CatchAll push end to end: the sandbox's webhooks deliver each job's end to a gateway that
registered its own webhook, over real sockets.

The gateways poll CatchAll only after 600 s here, so a job that reaches ``succeeded`` within the
test was refreshed by a delivery. Each gateway is served on a socket bound first, so that its
public URL (part of the webhook's identity) is known before its settings are built; a gateway
standing in for "the next process" binds the same port again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web
from newscatcher_catchall import AsyncCatchAllApi, WebhookPayload
from newscatcher_catchall.errors import (
    BadRequestError,
    NotFoundError,
    UnprocessableEntityError,
)
from newscatcher_catchall.webhooks import (
    CreateWebhookRequestDtoAuth_ApiKey,
    UpdateWebhookRequestDtoAuth_ApiKey,
)
from structlog.testing import capture_logs

from adapters.catchall.sandbox import JOBS_KEY, JobStore
from adapters.catchall.sandbox_webhooks import WEBHOOKS_KEY, Webhook, WebhookStore
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.callbacks import TOKEN_HEADER
from gateway.catchall_push import WEBHOOK_NAME
from gateway.jobs import Job
from gateway.service import JobService
from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY, gateway_settings
from tests.support import GatewayParts, bound_socket

pytestmark = pytest.mark.integration

KEY = "test-key"
SECRET = "cb-secret-catchall-push-7c4e1d"
NEW_SECRET = "cb-secret-catchall-rotated-18ab90"
SPEED = 400.0  # a CatchAll job takes 720 / 400 = 1.8 s
IDLE_POLICY: dict[str, Any] = {"first_delay": 600.0, "min_interval": 600.0, "max_interval": 600.0}
ROUNDS = 30
"""Bounded waits: each round is at most one second."""


# --------------------------------------------------------------------------------------------------
# A sandbox and gateways


@dataclass
class Upstream:
    app: web.Application
    url: str

    @property
    def base(self) -> str:
        return self.url + PROVIDERS["catchall"].prefix

    @property
    def hooks(self) -> WebhookStore:
        return self.app[SUBAPPS_KEY]["catchall"][WEBHOOKS_KEY]

    @property
    def jobs(self) -> JobStore:
        return self.app[SUBAPPS_KEY]["catchall"][JOBS_KEY]

    def ours(self) -> list[Webhook]:
        return [h for h in self.hooks.webhooks.values() if h.name == WEBHOOK_NAME]

    def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        return [d for d in self.hooks.history if d["webhook_id"] == webhook_id]


@dataclass
class Gateway(GatewayParts):
    url: str
    port: int
    app: web.Application
    client: aiohttp.ClientSession
    db: Path

    @property
    def service(self) -> JobService:
        return self.app[COMPONENTS_KEY].require_service()

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(
            f"{self.url}/v1/jobs", json={"provider": "catchall", "request": request}
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 201, body
            return body

    async def until_succeeded(self, job_id: str) -> dict[str, Any]:
        for _ in range(ROUNDS):
            async with self.client.get(f"{self.url}/v1/jobs/{job_id}?wait=1") as response:
                job: dict[str, Any] = await response.json()
            if job["state"] == "succeeded":
                return job
            assert job["state"] in ("queued", "running"), job
        raise AssertionError(f"job {job_id} was not pushed to its end: {job}")

    async def stored(self, job_id: str) -> Job:
        job = await self.service.store.get(job_id)
        assert job is not None
        return job


@dataclass
class Factory:
    upstream: Upstream
    tmp_path: Path
    client: aiohttp.ClientSession
    runners: dict[int, web.AppRunner] = field(default_factory=dict)

    async def start(
        self,
        *,
        secret: str = SECRET,
        port: int = 0,
        public_url: str | None = None,
        name: str = "jobs",
    ) -> Gateway:
        # The next process binds the port the last one left (its webhook's url names it).
        sock, url = bound_socket(port, reuse=True)
        port = sock.getsockname()[1]
        db = self.tmp_path / f"{name}.db"
        settings = gateway_settings(
            self.upstream.url,
            db,
            server={"public_base_url": public_url or url},
            providers={
                "catchall": {
                    "base_url": self.upstream.base,
                    "api_key": KEY,
                    "result_hosts": ["127.0.0.1"],
                    "result_networks": ["127.0.0.1/32"],
                    "policy": {**FAST_POLICY, **IDLE_POLICY},
                    "callback_secret": secret,
                }
            },
        )
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners[port] = runner
        await web.SockSite(runner, sock).start()
        return Gateway(url, port, app, self.client, db)

    async def stop(self, gateway: Gateway) -> None:
        await self.runners.pop(gateway.port).cleanup()


@pytest.fixture
async def upstream(serve: Serve) -> Upstream:
    app = create_sandbox_app(SandboxSettings(speed=SPEED, seed=21))
    return Upstream(app, await serve(app))


@pytest.fixture
async def gateways(
    upstream: Upstream, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[Factory]:
    factory = Factory(upstream, tmp_path, http_session)
    yield factory
    for runner in reversed(list(factory.runners.values())):
        await runner.cleanup()


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(ROUNDS * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def sdk(upstream: Upstream) -> AsyncIterator[AsyncCatchAllApi]:
    async with httpx.AsyncClient(timeout=10) as transport:
        yield AsyncCatchAllApi(base_url=upstream.base, api_key=KEY, httpx_client=transport)


def secret_free(gateway: Gateway, *secrets: str) -> None:
    stored = b"".join(path.read_bytes() for path in gateway.db.parent.glob(f"{gateway.db.name}*"))
    for secret in secrets:
        assert secret.encode() not in stored


# --------------------------------------------------------------------------------------------------
# Push through the gateway


async def test_two_jobs_end_by_push_through_one_webhook(
    upstream: Upstream, gateways: Factory
) -> None:
    gateway = await gateways.start()
    first, second = await asyncio.gather(
        gateway.submit({"query": "Series B rounds in logistics", "limit": 10}),
        gateway.submit({"query": "EV battery recalls", "limit": 10}),
    )
    (hook,) = upstream.ours()
    assert hook.url == f"{gateway.url}/v1/callbacks/catchall"
    assert "token" not in hook.url
    assert hook.auth == {"type": "api_key", "header": TOKEN_HEADER, "value": SECRET}
    for job in (first, second):
        assert upstream.jobs.jobs[job["upstream_id"]].webhook_ids == (hook.id,)

    finished = await asyncio.gather(*(gateway.until_succeeded(j["id"]) for j in (first, second)))
    assert [job["state"] for job in finished] == ["succeeded", "succeeded"]
    # Each end was seen through one delivery and one refresh: the runner never polled by itself.
    assert gateway.inbox.refreshes == 2
    assert gateway.runner.status_calls["catchall"] == 2
    assert [d["status_code"] for d in upstream.deliveries(hook.id)] == [202, 202]

    stored = await gateway.stored(first["id"])
    assert stored.request == {"query": "Series B rounds in logistics", "limit": 10}
    assert stored.push_asked
    assert gateway.runner.push_expected is not None
    secret_free(gateway, SECRET)


async def test_the_next_process_reuses_the_webhook_and_a_new_secret_patches_it(
    upstream: Upstream, gateways: Factory
) -> None:
    first = await gateways.start(name="first")
    job = await first.submit({"query": "port strikes", "limit": 10})
    await first.until_succeeded(job["id"])
    (hook,) = upstream.ours()
    created = hook.updated_at
    await gateways.stop(first)

    again = await gateways.start(port=first.port, name="again")
    job = await again.submit({"query": "port strikes again", "limit": 10})
    await again.until_succeeded(job["id"])
    assert [h.id for h in upstream.ours()] == [hook.id]
    assert hook.updated_at == created  # found as it should be: no write
    await gateways.stop(again)

    with capture_logs() as logs:
        rotated = await gateways.start(port=first.port, secret=NEW_SECRET, name="rotated")
        job = await rotated.submit({"query": "after the rotation", "limit": 10})
        await rotated.until_succeeded(job["id"])
    assert [h.id for h in upstream.ours()] == [hook.id]
    assert hook.updated_at > created
    assert hook.auth is not None
    assert hook.auth["value"] == NEW_SECRET
    assert upstream.jobs.jobs[job["upstream_id"]].webhook_ids == (hook.id,)
    assert any(e["event"] == "catchall_push.webhook_updated" for e in logs)
    logged = orjson.dumps(logs, default=str).decode()
    assert NEW_SECRET not in logged
    assert SECRET not in logged
    secret_free(rotated, SECRET, NEW_SECRET)


async def test_the_clients_webhooks_are_kept_and_a_wrong_token_is_401(
    upstream: Upstream, gateways: Factory, sdk: AsyncCatchAllApi
) -> None:
    gateway = await gateways.start()
    theirs = await sdk.webhooks.create_webhook(
        name="the client's",
        url=f"{gateway.url}/v1/callbacks/catchall",
        auth=CreateWebhookRequestDtoAuth_ApiKey(header=TOKEN_HEADER, value="not-the-secret"),
    )
    assert theirs.webhook is not None
    their_id = theirs.webhook.id
    job = await gateway.submit(
        {"query": "mergers in shipping", "limit": 10, "webhook_ids": [their_id]}
    )
    (ours,) = upstream.ours()
    assert upstream.jobs.jobs[job["upstream_id"]].webhook_ids == (their_id, ours.id)
    await gateway.until_succeeded(job["id"])
    assert (await gateway.stored(job["id"])).request == {
        "query": "mergers in shipping",
        "limit": 10,
        "webhook_ids": [their_id],
    }

    await until(lambda: len(upstream.deliveries(their_id)) == 4, "the client's webhook to give up")
    assert {d["status_code"] for d in upstream.deliveries(their_id)} == {401}
    assert [d["status_code"] for d in upstream.deliveries(ours.id)] == [202]
    assert gateway.inbox.refreshes == 1


async def test_five_client_webhooks_leave_no_room_and_no_push_is_expected(
    upstream: Upstream, gateways: Factory, sdk: AsyncCatchAllApi
) -> None:
    gateway = await gateways.start()
    theirs: list[str] = []
    for i in range(5):
        created = await sdk.webhooks.create_webhook(
            name=f"client {i}", url=f"{gateway.url}/v1/callbacks/catchall?client={i}"
        )
        assert created.webhook is not None
        theirs.append(created.webhook.id)
    job = await gateway.submit({"query": "grid outages", "limit": 10, "webhook_ids": theirs})
    assert upstream.jobs.jobs[job["upstream_id"]].webhook_ids == tuple(theirs)
    assert upstream.ours() == []  # nothing to register for
    assert gateway.runner.push_expected is not None
    assert not gateway.runner.push_expected(await gateway.stored(job["id"]))
    plain = await gateway.submit({"query": "grid outages", "limit": 10})
    assert gateway.runner.push_expected(await gateway.stored(plain["id"]))


async def test_a_failed_registration_submits_without_push_and_logs_once(
    upstream: Upstream, gateways: Factory
) -> None:
    # The real API and the sandbox refuse plain http to a host other than loopback.
    with capture_logs() as logs:
        gateway = await gateways.start(public_url="http://gateway.example.test")
        jobs = [await gateway.submit({"query": f"q{i}", "limit": 10}) for i in range(2)]
    assert upstream.hooks.webhooks == {}
    for job in jobs:
        assert upstream.jobs.jobs[job["upstream_id"]].webhook_ids == ()
    failures = [e for e in logs if e["event"] == "catchall_push.registration_failed"]
    assert len(failures) == 1, failures
    # Submitted without jobgate's webhook: polled at the normal cadence, not the safety net.
    assert gateway.runner.push_expected is not None
    for job in jobs:
        stored = await gateway.stored(job["id"])
        assert not stored.push_asked
        assert not gateway.runner.push_expected(stored)
    assert "HTTPS" in failures[0]["detail"]
    assert SECRET not in orjson.dumps(logs, default=str).decode()


async def test_a_delivery_authenticates_by_the_header_only(
    upstream: Upstream, gateways: Factory
) -> None:
    gateway = await gateways.start()
    job = await gateway.submit({"query": "chip export rules", "limit": 10})
    body = {"latest_job_id": job["upstream_id"], "records_count": 0, "records": []}
    url = f"{gateway.url}/v1/callbacks/catchall"
    async with gateway.client.post(url, json=body, headers={TOKEN_HEADER: "wrong"}) as response:
        assert response.status == 401
        assert SECRET not in await response.text()
    async with gateway.client.post(url, json=body) as response:
        assert response.status == 401
    async with gateway.client.post(url, json=body, headers={TOKEN_HEADER: SECRET}) as response:
        assert response.status == 202
        assert await response.json() == {"matched": True, "duplicate": False}


# --------------------------------------------------------------------------------------------------
# The sandbox's webhooks, through the official SDK and to a receiver of our own


@dataclass
class Receiver:
    """An endpoint that records what it is sent; its first ``refuse`` answers are 503."""

    refuse: int = 0
    got: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(
            (request.method, request.path_qs, dict(request.headers), await request.read())
        )
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503)
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/hook", self.handle)
        return app


async def test_the_official_sdk_manages_webhooks_on_the_sandbox(
    upstream: Upstream, sdk: AsyncCatchAllApi, serve: Serve
) -> None:
    receiver = Receiver(refuse=1)
    target = await serve(receiver.app()) + "/hook"
    created = await sdk.webhooks.create_webhook(
        name="mine",
        url=target,
        method="PUT",
        headers={"X-Custom": "yes"},
        params={"source": "catchall"},
        auth=CreateWebhookRequestDtoAuth_ApiKey(header="X-Hook-Key", value="hook-value-1234"),
    )
    assert created.success
    assert created.webhook is not None
    hook_id = created.webhook.id
    assert created.webhook.type == "generic"
    assert created.webhook.delivery_mode == "full"
    assert created.webhook.is_active
    assert created.webhook.auth is not None
    assert created.webhook.auth.type == "api_key"
    assert "hook-value-1234" not in created.webhook.model_dump_json()  # masked

    listed = await sdk.webhooks.list_webhooks()
    assert (listed.total, listed.page, listed.total_pages) == (1, 1, 1)
    assert [w.id for w in listed.webhooks] == [hook_id]
    fetched = await sdk.webhooks.get_webhook(hook_id)
    assert fetched.webhook is not None
    assert fetched.webhook.url == target

    with pytest.raises(UnprocessableEntityError):
        await sdk.webhooks.create_webhook(name="plain", url="http://hooks.example.test/x")
    with pytest.raises(NotFoundError):
        await sdk.webhooks.get_webhook("no-such-webhook")
    with pytest.raises(BadRequestError):
        await sdk.jobs.create_job(query="q", webhook_ids=["no-such-webhook"])

    job = await sdk.jobs.create_job(query="EV battery recalls", limit=10, webhook_ids=[hook_id])
    await until(lambda: any(d["status"] == "SUCCESS" for d in upstream.hooks.history), "delivery")
    assert [d["status_code"] for d in upstream.deliveries(hook_id)] == [503, 204]
    method, path, headers, raw = receiver.got[-1]
    assert (method, path) == ("PUT", "/hook?source=catchall")
    assert headers["X-Hook-Key"] == "hook-value-1234"
    assert headers["X-Custom"] == "yes"
    body = WebhookPayload.model_validate(orjson.loads(raw))
    assert body.latest_job_id == job.job_id
    assert body.records_count == 10
    assert body.records is not None
    assert len(body.records) == 10
    assert body.monitor_id is None

    # A continue ends again, and is delivered again.
    await sdk.jobs.continue_job(job_id=job.job_id, new_limit=20)
    await until(lambda: len(receiver.got) == 3, "the second round's delivery")
    again = WebhookPayload.model_validate(orjson.loads(receiver.got[-1][3]))
    assert again.records_count == 20

    updated = await sdk.webhooks.update_webhook(
        hook_id,
        is_active=False,
        auth=UpdateWebhookRequestDtoAuth_ApiKey(header="X-Hook-Key", value="rotated-5678"),
    )
    assert updated.webhook is not None
    assert updated.webhook.is_active is False
    assert upstream.hooks.webhooks[hook_id].auth == {
        "type": "api_key",
        "header": "X-Hook-Key",
        "value": "rotated-5678",
    }
    await sdk.webhooks.delete_webhook(hook_id)
    assert (await sdk.webhooks.list_webhooks()).total == 0
    with pytest.raises(NotFoundError):
        await sdk.webhooks.delete_webhook(hook_id)


async def test_webhook_validation_is_422_in_fastapis_shape(
    upstream: Upstream, http_session: aiohttp.ClientSession
) -> None:
    async def create(body: dict[str, Any]) -> tuple[int, Any]:
        async with http_session.post(
            f"{upstream.base}/catchAll/webhooks", json=body, headers={"x-api-key": KEY}
        ) as response:
            return response.status, await response.json()

    cases: list[tuple[dict[str, Any], set[tuple[Any, ...]]]] = [
        ({"url": "https://h.example.test/x"}, {("body", "name")}),
        ({"name": "n", "url": "ftp://h.example.test/x"}, {("body", "url")}),
        ({"name": "n", "url": "https://h.example.test/x", "method": "GET"}, {("body", "method")}),
        ({"name": "n", "url": "https://h.example.test/x", "auth": {}}, {("body", "auth")}),
        (
            {"name": "n", "url": "https://h.example.test/x", "auth": {"type": "api_key"}},
            {("body", "auth", "api_key", "header"), ("body", "auth", "api_key", "value")},
        ),
        (
            {"name": "n", "url": "https://h.example.test/x", "headers": {"a": 1}},
            {("body", "headers", "a")},
        ),
        ({"name": "n", "url": "https://h.example.test/x", "type": "slack"}, {("body", "url")}),
        (
            {"name": "n", "url": "https://h.example.test/x", "type": "custom"},
            {("body", "formatter_config")},
        ),
    ]
    for body, locs in cases:
        status, answer = await create(body)
        assert status == 422, (body, answer)
        assert {tuple(issue["loc"]) for issue in answer["detail"]} == locs, (body, answer)
    assert upstream.hooks.webhooks == {}
    status, answer = await create({"name": "n", "url": "https://h.example.test/x"})
    assert status == 201
    async with http_session.get(
        f"{upstream.base}/catchAll/webhooks/{answer['webhook']['id']}",
        headers={"x-api-key": "another-key"},
    ) as response:
        assert response.status == 404  # another organisation's
        assert set(await response.json()) == {"detail"}
