"""Inbound callbacks end to end: the extract sandbox pushes to a gateway that knows its own URL.

The gateway's public URL must be known before its settings are built, so each gateway here is served
on a socket bound first (port 0), whose port then goes into ``server.public_base_url``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from adapters.extract import sandbox as extract_sandbox
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.web.app import create_app
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY, gateway_settings
from tests.support import GatewayParts, bound_socket

pytestmark = pytest.mark.integration

SECRET = "cb-secret-3f9c2a7e-do-not-log"
CATCHALL_SECRET = "cb-secret-catchall-5d1e"
# Slow on purpose: polling alone takes seconds to notice a finish; a push should not.
SLOW_POLICY: dict[str, Any] = {
    "first_delay": 1.0,
    "min_interval": 2.0,
    "max_interval": 5.0,
    "multiplier": 1.5,
}
# Never polls on its own within a test: every status call comes from a refresh.
IDLE_POLICY: dict[str, Any] = {"first_delay": 600.0, "min_interval": 600.0, "max_interval": 600.0}


@dataclass
class Gateway(GatewayParts):
    url: str
    app: web.Application
    sandbox: web.Application
    client: aiohttp.ClientSession
    db: Path

    def upstream(self, upstream_id: str) -> extract_sandbox.ExtractJob:
        jobs = self.sandbox[SUBAPPS_KEY]["extract"][extract_sandbox.JOBS_KEY]
        job = jobs.get(upstream_id)
        assert job is not None
        return job

    async def submit(self, provider: str, request: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(
            f"{self.url}/v1/jobs", json={"provider": provider, "request": request}
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 201, body
            return body

    async def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        async with self.client.get(f"{self.url}/v1/jobs/{job_id}?wait={wait}") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def callback(
        self,
        provider: str,
        body: Any,
        *,
        token: str | None = SECRET,
        header: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        params = {"token": token} if token is not None else {}
        headers = {"X-Jobgate-Callback-Token": header} if header is not None else {}
        async with self.client.post(
            f"{self.url}/v1/callbacks/{provider}", json=body, params=params, headers=headers
        ) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            return response.status, answer


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[GatewayFactory]:
    runners: list[web.AppRunner] = []

    async def build(
        *,
        callbacks: bool = True,
        speed: float = 400.0,
        policy: dict[str, Any] | None = None,
        catchall_secret: str | None = None,
        pulse_secret: str | None = None,
        name: str = "jobs",
    ) -> Gateway:
        sandbox = create_sandbox_app(SandboxSettings(speed=speed, seed=5))
        sandbox_url = await serve(sandbox)
        sock, url = bound_socket()

        def provider(name: str, secret: str | None) -> dict[str, Any]:
            return {
                "base_url": sandbox_url + PROVIDERS[name].prefix,
                "api_key": "test-key",
                "policy": {**FAST_POLICY, **(policy or {})},
                **({"callback_secret": secret} if secret is not None else {}),
            }

        db = tmp_path / f"{name}.db"
        settings = gateway_settings(
            sandbox_url,
            db,
            policy=policy,
            server={"public_base_url": url} if callbacks else {},
            providers={
                "extract": provider("extract", SECRET if callbacks else None),
                "catchall": provider("catchall", catchall_secret),
                "pulse": provider("pulse", pulse_secret),
            },
        )
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return Gateway(url, app, sandbox, http_session, db)

    yield build
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass
class Run:
    status_calls: int
    lag: float
    """Seconds from the sandbox finishing the job to the gateway's state saying so."""


async def _one_job(gateway: Gateway) -> Run:
    job = await gateway.submit("extract", {"url": "https://example.com", "singlePage": True})
    upstream = gateway.upstream(job["upstream_id"])
    for _ in range(100):  # each wait is at most 1 s
        job = await gateway.job(job["id"], wait=1)
        if job["state"] == "succeeded":
            seen = time.monotonic()
            break
    else:
        raise AssertionError(f"the job did not finish: {job}")
    return Run(gateway.runner.status_calls["extract"], seen - upstream.finished_at())


async def test_a_push_brings_the_finish_within_a_second_with_fewer_polls(
    make_gateway: GatewayFactory,
) -> None:
    """A one-page job takes about 4.5 s at speed 7; the first poll is at 1 s, then every 2-5 s."""
    pushed = await make_gateway(callbacks=True, speed=7.0, policy=SLOW_POLICY, name="pushed")
    polled = await make_gateway(callbacks=False, speed=7.0, policy=SLOW_POLICY, name="polled")
    with_push, without = await asyncio.gather(_one_job(pushed), _one_job(polled))
    print(
        f"\ncallbacks: {with_push.status_calls} status calls, lag {with_push.lag:.3f} s; "
        f"polling only: {without.status_calls} status calls, lag {without.lag:.3f} s"
    )
    assert with_push.lag < 1.0, with_push
    assert with_push.status_calls < without.status_calls, (with_push, without)
    assert pushed.inbox.refreshes == 1


async def test_the_token_goes_upstream_but_never_into_the_stored_job(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(speed=1.0)
    request = {"url": "https://example.com", "singlePage": True}
    job = await gateway.submit("extract", request)
    sent = gateway.upstream(job["upstream_id"]).request.callback_url
    assert sent == f"{gateway.url}/v1/callbacks/extract?token={SECRET}"
    service = gateway.app[COMPONENTS_KEY].require_service()
    stored = await service.store.get(job["id"])
    assert stored is not None
    assert stored.request == request
    assert SECRET.encode() not in b"".join(
        path.read_bytes() for path in gateway.db.parent.glob(f"{gateway.db.name}*")
    )


async def test_a_clients_own_callback_url_is_left_alone(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(speed=1.0)
    request = {"url": "https://example.com", "callbackUrl": "https://client.example.test/hook"}
    job = await gateway.submit("extract", request)
    assert gateway.upstream(job["upstream_id"]).request.callback_url == request["callbackUrl"]


async def test_a_wrong_or_missing_token_is_401_without_the_secret(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(speed=1.0, policy=IDLE_POLICY)
    job = await gateway.submit("extract", {"url": "https://example.com"})
    body = {"jobId": job["upstream_id"], "status": "completed", "result": {}}
    for token, header in (("wrong", None), (None, None), (None, "wrong"), (SECRET[:-1], None)):
        status, problem = await gateway.callback("extract", body, token=token, header=header)
        assert status == 401, problem
        assert problem["code"] == "callback_unauthorized"
        assert SECRET not in str(problem)
    status, answer = await gateway.callback("extract", body, token=None, header=SECRET)
    assert (status, answer) == (202, {"matched": True, "duplicate": False})


async def test_a_provider_that_does_not_push_or_has_no_secret_is_404(
    make_gateway: GatewayFactory,
) -> None:
    # platform does not push; catchall pushes but has no secret configured here.
    gateway = await make_gateway()
    for provider, token in (("platform", SECRET), ("catchall", SECRET), ("nope", SECRET)):
        status, problem = await gateway.callback(provider, {"job_id": "x"}, token=token)
        assert status == 404, (provider, problem)
        assert problem["code"] == "callbacks_not_enabled"


async def test_a_duplicate_callback_refreshes_once(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(speed=1.0, policy=IDLE_POLICY)
    job = await gateway.submit("extract", {"url": "https://example.com"})
    body = {"jobId": job["upstream_id"], "status": "completed", "result": {"pages": []}}
    first = await gateway.callback("extract", body)
    again = await gateway.callback("extract", body)
    assert first == (202, {"matched": True, "duplicate": False})
    assert again == (202, {"matched": True, "duplicate": True})
    assert gateway.inbox.refreshes == 1
    for _ in range(200):
        if gateway.runner.status_calls["extract"] >= 1:
            break
        await asyncio.sleep(0.01)
    await gateway.runner.drain()
    assert gateway.runner.status_calls["extract"] == 1
    # The callback said "completed"; the upstream says the job is still running, and wins.
    assert (await gateway.job(job["id"]))["state"] in ("queued", "running")


async def test_an_unknown_upstream_id_is_202_unmatched_and_logged(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway()
    with capture_logs() as logs:
        status, answer = await gateway.callback(
            "extract", {"jobId": "job_unknown", "status": "completed"}
        )
    assert (status, answer) == (202, {"matched": False})
    assert any(
        entry["event"] == "callback.unmatched" and entry["upstream_id"] == "job_unknown"
        for entry in logs
    ), logs
    assert SECRET not in str(logs)


async def test_a_body_that_names_no_job_is_422(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    status, problem = await gateway.callback("extract", {"status": "completed"})
    assert status == 422, problem
    assert problem["code"] == "invalid_callback"


async def test_a_catchall_webhook_refreshes_its_job(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(speed=1.0, policy=IDLE_POLICY, catchall_secret=CATCHALL_SECRET)
    job = await gateway.submit("catchall", {"query": "Series B rounds in logistics", "limit": 10})
    webhook = {"event": "job.completed", "data": {"job_id": job["upstream_id"]}}
    status, answer = await gateway.callback("catchall", webhook, token=None, header=CATCHALL_SECRET)
    assert (status, answer) == (202, {"matched": True, "duplicate": False})
    await gateway.runner.drain()
    for _ in range(200):
        if gateway.runner.status_calls["catchall"] >= 1:
            break
        await asyncio.sleep(0.01)
    assert gateway.runner.status_calls["catchall"] == 1
