"""An upstream that echoes the key: no configured secret reaches anything a client, a database file,
a log, a metric or a webhook receiver can read.

The fake upstream is a real aiohttp server on 127.0.0.1 that impersonates all four providers and
quotes the key header it receives (and the callback URL it is given, with its token) back inside
its error bodies, its failed jobs' messages, a progress step and a native status. The gateway runs
for real, on a SQLite file, through submit, adopt, polls, result fetch, cancel, continue and rerun.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from adapters.redact import MASK
from gateway.auth import Scope, looks_like_key, new_key_secret, public_prefix
from gateway.logs import configure_logging, secrets_of, stdlib_handler
from gateway.web.state import COMPONENTS_KEY
from tests.conftest import Serve
from tests.integration.conftest import Stack, StackFactory
from tests.unit.test_webhooks import SECRET as WEBHOOK_SECRET

pytestmark = pytest.mark.integration

CANARY = "canary-sk_EchoedBack_9d41c07e"
CALLBACK_CANARY = "canary-cb_EchoedBack_51be02aa"
# Pulse's callback secret is a Standard Webhooks signing secret: whsec_ and base64.
PULSE_CALLBACK_CANARY = "whsec_Y2FuYXJ5LXB1bHNlLWVjaG9lZC1iYWNrLTdjMw=="
CANARIES = (CANARY, CALLBACK_CANARY, PULSE_CALLBACK_CANARY, WEBHOOK_SECRET)
FINISHED = frozenset({"succeeded", "failed", "canceled", "expired"})
WAIT = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the echoing upstream -------------------------------------------------------------------------


def key_header(request: web.Request) -> str:
    """The credential exactly as it arrived: the bare key, or ``Bearer <key>``."""
    return request.headers.get("x-api-key") or request.headers.get("Authorization", "")


@dataclass
class EchoingUpstream:
    """Four providers in one app, each quoting the key back wherever a real one prints text."""

    polls: dict[str, int] = field(default_factory=dict)
    callback_urls: list[str] = field(default_factory=list)
    cancel_asked: set[str] = field(default_factory=set)
    reruns: int = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.echo_header])
        routes = [
            ("POST", "/catchall/catchAll/submit", self.catchall_submit),
            ("GET", "/catchall/catchAll/status/{id}", self.catchall_status),
            ("GET", "/catchall/catchAll/pull/{id}", self.catchall_pull),
            ("POST", "/catchall/catchAll/continue", self.catchall_continue),
            ("POST", "/extract/v1/extract/async", self.extract_submit),
            ("GET", "/extract/v1/jobs/{id}", self.extract_status),
            ("POST", "/pulse/extract", self.pulse_submit),
            ("GET", "/pulse/job/{id}", self.pulse_status),
            ("DELETE", "/pulse/job/{id}", self.pulse_cancel),
            ("GET", "/platform/v1/api/jobs/{id}", self.platform_status),
            ("POST", "/platform/v1/api/jobs/{id}/rerun", self.platform_rerun),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def echo_header(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["X-Echo-Credential"] = key_header(request)
        return response

    def poll(self, job_id: str) -> int:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        return self.polls[job_id]

    # catchall: FastAPI bodies ------------------------------------------------------------------

    async def catchall_submit(self, request: web.Request) -> web.Response:
        key = key_header(request)
        query = (await request.json()).get("query")
        if query == "reject":
            detail = [{"loc": ["body", "query"], "msg": f"key {key} may not ask", "type": "x"}]
            return web.json_response({"detail": detail}, status=422)
        if query == "crash":
            return web.Response(
                status=502, text=f"<html><h1>Bad gateway</h1>x-api-key: {key}</html>"
            )
        if query == "limited":
            return web.json_response(
                {"detail": f"quota exhausted for api_key={key}"},
                status=429,
                headers={"Retry-After": "1"},
            )
        return web.json_response({"job_id": f"cat-{query}", "status": "submitted"}, status=201)

    async def catchall_status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id == "cat-fail":
            error = f"pipeline stopped: the key {key_header(request)} is suspended"
            return web.json_response({"job_id": job_id, "status": "failed", "error": error})
        return web.json_response({"job_id": job_id, "status": "completed"})

    async def catchall_pull(self, request: web.Request) -> web.Response:
        detail = {"detail": f"records store refused x-api-key {key_header(request)}"}
        return web.json_response({"detail": detail}, status=500)

    async def catchall_continue(self, request: web.Request) -> web.Response:
        detail = f"cannot continue: {key_header(request)} has no continue plan"
        return web.json_response({"detail": detail}, status=400)

    # extract: Boom bodies ----------------------------------------------------------------------

    async def extract_submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("url") == "https://reject.example":
            message = (
                f"Invalid API key {key_header(request)}; "
                f"callbackUrl {body.get('callbackUrl')} is not registered"
            )
            boom = {"statusCode": 401, "error": "Unauthorized", "message": message}
            return web.json_response(boom, status=401)
        self.callback_urls.append(body.get("callbackUrl", ""))
        return web.json_response({"jobId": "ext-1", "status": "pending"})

    async def extract_status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        key = key_header(request)
        n = self.poll(job_id)
        if n == 1:
            progress = {"pagesScraped": 1, "totalPages": 4, "currentStep": f"signing in as {key}"}
            return web.json_response({"id": job_id, "status": "processing", "progress": progress})
        if n == 2:
            boom = {
                "statusCode": 503,
                "error": "Service Unavailable",
                "message": f"{key} throttled",
            }
            return web.json_response(boom, status=503)
        # The adapter never learns the callback secret: only its token=... shape can mask it here.
        error = f"extraction failed: key {key} has no quota; no push to {self.callback_urls[-1]}"
        return web.json_response({"id": job_id, "status": "failed", "error": error})

    # pulse: {"error": {code, message}} ---------------------------------------------------------

    async def pulse_submit(self, request: web.Request) -> web.Response:
        key = key_header(request)
        file_url = (await request.json()).get("fileUrl", "")
        if file_url.endswith("bad.pdf"):
            error = {"code": "invalid", "message": f"x-api-key: {key} not allowed", "details": key}
            return web.json_response({"error": error}, status=400)
        if file_url.endswith("down.pdf"):
            error = {"code": "unavailable", "message": f"overloaded, retry with {key} later"}
            return web.json_response({"error": error}, status=503)
        return web.json_response({"job_id": "pulse-1", "status": "pending"})

    async def pulse_status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in self.cancel_asked:
            return web.json_response({"job_id": job_id, "status": "processing"})
        error = {"code": f"revoked:{key_header(request)}", "message": "the key was revoked"}
        return web.json_response({"job_id": job_id, "status": "failed", "error": error})

    async def pulse_cancel(self, request: web.Request) -> web.Response:
        self.cancel_asked.add(request.match_info["id"])
        error = {"code": "internal", "message": f"cancel failed for {key_header(request)}"}
        return web.json_response({"error": error}, status=500)

    # platform: envelopes, Authorization: Bearer ------------------------------------------------

    async def platform_status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        auth = key_header(request)
        if job_id == "missing":
            error = {"name": "NotFoundError", "message": f"no job visible to {auth}"}
            return web.json_response({"data": None, "error": error}, status=404)
        if job_id == "flaky":
            error = {"name": "ServiceUnavailable", "message": f"try later ({auth})"}
            return web.json_response({"data": None, "error": error}, status=503)
        if self.poll(job_id) <= 3:
            # A status the gateway does not know, carrying the key: an anomaly that is stored.
            data = {"id": job_id, "status": f"held-for-{auth.removeprefix('Bearer ')}"}
            return web.json_response({"data": data, "error": None})
        error = {"name": "AuthError", "message": f"the worker could not use {auth}"}
        data = {"id": job_id, "status": "failed", "progress": 40, "result": {"error": error}}
        return web.json_response({"data": data, "error": None})

    async def platform_rerun(self, request: web.Request) -> web.Response:
        self.reruns += 1
        auth = key_header(request)
        if self.reruns == 1:
            error = {"name": "RateLimitError", "message": f"slow down, {auth}"}
            return web.json_response(
                {"data": None, "error": error}, status=429, headers={"X-RateLimit-Reset": "1"}
            )
        error = {"name": "ValidationError", "message": f"token={auth.split()[-1]} may not rerun"}
        return web.json_response({"data": None, "error": error}, status=400)


# -- what the clients see -------------------------------------------------------------------------


@dataclass
class Seen:
    """Every text a client, a receiver or an operator got, named by where it came from."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    async def call(
        self,
        stack: Stack,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        async with stack.client.request(
            method, stack.url + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            self.add(f"{method} {path} headers", repr(list(response.headers.items())))
            self.add(f"{method} {path}", text)
            is_json = response.content_type.endswith("json")
            return response.status, json.loads(text) if is_json else text

    def leaks(self) -> list[str]:
        return [where for where, text in self.texts if any(c in text for c in CANARIES)]


@dataclass
class Receiver:
    """A webhook endpoint that keeps every body it gets."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        self.raw.append(repr(list(request.headers.items())) + text)
        self.bodies.append(json.loads(text))
        self.changed.set()
        return web.Response(status=204)

    async def until_finished(self, job_ids: set[str]) -> None:
        async with asyncio.timeout(WAIT):
            while not job_ids <= {b["id"] for b in self.bodies if b.get("state") in FINISHED}:
                self.changed.clear()
                await self.changed.wait()


def database_files(db: Path) -> list[tuple[str, str]]:
    """The raw bytes of the SQLite file and its WAL: a row's old versions outlive the row."""
    return [
        (file.name, file.read_bytes().decode("utf-8", "replace"))
        for file in sorted(db.parent.glob(db.name + "*"))
    ]


@pytest.fixture
async def logs() -> AsyncIterator[Callable[[list[str]], io.StringIO]]:
    """Route structlog and stdlib logging, as ``jobgate serve`` does, into a buffer."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = []

    def capture(secrets: list[str]) -> io.StringIO:
        out = io.StringIO()
        configure_logging("json", "DEBUG", secrets=secrets, stream=out, stdlib=False, cache=False)
        handler = stdlib_handler("json", secrets, out)
        root.addHandler(handler)
        handlers.append(handler)
        return out

    yield capture
    for handler in handlers:
        root.removeHandler(handler)
    structlog.reset_defaults()


# -- the canary -----------------------------------------------------------------------------------


async def test_an_echoing_upstream_leaks_no_secret_anywhere(
    make_stack: StackFactory,
    serve: Serve,
    tmp_path: Path,
    logs: Callable[[list[str]], io.StringIO],
) -> None:
    upstream = EchoingUpstream()
    upstream_app = upstream.app()
    receiver = Receiver()
    receiver_url = await serve(receiver.app())
    db = tmp_path / "canary.db"
    stack = await make_stack(
        sandbox=(upstream_app, await serve(upstream_app)),
        db=db,
        api_key=CANARY,
        provider_options={"callback_secret": CALLBACK_CANARY},
        per_provider={"pulse": {"callback_secret": PULSE_CALLBACK_CANARY}},
        server={"public_base_url": "http://127.0.0.1:9"},
        webhooks={
            "secret": WEBHOOK_SECRET,
            "allowed_hosts": ["127.0.0.1"],
            "allowed_networks": ["127.0.0.1/32"],
            "schedule": [0, 0.05, 0.1],
            "endpoints": [{"url": receiver_url + "/hook", "events": ["terminal", "progress"]}],
        },
    )
    out = logs(secrets_of(stack.settings))
    seen = Seen()

    # Submits and adopts the provider refuses, 4xx and 5xx; the 5xx ones under a key are stored.
    refused: list[tuple[dict[str, Any], str | None, int]] = [
        ({"provider": "catchall", "request": {"query": "reject"}}, None, 422),
        ({"provider": "catchall", "request": {"query": "crash"}}, "k-crash", 503),
        ({"provider": "catchall", "request": {"query": "limited"}}, None, 429),
        ({"provider": "extract", "request": {"url": "https://reject.example"}}, None, 502),
        ({"provider": "pulse", "request": {"fileUrl": "https://x.example/bad.pdf"}}, None, 422),
        ({"provider": "pulse", "request": {"fileUrl": "https://x.example/down.pdf"}}, "k-pd", 503),
        ({"provider": "platform", "upstream_id": "missing"}, None, 422),
        ({"provider": "platform", "upstream_id": "flaky"}, "k-flaky", 503),
    ]
    for body, key, status in refused:
        headers = {"Idempotency-Key": key} if key else None
        got, answer = await seen.call(stack, "POST", "/v1/jobs", body, headers)
        assert got == status, answer
        assert answer["code"].startswith("upstream_"), answer
        if key is not None:
            await seen.call(stack, "POST", "/v1/jobs", body, headers)  # a retry: replayed or not

    # Jobs that start, then fail with the key in their error, step or native status.
    created: dict[str, str] = {}
    for name, body in (
        ("catchall-done", {"provider": "catchall", "request": {"query": "done"}}),
        ("catchall-fail", {"provider": "catchall", "request": {"query": "fail"}}),
        ("extract", {"provider": "extract", "request": {"url": "https://ok.example"}}),
        ("pulse", {"provider": "pulse", "request": {"fileUrl": "https://x.example/ok.pdf"}}),
        ("platform", {"provider": "platform", "upstream_id": "plat-1"}),
    ):
        status, job = await seen.call(stack, "POST", "/v1/jobs", body)
        assert status == 201, job
        created[name] = job["id"]

    # Actions the provider answers with an echo: cancel, result, continue, rerun (twice).
    status, _ = await seen.call(stack, "POST", f"/v1/jobs/{created['pulse']}/cancel")
    assert status == 503
    done = await stack.until_finished(created["catchall-done"])
    assert done["state"] == "succeeded"
    status, _ = await seen.call(stack, "GET", f"/v1/jobs/{created['catchall-done']}/result")
    assert status == 503
    status, _ = await seen.call(
        stack, "POST", f"/v1/jobs/{created['catchall-done']}/continue", {"new_limit": 20}
    )
    assert status == 422
    assert (await stack.until_finished(created["platform"]))["state"] == "failed"
    for expected in (429, 422):
        status, _ = await seen.call(stack, "POST", f"/v1/jobs/{created['platform']}/rerun")
        assert status == expected

    # Everything a client can read about the jobs: each job, the list, each event stream.
    jobs = {name: await stack.until_finished(job_id) for name, job_id in created.items()}
    assert {name: job["state"] for name, job in jobs.items()} == {
        "catchall-done": "succeeded",
        "catchall-fail": "failed",
        "extract": "failed",
        "pulse": "failed",
        "platform": "failed",
    }
    for job_id in created.values():
        await seen.call(stack, "GET", f"/v1/jobs/{job_id}")
        async with (
            asyncio.timeout(WAIT),
            stack.client.get(f"{stack.url}/v1/jobs/{job_id}/events") as response,
        ):
            seen.add(f"SSE {job_id}", await response.text())
    await seen.call(stack, "GET", "/v1/jobs?limit=100")
    await receiver.until_finished(set(created.values()))
    await seen.call(stack, "GET", "/metrics")

    for text in receiver.raw:
        seen.add("webhook", text)
    seen.add("logs", out.getvalue())
    await stack.server.close()  # every write done: the WAL holds all it will
    for name, text in database_files(db):
        seen.add(f"file {name}", text)
    assert seen.leaks() == [], "\n".join(seen.leaks())

    # The echoes were real: each path carried the key, and shows the mask in its place.
    errors = {name: repr(job["error"]) for name, job in jobs.items() if job["error"]}
    assert len(errors) == 4
    assert all(MASK in error for error in errors.values()), errors
    events = "".join(text for where, text in seen.texts if where.startswith("SSE"))
    assert f"signing in as {MASK}" in events  # the extract job's progress step
    assert f"held-for-{MASK}" in events  # the platform job's unknown native status
    assert "runner.upstream_error" in out.getvalue()
    assert upstream.polls["ext-1"] >= 3
    assert upstream.reruns == 2
    assert CALLBACK_CANARY in upstream.callback_urls[0]
    assert any(where == "file canary.db" for where, _ in seen.texts)


# -- client credentials (issue 9) -----------------------------------------------------------------

AUTH_SECRET = "canary-auth-secret_3f9a61d04b7e4c2a8d15e0b6"
"""The server secret keys are hashed and stream tokens signed with: it is never written anywhere."""


def stored_rows(db: Path) -> list[tuple[str, str]]:
    """Every row of every table of the SQLite file, as text (its bytes are read separately)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [
            str(row[0])
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return [
            (f"table {table}", repr(conn.execute(f'SELECT * FROM "{table}"').fetchall()))
            for table in tables
        ]
    finally:
        conn.close()


async def test_client_keys_and_stream_tokens_leak_nowhere(
    make_stack: StackFactory,
    serve: Serve,
    tmp_path: Path,
    logs: Callable[[list[str]], io.StringIO],
) -> None:
    receiver = Receiver()
    receiver_url = await serve(receiver.app())
    db = tmp_path / "keys.db"
    stack = await make_stack(
        db=db,
        auth={"required": True, "secret": AUTH_SECRET},
        webhooks={
            "secret": WEBHOOK_SECRET,
            "allowed_hosts": ["127.0.0.1"],
            "allowed_networks": ["127.0.0.1/32"],
            "schedule": [0, 0.05, 0.1],
            "endpoints": [{"url": receiver_url + "/hook", "events": ["terminal", "progress"]}],
        },
    )
    out = logs(secrets_of(stack.settings))
    assert AUTH_SECRET in secrets_of(stack.settings)
    seen = Seen()
    shown: list[str] = []
    """The answers that exist to show a credential once (a new key, a new token): not checked."""

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    # An operator's first key (as `jobgate keys create` makes it), then keys made over the API.
    access = stack.app[COMPONENTS_KEY].require_access()
    _, admin = await access.create("canary", {Scope.ADMIN, Scope.READ}, name="bootstrap")
    made: dict[str, dict[str, Any]] = {}
    for name, scopes in (
        ("client", ["jobs:read", "jobs:write"]),
        ("reader", ["jobs:read"]),
        ("doomed", ["jobs:read"]),
    ):
        async with stack.client.post(
            f"{stack.url}/v1/keys", json={"scopes": scopes, "name": name}, headers=bearer(admin)
        ) as response:
            text = await response.text()
            assert response.status == 201, text
            assert response.headers["Cache-Control"] == "no-store"
            shown.append(text)
            made[name] = json.loads(text)
    key = made["client"]["key"]
    assert public_prefix(key) == made["client"]["prefix"]
    # A wrong key that shares the real one's public prefix: its refusal is logged by that prefix.
    wrong = key[: len(public_prefix(key))] + new_key_secret()[len(public_prefix(key)) :]
    assert wrong != key
    assert looks_like_key(wrong)

    # The key at work: submit (keyed), read, list, wait, result, events.
    body = {"provider": "pulse", "request": {"fileUrl": "https://example.com/canary.pdf"}}
    status, job = await seen.call(
        stack, "POST", "/v1/jobs", body, {**bearer(key), "Idempotency-Key": "canary-1"}
    )
    assert status == 201, job
    job_id = job["id"]
    for _ in range(200):  # long-polls of at most 1 s each
        status, job = await seen.call(stack, "GET", f"/v1/jobs/{job_id}?wait=1", None, bearer(key))
        assert status == 200, job
        if job["state"] in FINISHED:
            break
    assert job["state"] == "succeeded", job
    await seen.call(stack, "POST", "/v1/jobs", body, {**bearer(key), "Idempotency-Key": "canary-1"})
    await seen.call(stack, "GET", "/v1/jobs?limit=10", None, bearer(key))
    await seen.call(stack, "GET", f"/v1/jobs/{job_id}/result", None, bearer(key))

    # Refusals, each with a credential the gateway must not repeat.
    doomed = made["doomed"]
    status, _ = await seen.call(stack, "DELETE", f"/v1/keys/{doomed['id']}", None, bearer(admin))
    assert status == 200
    refusals: list[tuple[str, str, dict[str, Any] | None, dict[str, str], int, str]] = [
        ("POST", "/v1/jobs", body, bearer(wrong), 401, "invalid_key"),
        ("GET", "/v1/jobs", None, bearer(wrong), 401, "invalid_key"),
        ("GET", "/v1/jobs", None, bearer(key + "x"), 401, "invalid_key"),
        ("GET", "/v1/jobs", None, {"Authorization": key}, 401, "invalid_key"),
        ("GET", "/v1/jobs", None, {"Authorization": f"Basic {key}"}, 401, "invalid_key"),
        ("GET", f"/v1/jobs?access_token={key}", None, {}, 401, "auth_required"),
        ("GET", "/v1/jobs", None, bearer(doomed["key"]), 401, "key_revoked"),
        ("POST", "/v1/jobs", body, bearer(made["reader"]["key"]), 403, "insufficient_scope"),
        (
            "DELETE",
            f"/v1/keys/{made['client']['id']}",
            None,
            bearer(key),
            403,
            "insufficient_scope",
        ),
        ("GET", f"/v1/events?access_token={key}", None, {}, 401, "invalid_stream_token"),
    ]
    for method, path, payload, headers, expected, code in refusals:
        status, answer = await seen.call(stack, method, path, payload, headers)
        assert (status, answer["code"]) == (expected, code), (method, path, answer)

    # A stream token, on both SSE routes; a forged one (the real one, re-signed by nobody).
    async with stack.client.post(f"{stack.url}/v1/stream-tokens", headers=bearer(key)) as response:
        text = await response.text()
        assert response.status == 201, text
        shown.append(text)
        token = json.loads(text)["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with (
        asyncio.timeout(WAIT),
        stack.client.get(
            f"{stack.url}/v1/jobs/{job_id}/events", params={"access_token": token}
        ) as response,
    ):
        assert response.status == 200
        seen.add("SSE job", await response.text())
    async with (
        asyncio.timeout(WAIT),
        stack.client.get(
            f"{stack.url}/v1/events",
            params={"access_token": token},
            headers={"Last-Event-ID": "0"},
        ) as response,
    ):
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")  # the first replayed event
        seen.add("SSE tenant", first.decode())
    for path in (
        f"/v1/events?access_token={forged}",
        f"/v1/jobs/{job_id}/events?access_token={forged}",
    ):
        status, answer = await seen.call(stack, "GET", path)
        assert (status, answer["code"]) == (401, "invalid_stream_token"), answer

    await seen.call(stack, "GET", "/v1/keys", None, bearer(admin))
    await receiver.until_finished({job_id})
    await seen.call(stack, "GET", "/metrics")
    assert await access.flush_last_used() >= 1  # last_used_at is in the keys table too

    for text in receiver.raw:
        seen.add("webhook", text)
    logged = out.getvalue()
    seen.add("logs", logged)
    await stack.server.close()  # every write done: the WAL holds all it will
    for name, text in [*database_files(db), *stored_rows(db)]:
        seen.add(f"file {name}" if not name.startswith("table") else name, text)
    # Configured: never written beside the database.
    assert not (tmp_path / "auth.secret").exists()

    # Nothing but a key's public prefix, anywhere: not one character more of any key.
    forbidden = {
        AUTH_SECRET: "the auth secret",
        WEBHOOK_SECRET: "the webhook secret",
        token.removeprefix("jgs_"): "the stream token",
        forged.removeprefix("jgs_"): "the forged stream token",
        token.rsplit(".", 1)[1]: "the stream token's signature",
    }
    # In a raw database file the stored prefix is followed by the next column's bytes, which match
    # a key's next character by chance (1 in 64 per key); there the secret part is what must not
    # be, whole or in any 12-character piece.
    in_files = dict(forbidden)
    for name, value in (
        *((n, m["key"]) for n, m in made.items()),
        ("admin", admin),
        ("wrong", wrong),
    ):
        forbidden[value[: len(public_prefix(value)) + 1]] = f"the {name} key past its prefix"
        rest = value[len(public_prefix(value)) :]
        for start in range(0, len(rest) - 11):
            in_files[rest[start : start + 12]] = f"the {name} key's secret part"
    leaks = [
        f"{what} in {where}"
        for where, text in seen.texts
        for value, what in (in_files if where.startswith("file ") else forbidden).items()
        if value in text
    ]
    assert leaks == [], "\n".join(leaks)

    # The checks saw real things: the refusals were logged by prefix, the key's use was stored.
    rejected = [json.loads(line) for line in logged.splitlines() if "auth.rejected" in line]
    assert {entry["reason"] for entry in rejected} >= {
        "invalid_key",
        "auth_required",
        "key_revoked",
        "invalid_stream_token",
    }
    assert public_prefix(key) in {entry.get("key_prefix") for entry in rejected}
    assert any(where == "file keys.db" for where, _ in seen.texts)
    assert any(
        where == "table api_keys" and made["client"]["id"] in text for where, text in seen.texts
    )
    assert any(text.startswith("id: ") for where, text in seen.texts if where == "SSE tenant")
    assert len(shown) == 4  # three new keys and a token: the only answers that carry one
