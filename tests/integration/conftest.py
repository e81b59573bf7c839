"""A gateway and the four sandboxes, each on its own port of 127.0.0.1, talking real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.settings import Settings, load_settings
from gateway.web.app import create_app
from gateway.web.server import GatewayRunner
from tests.conftest import Serve

FAST_POLICY: dict[str, Any] = {
    "first_delay": 0.05,
    "min_interval": 0.05,
    "max_interval": 0.2,
    "multiplier": 1.5,
    "deadline": 120,
    "error_max_interval": 0.3,
    "breaker_cooldown": 0.2,
    "rate_per_second": 500,
    "burst": 100,
}


def gateway_settings(
    sandbox_url: str,
    db: Path,
    *,
    policy: dict[str, Any] | None = None,
    api_key: str = "test-key",
    provider_options: dict[str, Any] | None = None,
    per_provider: dict[str, dict[str, Any]] | None = None,
    **sections: Any,
) -> Settings:
    """Settings for a test gateway: SQLite at ``db``, every provider at the test sandbox;
    ``provider_options`` go to every provider, ``per_provider[name]`` to one (and win)."""
    providers = {
        name: {
            "base_url": sandbox_url + spec.prefix,
            "api_key": api_key,
            "result_hosts": ["127.0.0.1"],
            "result_networks": ["127.0.0.1/32"],
            "policy": {**FAST_POLICY, **(policy or {})},
            **(provider_options or {}),
            **(per_provider or {}).get(name, {}),
        }
        for name, spec in PROVIDERS.items()
    }
    base: dict[str, Any] = {
        "store": {"kind": "sqlite", "path": str(db)},
        "sandbox": {"embedded": False},
        "runner": {"tick_ms": 10},
        "providers": providers,
        # Open on loopback, as `make run` is; the auth tests turn keys on (tests/integration/
        # test_auth*.py), and a test stack never binds anything but 127.0.0.1.
        "auth": {"required": False},
        "vault": {"path": str(db.parent / "results")},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(db.parent / "no-such-config.toml", **base)


@dataclass
class Stack:
    """A running sandbox and gateway, plus a client for the gateway."""

    sandbox: web.Application
    sandbox_url: str
    url: str
    client: aiohttp.ClientSession
    settings: Settings
    app: web.Application
    server: TestServer

    def upstream_jobs(self, provider: str) -> int:
        from importlib import import_module

        module = import_module(f"adapters.{provider}.sandbox")
        return len(self.sandbox[SUBAPPS_KEY][provider][module.JOBS_KEY])

    async def submit(self, provider: str, request: dict[str, Any], **extra: Any) -> dict[str, Any]:
        async with self.client.post(
            f"{self.url}/v1/jobs", json={"provider": provider, "request": request, **extra}
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 201, body
            return body

    async def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        async with self.client.get(f"{self.url}/v1/jobs/{job_id}?wait={wait}") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def platform_job(
        self, kind: str = "export", scenario: str = "succeed", key: str = "test-key"
    ) -> str:
        """The upstream id of a new platform job: the platform creates jobs elsewhere, and its
        sandbox has a side door for that (any non-empty key)."""
        async with self.client.post(
            f"{self.sandbox_url}/platform/v1/api/sandbox/jobs",
            json={"type": kind, "scenario": scenario},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 201
            upstream_id: str = (await response.json())["data"]["id"]
        return upstream_id

    async def until_finished(self, job_id: str, *, rounds: int = 200) -> dict[str, Any]:
        """Long-poll until the job is finished; bounded by ``rounds`` waits of at most 1 s."""
        for _ in range(rounds):
            job = await self.job(job_id, wait=1)
            if job["state"] in ("succeeded", "failed", "canceled", "expired"):
                return job
        raise AssertionError(f"job {job_id} did not finish: {job}")


StackFactory = Callable[..., Awaitable[Stack]]


class GatewayTestServer(TestServer):
    """A test server with the runner ``jobgate serve`` uses (its connection timeouts too)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def make_stack(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[StackFactory]:
    """Build a sandbox + gateway pair; ``speed``/``faults`` go to the sandbox, the rest to
    :func:`gateway_settings`."""

    async def build(
        *,
        speed: float = 400.0,
        faults: float = 0.0,
        seed: int = 11,
        db: Path | None = None,
        sandbox: tuple[web.Application, str] | None = None,
        **settings_kwargs: Any,
    ) -> Stack:
        if sandbox is None:
            sandbox_app = create_sandbox_app(SandboxSettings(speed=speed, faults=faults, seed=seed))
            sandbox_url = await serve(sandbox_app)
        else:
            sandbox_app, sandbox_url = sandbox
        settings = gateway_settings(sandbox_url, db or tmp_path / "jobs.db", **settings_kwargs)
        app = create_app(settings)
        server = GatewayTestServer(app, host="127.0.0.1")
        await server.start_server()
        gateways.append(server)
        url = str(server.make_url("")).rstrip("/")
        return Stack(sandbox_app, sandbox_url, url, http_session, settings, app, server)

    gateways: list[TestServer] = []
    yield build
    for server in reversed(gateways):
        await server.close()
