"""A hostile ``callback_url`` is refused at ``POST /v1/jobs`` (422, naming the reason), by the
rules that delivery applies, through a real gateway and a real sandbox on 127.0.0.1.

Names are answered by a table handed to the gateway (``CALLBACK_RESOLVER_KEY``), never by DNS,
and nothing refused is ever contacted: no job is written and no upstream job is created.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.web.app import create_app
from gateway.webhooks import CALLBACK_RESOLVER_KEY
from tests.conftest import Serve
from tests.integration.conftest import Stack, gateway_settings
from tests.integration.test_webhooks import Receiver, hooks, until_rows
from tests.unit.test_webhooks import SECRET

pytestmark = pytest.mark.integration

EXTRACT = {"url": "https://example.com"}


@dataclass
class FakeDNS:
    """Answers from a table and records every question; other names fail like NXDOMAIN."""

    table: dict[str, list[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "not in the test table")
        return self.table[host]


MakeGateway = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_gateway(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[MakeGateway]:
    """A sandbox and a gateway whose ``callback_url`` check asks ``dns`` (when given)."""
    gateways: list[TestServer] = []

    async def build(dns: FakeDNS | None = None, **sections: Any) -> Stack:
        sandbox = create_sandbox_app(SandboxSettings(speed=400.0))
        sandbox_url = await serve(sandbox)
        db = tmp_path / f"jobs-{len(gateways)}.db"
        settings = gateway_settings(sandbox_url, db, **sections)
        app = create_app(settings)
        if dns is not None:
            app[CALLBACK_RESOLVER_KEY] = dns
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        gateways.append(server)
        url = str(server.make_url("")).rstrip("/")
        return Stack(sandbox, sandbox_url, url, http_session, settings, app, server)

    yield build
    for server in reversed(gateways):
        await server.close()


async def post_job(stack: Stack, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    async with stack.client.post(f"{stack.url}/v1/jobs", json=body, headers=headers) as response:
        if response.status >= 400:
            assert response.content_type == "application/problem+json"
        return response.status, await response.json()


async def job_ids(stack: Stack) -> list[str]:
    async with stack.client.get(f"{stack.url}/v1/jobs") as response:
        return [job["id"] for job in (await response.json())["jobs"]]


# Every host below is on the allow-list, so what refuses most of them is the address they are or
# resolve to: the allow-list is not the only line.
ALLOWED_HOSTS = [
    "hooks.test",
    "internal.test",
    "localhost",
    "0x7f000001",
    "127.0.0.1",
    "::1",
    "10.0.0.5",
    "169.254.169.254",
    "::ffff:169.254.169.254",
]
DNS_TABLE = {
    "hooks.test": ["93.184.216.34"],
    "internal.test": ["93.184.216.34", "10.0.0.7"],
    "localhost": ["127.0.0.1", "::1"],
    # What getaddrinfo makes of it: the number 0x7f000001 is 127.0.0.1.
    "0x7f000001": ["127.0.0.1"],
}

HOSTILE = [
    ("http://127.0.0.1:22/", "callback_url host 127.0.0.1 is a forbidden address (loopback)"),
    (
        "http://169.254.169.254/latest/meta-data",
        "callback_url host 169.254.169.254 is a forbidden address (cloud metadata)",
    ),
    ("http://[::1]/", "callback_url host ::1 is a forbidden address (loopback)"),
    ("http://10.0.0.5/", "callback_url host 10.0.0.5 is a forbidden address (private)"),
    (
        "http://[::ffff:169.254.169.254]/",
        "callback_url host ::ffff:a9fe:a9fe is a forbidden address "
        "(IPv4-mapped cloud metadata 169.254.169.254)",
    ),
    ("http://user:pass@hooks.test/cb", "callback_url carries credentials (userinfo)"),
    (
        "http://localhost/",
        "callback_url host localhost resolves to 127.0.0.1, a forbidden address (loopback)",
    ),
    (
        "https://internal.test/cb?token=s3cret",
        "callback_url host internal.test resolves to 10.0.0.7, a forbidden address (private)",
    ),
    (
        "http://0x7f000001/",
        "callback_url host 0x7f000001 resolves to 127.0.0.1, a forbidden address (loopback)",
    ),
    ("http://hooks.test:22/", "callback_url port 22 is not allowed"),
    ("https://hooks.test:6379/", "callback_url port 6379 is not allowed"),
    ("http://evil.test/cb", "callback_url host evil.test is not allowed"),
]


@pytest.mark.parametrize(("callback_url", "reason"), HOSTILE)
async def test_a_hostile_callback_url_is_refused_at_submit_naming_the_reason(
    make_gateway: MakeGateway, callback_url: str, reason: str
) -> None:
    dns = FakeDNS(dict(DNS_TABLE))
    stack = await make_gateway(
        dns,
        webhooks={"secret": SECRET, "allowed_hosts": ALLOWED_HOSTS, "allowed_networks": []},
        # No job ever finishes, so a check that let one through still sends nothing anywhere:
        # delivery resolves with the system resolver, and these names must never reach DNS.
        runner={"enabled": False},
    )
    status, problem = await post_job(
        stack, {"provider": "extract", "request": EXTRACT, "callback_url": callback_url}
    )
    assert status == 422, problem
    assert problem["code"] == "callback_url_refused"
    assert problem["detail"] == reason
    assert "s3cret" not in str(problem)
    # Refused before anything was written or sent upstream.
    assert await job_ids(stack) == []
    assert stack.upstream_jobs("extract") == 0
    # Only names are looked up, and only once they passed the pure checks.
    assert dns.asked == ([URL(callback_url).host] if "resolves to" in reason else [])


async def test_an_adopt_is_checked_too_and_a_refusal_is_not_kept_under_its_key(
    make_gateway: MakeGateway,
) -> None:
    stack = await make_gateway(
        FakeDNS(dict(DNS_TABLE)),
        webhooks={"secret": SECRET, "allowed_hosts": ALLOWED_HOSTS},
        runner={"enabled": False},
    )
    adopt = {"provider": "platform", "upstream_id": "job_x", "callback_url": "http://10.0.0.5/"}
    status, problem = await post_job(stack, adopt)
    assert (status, problem["code"]) == (422, "callback_url_refused")

    hostile = {"provider": "extract", "request": EXTRACT, "callback_url": "http://localhost/"}
    status, problem = await post_job(stack, hostile, **{"Idempotency-Key": "k1"})
    assert (status, problem["code"]) == (422, "callback_url_refused")
    # The key was never claimed: the corrected request under the same key is a new submit.
    status, job = await post_job(
        stack, {"provider": "extract", "request": EXTRACT}, **{"Idempotency-Key": "k1"}
    )
    assert status == 201, job
    assert await job_ids(stack) == [job["id"]]


@pytest.mark.parametrize("callback_url", ["file:///etc/passwd", "gopher://x/", "/relative"])
async def test_a_callback_url_that_is_not_http_is_refused_by_the_body_schema(
    make_gateway: MakeGateway, callback_url: str
) -> None:
    # Refused before the service (so before the check): the body model wants an http(s) URL.
    stack = await make_gateway(
        webhooks={"secret": SECRET, "allowed_hosts": ALLOWED_HOSTS}, runner={"enabled": False}
    )
    status, problem = await post_job(
        stack, {"provider": "extract", "request": EXTRACT, "callback_url": callback_url}
    )
    assert (status, problem["code"]) == (422, "validation_error")
    assert "http or https" in problem["detail"]
    assert await job_ids(stack) == []


async def test_without_webhooks_a_callback_url_is_refused(make_gateway: MakeGateway) -> None:
    stack = await make_gateway(runner={"enabled": False})
    status, problem = await post_job(
        stack,
        {"provider": "extract", "request": EXTRACT, "callback_url": "https://hooks.example/cb"},
    )
    assert (status, problem["code"]) == (422, "callback_url_refused")
    assert "sends no webhooks" in problem["detail"]
    assert stack.upstream_jobs("extract") == 0


# -- ports ----------------------------------------------------------------------------------------


async def test_a_callback_port_is_allowed_only_when_listed(
    make_gateway: MakeGateway, serve: Serve
) -> None:
    receiver = Receiver()
    receiver_url = await serve(receiver.app())
    port = URL(receiver_url).port
    unlisted = {**hooks(receiver_url), "allowed_ports": []}
    closed = await make_gateway(webhooks=unlisted)
    for callback_url, refused in [(f"{receiver_url}/cb", port), ("http://127.0.0.1:22/cb", 22)]:
        status, problem = await post_job(
            closed, {"provider": "extract", "request": EXTRACT, "callback_url": callback_url}
        )
        assert (status, problem["code"]) == (422, "callback_url_refused")
        assert problem["detail"] == f"callback_url port {refused} is not allowed"

    listed = await make_gateway(webhooks=hooks(receiver_url))
    status, problem = await post_job(
        listed,
        {"provider": "extract", "request": EXTRACT, "callback_url": "http://127.0.0.1:22/cb"},
    )
    assert (status, problem["detail"]) == (422, "callback_url port 22 is not allowed")
    job = await listed.submit("extract", EXTRACT, callback_url=f"{receiver_url}/cb")
    await listed.until_finished(job["id"])
    await receiver.until(lambda: bool(receiver.to("cb")))
    (call,) = receiver.to("cb")
    assert call.verified
    assert call.body["id"] == job["id"]
    rows = await until_rows(listed, lambda rows: bool(rows) and rows[0].status == "delivered")
    assert [row.url for row in rows] == [f"{receiver_url}/cb"]


async def test_a_webhook_endpoint_on_its_own_port_needs_no_listing(
    make_gateway: MakeGateway, serve: Serve
) -> None:
    receiver = Receiver()
    receiver_url = await serve(receiver.app())
    # Only the endpoint names the receiver's port: the operator wrote it, so it is allowed.
    stack = await make_gateway(
        webhooks={**hooks(receiver_url, {"url": "/sub"}), "allowed_ports": []}
    )
    job = await stack.submit("extract", EXTRACT)
    await stack.until_finished(job["id"])
    await receiver.until(lambda: bool(receiver.to("sub")))
    assert receiver.to("sub")[0].body["id"] == job["id"]
