"""Client API keys over HTTP (issue 9): every route but the public ones needs a key, each refusal
is problem+json with a stable code and ``WWW-Authenticate``, scopes are checked per route, stream
tokens open the SSE routes only, ``/v1/keys`` manages the caller's own tenant, and the open mode
of ``make run`` stays on loopback.

The routes are enumerated from the app's router, not from a hand-written list, so a route added
later is covered (or fails these tests) without anyone remembering this file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from structlog.testing import capture_logs

from gateway.access import Access
from gateway.auth import ApiKey, KeyHasher, Scope, looks_like_key
from gateway.settings import load_settings
from gateway.web.auth import ROUTES_BY_NAME
from gateway.web.routes import Route
from gateway.web.state import COMPONENTS_KEY
from tests.integration.conftest import Stack, StackFactory
from tests.integration.test_sse import take
from tests.support import free_port

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
CALLBACK_SECRET = "callback-secret-for-the-auth-tests"
DUMMIES = {
    "job_id": "job_01JDUMMYDUMMYDUMMYDUMMYDUM",
    "provider": "extract",
    "key_id": "key_0",
    "name": "init.js",
    "file": "app.js",
}
EXTRACT = {"url": "https://example.com", "singlePage": True}

# What needs no jobgate key, and why: the probes, the spec and its page, the jobs page (static: its
# API calls carry the key), the metrics (by setting), and the callbacks, which providers
# authenticate with their own callback token.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
    ("GET", "/docs"),
    ("HEAD", "/docs"),
    ("GET", "/docs/assets/{name}"),
    ("HEAD", "/docs/assets/{name}"),
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/ui/"),
    ("HEAD", "/ui/"),
    ("GET", "/ui/{file}"),
    ("HEAD", "/ui/{file}"),
    ("GET", "/metrics"),
    ("HEAD", "/metrics"),
}
OWN_AUTH = {("POST", "/v1/callbacks/{provider}")}
SSE = {("GET", "/v1/jobs/{job_id}/events"), ("GET", "/v1/events")}


# -- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    path: str
    route: Route | None

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.template

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def endpoints(app: web.Application) -> list[Endpoint]:
    """Every (method, path) the app's router serves, path parameters filled with dummies."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        assert isinstance(resource, web.PlainResource | web.DynamicResource), (
            f"{route.method} {resource}: a kind of route these tests do not know how to call"
        )
        template = resource.canonical
        names = re.findall(r"{(\w+)}", template)
        missing = [name for name in names if name not in DUMMIES]
        assert not missing, f"{template}: add a dummy for {missing} to DUMMIES"
        path = template.format(**DUMMIES)
        found.append(Endpoint(route.method, template, path, ROUTES_BY_NAME.get(route.name or "")))
    assert len(found) >= 20, found
    return found


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str
    body: Any = None

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


async def call(
    stack: Stack,
    method: str,
    path: str,
    key: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> Reply:
    """One request; an event stream's body is not read (only its status and headers), and one
    is expected only where ``stream`` says so."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with stack.client.request(method, stack.url + path, headers=sent, **kwargs) as response:
        got = {name: value for name, value in response.headers.items()}
        if response.content_type == "text/event-stream":
            # A stream does not end: its status and headers say what is needed.
            assert stream, f"{method} {path}: an unexpected event stream"
            return Reply(response.status, got, "")
        text = await response.text()
    body = json.loads(text) if text and got.get("Content-Type", "").startswith(PROBLEM) else None
    if body is None and text and got.get("Content-Type", "").startswith("application/json"):
        body = json.loads(text)
    return Reply(response.status, got, text, body)


def assert_problem(reply: Reply, status: int, code: str, where: object = "") -> dict[str, Any]:
    assert reply.status == status, f"{where}: {reply.status} {reply.text}"
    assert reply.headers.get("Content-Type", "").startswith(PROBLEM), f"{where}: {reply.headers}"
    body: dict[str, Any] = reply.body
    assert body["status"] == status, body
    assert body["code"] == code, f"{where}: {body}"
    assert body["type"].endswith("/" + code), body
    assert body["title"].strip(), body
    assert body["detail"].strip(), body
    assert "[REDACTED]" not in body["detail"], body  # our own words are never masked
    return body


def assert_unauthorized(reply: Reply, code: str, where: object = "") -> dict[str, Any]:
    body = assert_problem(reply, 401, code, where)
    challenge = reply.headers.get("WWW-Authenticate", "")
    assert challenge.startswith('Bearer realm="jobgate"'), f"{where}: {reply.headers}"
    if code != "auth_required":
        assert 'error="invalid_token"' in challenge, challenge
    return body


def assert_forbidden(reply: Reply, scope: Scope, where: object = "") -> None:
    body = assert_problem(reply, 403, "insufficient_scope", where)
    assert body["required_scope"] == scope.value, body
    challenge = reply.headers.get("WWW-Authenticate", "")
    assert challenge.startswith('Bearer realm="jobgate"'), challenge
    assert 'error="insufficient_scope"' in challenge, challenge
    assert f'scope="{scope.value}"' in challenge, challenge


async def keyed_stack(
    make_stack: StackFactory, *, callbacks: bool = False, **sections: Any
) -> Stack:
    """A stack that requires keys (the test default is open); ``callbacks`` enables inbound
    provider callbacks (an unreachable public URL: for a stack that submits nothing)."""
    sections["auth"] = {"required": True, **sections.get("auth", {})}
    if callbacks:
        sections["server"] = {"public_base_url": "http://127.0.0.1:9", **sections.get("server", {})}
        sections["provider_options"] = {"callback_secret": CALLBACK_SECRET}
        # Pulse's is a Standard Webhooks signing secret (its pushes are signed, not tokened).
        sections["per_provider"] = {"pulse": {"callback_secret": PULSE_SIGNING_SECRET}}
    return await make_stack(**sections)


PULSE_SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def access_of(stack: Stack) -> Access:
    return stack.app[COMPONENTS_KEY].require_access()


async def new_key(
    stack: Stack, tenant: str, *scopes: Scope, expires_in: timedelta | None = None
) -> tuple[ApiKey, str]:
    return await access_of(stack).create(tenant, scopes, expires_in=expires_in)


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


def clocked(stack: Stack, clock: Clock) -> Access:
    """The stack's Access, rebuilt on the same store and secret with an injected clock."""
    components = stack.app[COMPONENTS_KEY]
    before = components.require_access()
    access = Access(
        components.require_store(),
        before.hasher,
        required=True,
        cache_seconds=components.settings.auth.cache_seconds,
        token_seconds=components.settings.auth.stream_token_seconds,
        clock=clock,
    )
    components.access = access
    return access


async def submit(stack: Stack, key: str | None, request: dict[str, Any] = EXTRACT) -> str:
    reply = await call(
        stack, "POST", "/v1/jobs", key, json={"provider": "extract", "request": request}
    )
    assert reply.status == 201, reply.text
    job_id: str = reply.body["id"]
    return job_id


def only(items: Iterable[Endpoint], *scopes: Scope | None) -> list[Endpoint]:
    return [e for e in items if e.route is not None and e.route.scope in scopes]


# -- 1. every route needs a key --------------------------------------------------------------------


async def test_every_route_but_the_public_ones_is_401_without_a_key(
    make_stack: StackFactory,
) -> None:
    stack = await keyed_stack(make_stack, callbacks=True)
    every = endpoints(stack.app)
    served = {e.key for e in every}
    # The exceptions must exist (a renamed probe would otherwise make this test vacuous).
    assert served >= PUBLIC | OWN_AUTH, (PUBLIC | OWN_AUTH) - served
    guarded = [e for e in every if e.key not in PUBLIC | OWN_AUTH]
    assert {"/v1/jobs", "/v1/keys", "/v1/events", "/v1/stream-tokens"} <= {
        e.template for e in guarded
    }
    for endpoint in guarded:
        reply = await call(stack, endpoint.method, endpoint.path, stream=True)
        if endpoint.method == "HEAD":  # no body to read
            assert reply.status == 401, endpoint
            assert reply.headers["WWW-Authenticate"].startswith("Bearer"), endpoint
            continue
        body = assert_unauthorized(reply, "auth_required", endpoint)
        # Legible: the problem scrubber must not mask the instructions.
        assert "[REDACTED]" not in body["detail"], body
        assert "Authorization header" in body["detail"], body
        assert "Bearer" in body["detail"], body
        assert body["instance"] == endpoint.path
    # The public ones answer without a key.
    for endpoint in every:
        if endpoint.key in PUBLIC:
            reply = await call(stack, endpoint.method, endpoint.path)
            assert reply.status == 200, f"{endpoint}: {reply.status} {reply.text[:200]}"
    # A callback is refused without the provider's own token, and a jobgate key is no such token.
    _, admin = await new_key(stack, "acme", *Scope)
    for key in (None, admin):
        reply = await call(stack, "POST", "/v1/callbacks/extract", key, json={"jobId": "x"})
        assert_problem(reply, 401, "callback_unauthorized")
        assert CALLBACK_SECRET not in reply.text


async def test_metrics_need_an_admin_key_when_not_public(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack, auth={"public_metrics": False})
    assert_unauthorized(await call(stack, "GET", "/metrics"), "auth_required")
    head = await call(stack, "HEAD", "/metrics")
    assert head.status == 401
    _, reader = await new_key(stack, "acme", Scope.READ, Scope.WRITE)
    assert_forbidden(await call(stack, "GET", "/metrics", reader), Scope.ADMIN)
    _, admin = await new_key(stack, "acme", Scope.ADMIN)
    reply = await call(stack, "GET", "/metrics", admin)
    assert reply.status == 200
    assert "jobgate_" in reply.text
    # The probes and the spec stay public.
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert (await call(stack, "GET", path)).status == 200, path


async def test_unknown_and_malformed_credentials_are_401_with_their_code(
    make_stack: StackFactory,
) -> None:
    stack = await keyed_stack(make_stack)
    key, plaintext = await new_key(stack, "acme", Scope.READ)
    cases = {
        "no header": ({}, "auth_required"),
        "empty header": ({"Authorization": ""}, "auth_required"),
        "a key of nobody": ({"Authorization": "Bearer jg_" + "A" * 43}, "invalid_key"),
        "the key without a scheme": ({"Authorization": plaintext}, "invalid_key"),
        "basic auth": ({"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}, "invalid_key"),
        "bearer alone": ({"Authorization": "Bearer"}, "invalid_key"),
        "a truncated key": ({"Authorization": f"Bearer {plaintext[:-1]}"}, "invalid_key"),
        "a key too long": ({"Authorization": f"Bearer {plaintext}A"}, "invalid_key"),
        "a provider's key": ({"Authorization": "Bearer test-key"}, "invalid_key"),
        "a stream token as a key": ({"Authorization": "Bearer jgs_abc.def"}, "invalid_key"),
    }
    for name, (headers, code) in cases.items():
        reply = await call(stack, "GET", "/v1/jobs", headers=headers)
        body = assert_unauthorized(reply, code, name)
        assert plaintext not in reply.text
        assert plaintext[11:] not in json.dumps(body)
    # ... and the real one works.
    reply = await call(stack, "GET", "/v1/jobs", plaintext)
    assert reply.status == 200, reply.text
    assert reply.body == {"jobs": [], "next_cursor": None}
    assert key.prefix == plaintext[:11]


async def test_an_expired_key_is_401_key_expired(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    clock = Clock()
    access = clocked(stack, clock)
    _, plaintext = await access.create("acme", {Scope.READ}, expires_in=timedelta(minutes=10))
    assert (await call(stack, "GET", "/v1/jobs", plaintext)).status == 200
    clock.now += timedelta(minutes=9, seconds=59)
    assert (await call(stack, "GET", "/v1/jobs", plaintext)).status == 200
    clock.now += timedelta(seconds=1)
    reply = await call(stack, "GET", "/v1/jobs", plaintext)
    body = assert_unauthorized(reply, "key_expired")
    assert "expired" in body["detail"]


async def test_a_key_revoked_through_the_api_is_refused_at_once(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, admin = await new_key(stack, "acme", Scope.ADMIN)
    victim, plaintext = await new_key(stack, "acme", Scope.READ)
    assert (await call(stack, "GET", "/v1/jobs", plaintext)).status == 200  # cached now
    reply = await call(stack, "DELETE", f"/v1/keys/{victim.id}", admin)
    assert reply.status == 200, reply.text
    assert reply.body["id"] == victim.id
    assert reply.body["revoked_at"] is not None
    # The very next request, no wait: the revoking process forgets its cache.
    assert_unauthorized(await call(stack, "GET", "/v1/jobs", plaintext), "key_revoked")
    # Revoking it again: there is no usable key with that id any more.
    assert_problem(
        await call(stack, "DELETE", f"/v1/keys/{victim.id}", admin), 404, "key_not_found"
    )
    # The admin key itself is untouched.
    assert (await call(stack, "GET", "/v1/keys", admin)).status == 200


async def test_a_browsers_preflight_needs_no_key_and_its_401_is_readable(
    make_stack: StackFactory,
) -> None:
    """A preflight carries no credential (browsers never send one), so it must not need a key; the
    401 an allowed origin gets must be readable by its script, challenge included."""
    origin = "https://app.example.com"
    stack = await keyed_stack(make_stack, server={"cors_origins": [origin]})
    for path, method in (("/v1/jobs", "POST"), ("/v1/events", "GET"), ("/v1/keys", "DELETE")):
        preflight = await call(
            stack,
            "OPTIONS",
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert preflight.status == 204, (path, preflight.text)
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = await call(stack, "GET", "/v1/jobs", headers={"Origin": origin})
    assert_unauthorized(refused, "auth_required")
    assert refused.headers["Access-Control-Allow-Origin"] == origin
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


# -- 2. scopes -------------------------------------------------------------------------------------


async def test_a_read_key_is_403_on_every_write_and_admin_route(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, reader = await new_key(stack, "acme", Scope.READ)
    every = endpoints(stack.app)
    writes = only(every, Scope.WRITE, Scope.ADMIN)
    # The table marks what the issue calls write routes; a regression there must fail here.
    assert {str(e) for e in only(every, Scope.WRITE)} == {
        "POST /v1/jobs",
        "DELETE /v1/jobs/{job_id}",
        "POST /v1/jobs/{job_id}/cancel",
        "POST /v1/jobs/{job_id}/rerun",
        "POST /v1/jobs/{job_id}/continue",
    }
    assert {str(e) for e in only(every, Scope.ADMIN)} >= {
        "POST /v1/keys",
        "GET /v1/keys",
        "DELETE /v1/keys/{key_id}",
    }
    for endpoint in writes:
        assert endpoint.route is not None
        assert endpoint.route.scope is not None
        reply = await call(
            stack,
            endpoint.method,
            endpoint.path,
            reader,
            json={"provider": "extract", "request": EXTRACT},
        )
        assert_forbidden(reply, endpoint.route.scope, endpoint)
    # Nothing was written by any refused call.
    assert stack.upstream_jobs("extract") == 0
    assert (await call(stack, "GET", "/v1/jobs", reader)).body["jobs"] == []
    # Every read route lets it through (404 for the dummy job: the route ran).
    for endpoint in only(every, Scope.READ):
        reply = await call(stack, endpoint.method, endpoint.path, reader, stream=True)
        assert reply.status in (200, 201, 404), f"{endpoint}: {reply.status} {reply.text}"
        if reply.status == 404:
            assert reply.body["code"] == "job_not_found", endpoint


async def test_a_write_key_without_admin_cannot_manage_keys(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    own, writer = await new_key(stack, "acme", Scope.READ, Scope.WRITE)
    for method, path, body in (
        ("POST", "/v1/keys", {"scopes": ["admin"]}),
        ("GET", "/v1/keys", None),
        ("DELETE", f"/v1/keys/{own.id}", None),
    ):
        reply = await call(stack, method, path, writer, json=body)
        assert_forbidden(reply, Scope.ADMIN, (method, path))
    # It did not revoke itself, nor make a key.
    assert (await call(stack, "GET", "/v1/jobs", writer)).status == 200
    assert [key.id for key in await access_of(stack).keys("acme")] == [own.id]
    # ... and it can do what its scopes say.
    job_id = await submit(stack, writer)
    assert (await call(stack, "DELETE", f"/v1/jobs/{job_id}", writer)).status == 204


async def test_a_stream_token_opens_the_sse_routes_only(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, writer = await new_key(stack, "acme", Scope.READ, Scope.WRITE, Scope.ADMIN)
    job_id = await submit(stack, writer)
    issued = await call(stack, "POST", "/v1/stream-tokens", writer)
    assert issued.status == 201, issued.text
    assert issued.headers["Cache-Control"] == "no-store"
    assert issued.body["tenant"] == "acme"
    token: str = issued.body["token"]
    assert token.startswith("jgs_")
    assert writer not in token

    # Tokens never reach a log line: the access log names route templates, not queries.
    with capture_logs() as logs:
        # The two SSE routes accept it as ?access_token=.
        async with stack.client.get(
            f"{stack.url}/v1/jobs/{job_id}/events", params={"access_token": token}
        ) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            first = await take(response, 1)
            assert first[0].kind == "created"
            assert first[0].data["job_id"] == job_id
        async with stack.client.get(
            f"{stack.url}/v1/events", params={"access_token": token}
        ) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"

        # Every other guarded route ignores it: no key, so 401.
        every = endpoints(stack.app)
        others = [e for e in every if e.key not in PUBLIC | OWN_AUTH | SSE]
        assert others
        for endpoint in others:
            path = endpoint.path.replace(DUMMIES["job_id"], job_id)
            reply = await call(stack, endpoint.method, path, params={"access_token": token})
            if endpoint.method == "HEAD":
                assert reply.status == 401, endpoint
                continue
            assert_unauthorized(reply, "auth_required", endpoint)
    assert logs, "nothing was logged: the check below would be vacuous"
    assert token not in repr(logs)
    assert token.partition(".")[2] not in repr(logs)
    # Nor is it a key in the Authorization header, even on the SSE routes.
    for template in ("/v1/jobs/{job_id}/events", "/v1/events", "/v1/jobs/{job_id}"):
        path = template.format(job_id=job_id)
        reply = await call(stack, "GET", path, token)
        assert_unauthorized(reply, "invalid_key", path)
    # The job is as it was: the token wrote nothing.
    job = (await call(stack, "GET", f"/v1/jobs/{job_id}", writer)).body
    assert job["id"] == job_id


async def test_an_expired_or_tampered_stream_token_is_401(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack, auth={"stream_token_seconds": 60})
    clock = Clock()
    access = clocked(stack, clock)
    _, reader = await access.create("acme", {Scope.READ})
    token = (await call(stack, "POST", "/v1/stream-tokens", reader)).body["token"]
    payload, _, signature = token.partition(".")
    tampered = [
        payload + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
        payload + "x." + signature,
        "jgs_nonsense",
        "",
    ]
    for bad in tampered:
        reply = await call(stack, "GET", "/v1/events", params={"access_token": bad})
        assert_unauthorized(reply, "invalid_stream_token", bad)
    clock.now += timedelta(seconds=59)
    reply = await call(stack, "GET", "/v1/events", params={"access_token": token}, stream=True)
    assert reply.status == 200
    clock.now += timedelta(seconds=1)
    reply = await call(stack, "GET", "/v1/events", params={"access_token": token})
    body = assert_unauthorized(reply, "invalid_stream_token")
    assert "POST /v1/stream-tokens" in body["detail"]
    assert token not in reply.text


async def test_a_stream_token_dies_with_its_key(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, admin = await new_key(stack, "acme", Scope.ADMIN)
    key, reader = await new_key(stack, "acme", Scope.READ)
    token = (await call(stack, "POST", "/v1/stream-tokens", reader)).body["token"]
    reply = await call(stack, "GET", "/v1/events", params={"access_token": token}, stream=True)
    assert reply.status == 200
    assert (await call(stack, "DELETE", f"/v1/keys/{key.id}", admin)).status == 200
    reply = await call(stack, "GET", "/v1/events", params={"access_token": token})
    assert_unauthorized(reply, "invalid_stream_token")


# -- 4. the keys API -------------------------------------------------------------------------------


async def test_an_admin_key_manages_its_own_tenants_keys_only(make_stack: StackFactory) -> None:
    stack = await keyed_stack(make_stack)
    _, admin = await new_key(stack, "acme", Scope.ADMIN)
    theirs, their_plaintext = await new_key(stack, "beta", Scope.READ)
    hasher: KeyHasher = access_of(stack).hasher

    created = await call(
        stack,
        "POST",
        "/v1/keys",
        admin,
        json={"scopes": ["jobs:read", "jobs:write"], "name": "ci", "expires_in_days": 30},
    )
    assert created.status == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    body = created.body
    plaintext: str = body["key"]
    assert looks_like_key(plaintext)
    assert body["tenant"] == "acme"
    assert body["scopes"] == ["jobs:read", "jobs:write"]
    assert body["prefix"] == plaintext[:11]
    assert body["name"] == "ci"
    assert body["expires_at"] is not None
    assert created.headers["Location"] == f"/v1/keys/{body['id']}"
    assert "digest" not in body
    assert hasher.digest(plaintext) not in created.text
    # The new key works, for its tenant.
    assert (await call(stack, "GET", "/v1/jobs", plaintext)).status == 200
    job_id = await submit(stack, plaintext)
    assert (await call(stack, "GET", f"/v1/jobs/{job_id}", plaintext)).status == 200

    # A body naming a tenant is refused: a key is made for the caller's tenant only.
    for extra in ({"tenant": "beta"}, {"tenant": "acme"}):
        reply = await call(stack, "POST", "/v1/keys", admin, json={"scopes": ["admin"], **extra})
        problem = assert_problem(reply, 422, "validation_error")
        assert "tenant" in problem["detail"]
    for bad in ({"scopes": []}, {"scopes": ["root"]}, {}, {"scopes": ["admin"], "key": "x"}):
        reply = await call(stack, "POST", "/v1/keys", admin, json=bad)
        assert_problem(reply, 422, "validation_error", bad)
    assert {key.tenant for key in await access_of(stack).keys()} == {"acme", "beta"}
    assert len(await access_of(stack).keys("beta")) == 1

    # The listing: this tenant's keys, never a key or a digest.
    listing = await call(stack, "GET", "/v1/keys", admin)
    assert listing.status == 200
    keys = listing.body["keys"]
    assert {key["id"] for key in keys} == {k.id for k in await access_of(stack).keys("acme")}
    assert body["id"] in {key["id"] for key in keys}
    assert all(key["tenant"] == "acme" for key in keys)
    assert theirs.id not in listing.text
    for entry in keys:
        assert "key" not in entry
        assert "digest" not in entry
    for secret in (plaintext, admin, their_plaintext):
        assert secret not in listing.text
        assert hasher.digest(secret) not in listing.text
        assert secret[11:] not in listing.text

    # Another tenant's key id is 404, as an unknown one is; and it keeps working.
    foreign = await call(stack, "DELETE", f"/v1/keys/{theirs.id}", admin)
    unknown = await call(stack, "DELETE", "/v1/keys/key_0000000000000000", admin)
    assert_problem(foreign, 404, "key_not_found")
    assert_problem(unknown, 404, "key_not_found")
    # No oracle: the same answer but for the id each names (and the id is shown, not masked).
    assert foreign.body["detail"].replace(theirs.id, "ID") == unknown.body["detail"].replace(
        "key_0000000000000000", "ID"
    )
    assert theirs.id in foreign.body["detail"]
    assert (await call(stack, "GET", "/v1/jobs", their_plaintext)).status == 200
    # Its own: revoked, and listed so.
    revoked = await call(stack, "DELETE", f"/v1/keys/{body['id']}", admin)
    assert revoked.status == 200
    assert "key" not in revoked.body
    assert_unauthorized(await call(stack, "GET", "/v1/jobs", plaintext), "key_revoked")
    again = (await call(stack, "GET", "/v1/keys", admin)).body["keys"]
    assert [k["revoked_at"] is not None for k in again if k["id"] == body["id"]] == [True]


async def test_a_configured_key_cannot_be_revoked_through_the_api(
    make_stack: StackFactory,
) -> None:
    secret = "a-shared-secret-of-at-least-32-characters!"
    plaintext = "jg_" + "C" * 43
    digest = KeyHasher(secret.encode()).digest(plaintext)
    stack = await keyed_stack(
        make_stack,
        auth={
            "secret": secret,
            "keys": [
                {"id": "ops", "tenant": "ops", "scopes": ["admin", "jobs:read"], "digest": digest}
            ],
        },
    )
    listing = await call(stack, "GET", "/v1/keys", plaintext)
    assert listing.status == 200, listing.text
    assert [(k["id"], k["source"]) for k in listing.body["keys"]] == [("ops", "config")]
    assert digest not in listing.text
    reply = await call(stack, "DELETE", "/v1/keys/ops", plaintext)
    problem = assert_problem(reply, 422, "invalid_request")
    assert "auth.keys" in problem["detail"]
    assert (await call(stack, "GET", "/v1/jobs", plaintext)).status == 200


# -- 6. open mode ----------------------------------------------------------------------------------


async def test_open_mode_needs_no_key_and_everything_is_the_default_tenant(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()  # the test default: auth.required = false, on 127.0.0.1
    assert not stack.settings.auth_required()
    job_id = await submit(stack, None)
    # Whatever is sent is ignored: the caller is the default tenant with every scope.
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        reply = await call(stack, "GET", f"/v1/jobs/{job_id}", headers=headers)
        assert reply.status == 200, reply.text
    store = stack.app[COMPONENTS_KEY].require_store()
    job = await store.get(job_id, "default")
    assert job is not None
    assert job.tenant == "default"
    assert await store.get(job_id, "acme") is None
    listing = await call(stack, "GET", "/v1/jobs")
    assert [job["id"] for job in listing.body["jobs"]] == [job_id]
    assert (await call(stack, "POST", f"/v1/jobs/{job_id}/rerun")).status == 201
    assert (await call(stack, "DELETE", f"/v1/jobs/{job_id}")).status == 204
    reply = await call(stack, "GET", "/v1/events", stream=True)
    assert reply.status == 200
    assert "WWW-Authenticate" not in reply.headers


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gateway.internal"])
def test_settings_refuse_a_reachable_address_with_auth_off(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(
            tmp_path / "none.toml",
            store={"path": str(tmp_path / "j.db")},
            server={"host": host},
            auth={"required": False},
        )
    assert "JOBGATE_AUTH__REQUIRED" in str(caught.value)
    assert host in str(caught.value)
    # Unset, auth is on there, even in the embedded profile; set, it is on anyway.
    for auth in ({}, {"required": True}):
        settings = load_settings(
            tmp_path / "none.toml",
            store={"path": str(tmp_path / "j.db")},
            server={"host": host},
            sandbox={"embedded": True},
            auth=auth,
        )
        assert settings.auth_required()


def test_the_embedded_profile_on_loopback_is_open_unless_asked(tmp_path: Path) -> None:
    def settings(**auth: Any) -> bool:
        return load_settings(
            tmp_path / "none.toml",
            store={"path": str(tmp_path / "j.db")},
            server={"host": "127.0.0.1"},
            sandbox={"embedded": True},
            auth=auth,
        ).auth_required()

    assert settings() is False
    assert settings(required=True) is True
    # Not the embedded profile: keys by default, loopback or not.
    plain = load_settings(tmp_path / "none.toml", store={"path": str(tmp_path / "j.db")})
    assert plain.auth_required()


async def test_serve_on_a_reachable_address_with_auth_off_exits_2(tmp_path: Path) -> None:
    # Turned off explicitly: the embedded profile's default follows the address, so --host
    # 0.0.0.0 alone would start with keys required, as JOBGATE_SERVER__HOST=0.0.0.0 does.
    config = tmp_path / "embedded.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.db"}"\n'
        f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f"[sandbox]\nembedded = true\nport = {free_port()}\n"
        "[auth]\nrequired = false\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("JOBGATE_")}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "jobgate"),
        "serve",
        "--config",
        str(config),
        "--host",
        "0.0.0.0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, (out, err)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith("jobgate: refusing to serve on 0.0.0.0 with auth off")
    assert "JOBGATE_AUTH__REQUIRED=true" in lines[0]
    assert "serving on" not in out.decode()
    assert not (tmp_path / "jobs.db").exists()  # refused before anything was opened
