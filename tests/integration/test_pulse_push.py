"""Pulse's pushes end to end: the sandbox signs job events as Svix does, the gateway verifies them.

Pulse is polled here on a policy that never polls within a test (first poll after 600 s), so a job
that finishes does so because a signed push asked for the status call. The gateway's public URL
must be known before its settings are built, so it is served on a socket bound first (port 0).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.pulse import sandbox as pulse_sandbox
from adapters.pulse.sandbox_jobs import STAGES, Pointer, PulseJob, PulseJobs
from adapters.pulse.sandbox_webhooks import WebhookDispatcher
from adapters.registry import PROVIDERS
from adapters.sandboxes import SUBAPPS_KEY, create_sandbox_app
from adapters.simulator import SandboxSettings, Scenario, stage_durations
from gateway.signatures import TOLERANCE, generate_secret, parse_secret, signed_headers, verify
from gateway.web.app import create_app
from tests.conftest import Serve
from tests.integration.conftest import gateway_settings
from tests.support import GatewayParts, bound_socket, free_port

pytestmark = pytest.mark.integration

SECRET = generate_secret()
IDLE_POLICY: dict[str, Any] = {"first_delay": 600.0, "min_interval": 600.0, "max_interval": 600.0}
SPEED = 100.0
"""A Pulse job's whole life (50 sandbox seconds) in half a second."""
DOCUMENT = {"fileUrl": "https://example.com/report.pdf"}


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@dataclass
class Gateway(GatewayParts):
    url: str
    app: web.Application
    sandbox: web.Application
    client: aiohttp.ClientSession

    @property
    def dispatcher(self) -> pulse_sandbox.WebhookDispatcher:
        return self.sandbox[SUBAPPS_KEY]["pulse"][pulse_sandbox.WEBHOOKS_KEY]

    @property
    def status_calls(self) -> int:
        return self.runner.status_calls["pulse"]

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self.client.post(
            f"{self.url}/v1/jobs", json={"provider": "pulse", "request": request}
        ) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 201, body
            return body

    async def finished(self, job_id: str, within: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                url = f"{self.url}/v1/jobs/{job_id}?wait=1"
                async with self.client.get(url) as response:
                    job: dict[str, Any] = await response.json()
                if job["state"] in ("succeeded", "failed", "canceled"):
                    return job

    async def push(self, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with self.client.post(
            f"{self.url}/v1/callbacks/pulse",
            data=raw,
            headers={"Content-Type": "application/json", **headers},
        ) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            return response.status, answer


def event(upstream_id: str, status: str = "completed") -> bytes:
    return orjson.dumps(
        {"type": f"job.{status}", "data": {"job_id": upstream_id, "status": status}}
    )


def signed(
    raw: bytes, msg_id: str, *, at: float | None = None, secret: str = SECRET
) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    return signed_headers(parse_secret(secret), msg_id, stamp, raw)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    serve: Serve, tmp_path: Path, http_session: aiohttp.ClientSession
) -> AsyncIterator[GatewayFactory]:
    runners: list[web.AppRunner] = []

    async def build(*, sandbox_pushes: bool = True, secret: str = SECRET) -> Gateway:
        sock, url = bound_socket()
        hooks = [(f"{url}/v1/callbacks/pulse", secret)] if sandbox_pushes else []
        sandbox = create_sandbox_app(SandboxSettings(speed=SPEED, seed=5, pulse_webhooks=hooks))
        sandbox_url = await serve(sandbox)
        settings = gateway_settings(
            sandbox_url,
            tmp_path / f"jobs-{len(runners)}.db",
            policy=IDLE_POLICY,
            server={"public_base_url": url},
            providers={
                "pulse": {
                    "base_url": sandbox_url + PROVIDERS["pulse"].prefix,
                    "api_key": "test-key",
                    "callback_secret": secret,
                }
            },
        )
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return Gateway(url, app, sandbox, http_session)

    yield build
    for runner in reversed(runners):
        await runner.cleanup()


# -- the sandbox's pushes reach the job ------------------------------------------------------------


async def test_a_signed_push_from_the_sandbox_finishes_a_job_that_is_never_polled(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway()
    job = await gateway.submit(DOCUMENT)
    assert job["state"] == "queued"
    done = await gateway.finished(job["id"])
    assert done["state"] == "succeeded", done
    assert done["native_status"] == "completed"
    # Only the pushes' refreshes polled: one per event that found the job, never a timer's.
    assert 1 <= gateway.status_calls <= 2
    assert 1 <= gateway.inbox.refreshes <= 2
    sent = [(d.event, d.url) for d in gateway.dispatcher.sent]
    hook = f"{gateway.url}/v1/callbacks/pulse"
    assert sent == [("job.processing", hook), ("job.completed", hook)]


async def test_a_failed_and_a_canceled_job_are_pushed_too(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    failed = await gateway.submit({"fileUrl": "https://example.com/x.pdf?sandbox=fail"})
    assert (await gateway.finished(failed["id"]))["state"] == "failed"
    slow = await gateway.submit({"fileUrl": "https://example.com/y.pdf?sandbox=slow"})
    async with gateway.client.post(f"{gateway.url}/v1/jobs/{slow['id']}/cancel") as response:
        assert response.status in (200, 202), await response.text()
    assert (await gateway.finished(slow["id"]))["state"] == "canceled"

    def events() -> set[tuple[str, str]]:
        return {(d.event, orjson.loads(d.body)["data"]["job_id"]) for d in gateway.dispatcher.sent}

    # The gateway's own cancel may have settled the job first; the push follows all the same.
    await until(lambda: ("job.cancelled", slow["upstream_id"]) in events())
    assert ("job.failed", failed["upstream_id"]) in events()


async def test_an_endpoint_added_through_the_portal_stand_in_gets_the_events(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    answers = iter([500, 503])  # the first two attempts fail: the sandbox retries with backoff

    async def receiver(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=next(answers, 204))

    hook_app = web.Application()
    hook_app.router.add_post("/hook", receiver)
    hook_url = await serve(hook_app) + "/hook"
    sandbox = create_sandbox_app(SandboxSettings(speed=1000.0, seed=5))
    pulse = await serve(sandbox) + PROVIDERS["pulse"].prefix
    key = {"x-api-key": "k"}

    async with http_session.post(f"{pulse}/webhook", headers=key) as response:
        link = (await response.json())["link"]
        assert response.status == 200
    async with http_session.post(link, json={"url": hook_url}, headers=key) as response:
        endpoint = await response.json()
        assert response.status == 200, endpoint
    assert endpoint["id"].startswith("ep_")
    assert endpoint["secret"].startswith("whsec_")
    async with http_session.post(link, json={"url": hook_url, "secret": "nope"}, headers=key) as r:
        assert r.status == 400
        assert "nope" not in await r.text()
    async with http_session.get(link, headers=key) as response:
        assert (await response.json())["data"] == [{"id": endpoint["id"], "url": hook_url}]
    async with http_session.post(link, json={"url": hook_url}) as response:
        assert response.status == 401

    async with http_session.post(
        f"{pulse}/extract", json={**DOCUMENT, "async": True}, headers=key
    ) as response:
        job_id = (await response.json())["job_id"]
    dispatcher = sandbox[SUBAPPS_KEY]["pulse"][pulse_sandbox.WEBHOOKS_KEY]
    await until(lambda: len(dispatcher.sent) == 2)
    assert len(received) == 4, "two failed attempts, then one delivery per event"
    key_bytes = parse_secret(endpoint["secret"])
    ids = []
    for headers, raw in received:
        ids.append(verify(key_bytes, headers, raw, time.time()))
        assert orjson.loads(raw)["data"]["job_id"] == job_id
    # Retries repeat the message id; each event has its own.
    assert len(set(ids)) == 2
    assert sorted(ids.count(msg_id) for msg_id in set(ids)) in ([1, 3], [2, 2])
    kinds = {orjson.loads(raw)["type"] for _, raw in received}
    assert kinds == {"job.processing", "job.completed"}


# -- what the inbox refuses, and what it takes once -----------------------------------------------


async def test_a_bad_a_stale_or_an_unsigned_push_is_401_and_says_why(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(sandbox_pushes=False)
    job = await gateway.submit(DOCUMENT)
    raw = event(job["upstream_id"])
    now = time.time()
    good = signed(raw, "msg_good")
    cases = {
        "invalid_signature": signed(raw, "msg_1", secret=generate_secret()),
        "invalid_timestamp": signed(raw, "msg_2", at=now - TOLERANCE - 30),
        "missing_headers": {},
    }
    future = signed(raw, "msg_3", at=now + TOLERANCE + 30)
    tampered = {**good, "webhook-id": "msg_other"}
    for reason, headers in [
        *cases.items(),
        ("invalid_timestamp", future),
        ("invalid_signature", tampered),
    ]:
        status, problem = await gateway.push(raw, headers)
        assert status == 401, (reason, problem)
        assert problem["code"] == "callback_unauthorized"
        assert problem["reason"] == reason
        text = orjson.dumps(problem).decode()
        assert SECRET not in text
        assert SECRET.removeprefix("whsec_") not in text
        for value in headers.values():
            if value.startswith("v1,"):
                assert value.removeprefix("v1,") not in text
    # The right signature over other bytes (a re-encoded body) is refused too.
    status, problem = await gateway.push(orjson.dumps(orjson.loads(raw)) + b"\n", good)
    assert status == 401
    # A token is no way in for a provider that signs.
    async with gateway.client.post(
        f"{gateway.url}/v1/callbacks/pulse",
        params={"token": SECRET},
        data=raw,
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 401
    await gateway.runner.drain()
    assert gateway.status_calls == 0
    assert gateway.inbox.refreshes == 0


async def test_raw_header_bytes_that_are_not_utf8_or_a_huge_timestamp_are_401_not_500(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(sandbox_pushes=False)
    port = int(gateway.url.rsplit(":", 1)[1])
    raw = event("nobody")
    good = signed(raw, "msg_raw")

    async def post(headers: list[tuple[bytes, bytes]]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /v1/callbacks/pulse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: " + str(len(raw)).encode() + b"\r\n"
        for name, value in headers:
            head += name + b": " + value + b"\r\n"
        writer.write(head + b"\r\n" + raw)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return int(status_line.split()[1])

    stamp = good["webhook-timestamp"].encode()
    signature = good["webhook-signature"].encode()
    cases = [
        [
            (b"webhook-id", b"msg_\xff\xfe"),
            (b"webhook-timestamp", stamp),
            (b"webhook-signature", signature),
        ],
        [
            (b"webhook-id", b"msg_raw"),
            (b"webhook-timestamp", stamp),
            (b"webhook-signature", b"v1,\xff"),
        ],
        [
            (b"webhook-id", b"msg_raw"),
            (b"webhook-timestamp", b"1" + b"0" * 400),
            (b"webhook-signature", signature),
        ],
    ]
    for headers in cases:
        assert await post(headers) == 401, headers
    # The token path too: catchall's token travels in a header.
    assert await post([(b"X-Jobgate-Callback-Token", b"\xff\xfe")]) == 401
    assert gateway.inbox.refreshes == 0


async def test_an_unparsable_body_is_401_unsigned_and_422_or_400_signed(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(sandbox_pushes=False)
    status, problem = await gateway.push(b"{not json", {})
    assert (status, problem["code"]) == (401, "callback_unauthorized")
    status, problem = await gateway.push(b"{not json", signed(b"{not json", "msg_a"))
    assert (status, problem["code"]) == (400, "invalid_json")
    no_job = b'{"type": "job.completed", "data": {}}'
    status, problem = await gateway.push(no_job, signed(no_job, "msg_b"))
    assert (status, problem["code"]) == (422, "invalid_callback")


async def test_a_replayed_webhook_id_is_accepted_once(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(sandbox_pushes=False)
    job = await gateway.submit(DOCUMENT)
    raw = event(job["upstream_id"], "processing")
    headers = signed(raw, "msg_replayed")
    assert await gateway.push(raw, headers) == (202, {"matched": True, "duplicate": False})
    await until(lambda: gateway.status_calls == 1)
    await gateway.runner.drain()
    # The same delivery again, then re-signed with a fresh timestamp (as a retry would be), then
    # the same id over another body: each a duplicate, none a status call.
    resent = signed(raw, "msg_replayed", at=time.time() + 5)
    other = event(job["upstream_id"], "completed")
    for body, again in ((raw, headers), (raw, resent), (other, signed(other, "msg_replayed"))):
        assert await gateway.push(body, again) == (202, {"matched": True, "duplicate": True})
    await asyncio.sleep(0.1)
    await gateway.runner.drain()
    assert gateway.status_calls == 1
    assert gateway.inbox.refreshes == 1
    # A new message is a new hint.
    assert await gateway.push(other, signed(other, "msg_next")) == (
        202,
        {"matched": True, "duplicate": False},
    )
    await until(lambda: gateway.status_calls == 2)


async def test_a_pulse_secret_that_is_not_whsec_is_refused_as_the_settings_load(
    serve: Serve, tmp_path: Path
) -> None:
    sandbox_url = await serve(create_sandbox_app(SandboxSettings(speed=SPEED)))
    with pytest.raises(ValidationError) as caught:
        gateway_settings(
            sandbox_url,
            tmp_path / "jobs.db",
            server={"public_base_url": "http://127.0.0.1:9"},
            per_provider={"pulse": {"callback_secret": "a-plain-token-4d2c"}},
        )
    # What `jobgate serve` prints: the errors without their inputs.
    (error,) = caught.value.errors(include_input=False, include_url=False)
    assert "providers.pulse.callback_secret" in error["msg"]
    assert "whsec_" in error["msg"]
    assert "a-plain-token-4d2c" not in str(error)


# -- make run: the embedded sandbox pushes to its own gateway --------------------------------------


async def test_the_embedded_sandbox_pushes_pulse_events_untouched(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    sock, url = bound_socket()
    port = free_port()
    embedded = f"http://127.0.0.1:{port}"
    settings = gateway_settings(
        embedded,
        tmp_path / "jobs.db",
        policy=IDLE_POLICY,
        server={"public_base_url": url},
        sandbox={"embedded": True, "port": port, "speed": SPEED, "seed": 5},
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        gateway = Gateway(url, app, app, http_session)
        job = await gateway.submit(DOCUMENT)
        done = await gateway.finished(job["id"])
        assert done["state"] == "succeeded", done
        assert gateway.inbox.refreshes >= 1
        assert 1 <= gateway.status_calls <= 2
    finally:
        await runner.cleanup()


# -- the sandbox's bookkeeping, on a hand-moved clock ----------------------------------------------


class HandClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _job(settings: SandboxSettings, scenario: Scenario = Scenario.SUCCEED) -> PulseJob:
    return PulseJob(
        job_id=f"job-{scenario.value}-{settings.clock()}",
        scenario=scenario,
        pointer=Pointer.PRESIGNED,
        timeline=stage_durations(settings, scenario, STAGES),
        created_wall=datetime.now(UTC),
        extraction_id="x",
        source="s",
    )


def _queued(dispatcher: WebhookDispatcher) -> list[tuple[str, str]]:
    return [(orjson.loads(d.body)["data"]["job_id"], d.event) for d in dispatcher.queue]


def test_events_in_order_each_once_and_only_after_an_endpoint_exists() -> None:
    clock = HandClock()
    settings = SandboxSettings(speed=1.0, clock=clock)
    jobs = PulseJobs()
    dispatcher = WebhookDispatcher(jobs, settings)
    early = _job(settings)
    jobs.add(early)
    clock.now += 10  # processing, with no endpoint: nobody is told
    dispatcher.collect(clock.now)
    settings.pulse_webhooks.append(("http://127.0.0.1:9/hook", SECRET))
    late = _job(settings, Scenario.FAIL)
    jobs.add(late)
    canceled = _job(settings)
    jobs.add(canceled)
    dispatcher.collect(clock.now)
    assert _queued(dispatcher) == []
    clock.now += 6  # every job past pending (5 s)
    canceled.canceled_at = clock.now
    clock.now += 100  # early and late finished long ago, in one round
    dispatcher.collect(clock.now)
    dispatcher.collect(clock.now)
    assert _queued(dispatcher) == [
        (early.job_id, "job.completed"),
        (late.job_id, "job.processing"),
        (late.job_id, "job.failed"),
        (canceled.job_id, "job.processing"),
        (canceled.job_id, "job.cancelled"),
    ]
    assert dispatcher.settled == {early.job_id, late.job_id, canceled.job_id}
    assert dispatcher.notified == {}
