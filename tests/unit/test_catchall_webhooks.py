"""CatchAll push: the adapter's webhook calls (mocked HTTP), and jobgate's find-or-create of its
webhook and the submit body's ``webhook_ids`` (a fake adapter)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs
from yarl import URL

from adapters.base import JSON, MalformedResponse, NotFound, RequestRejected, Submission
from adapters.catchall.adapter import CatchAllAdapter, Webhook, WebhookPage
from adapters.http import Connection
from gateway.callbacks import (
    TOKEN_HEADER,
    CallbackConfig,
    parse,
    webhook_room,
    with_callback,
    with_webhook,
)
from gateway.catchall_push import (
    FINGERPRINT_HEADER,
    WEBHOOK_NAME,
    CatchallPush,
    choose,
    drifted,
    ensure_webhook,
    fingerprint,
    fingerprint_matches,
    names_our_webhook,
    registrar,
    webhook_spec,
    webhook_url,
)
from tests.unit.test_jobs import make_job

BASE = "https://api.example.test"
KEY = "sk_catchall_canary_key_1234"
SECRET = "cb-secret-catchall-canary-9f31"
GATEWAY = "https://gw.example.test"
URL_ = f"{GATEWAY}/v1/callbacks/catchall"


# --------------------------------------------------------------------------------------------------
# The adapter's three calls


@pytest.fixture
async def adapter() -> AsyncIterator[CatchAllAdapter]:
    async with aiohttp.ClientSession() as session:
        yield CatchAllAdapter(session, Connection(BASE, KEY), secrets=[SECRET])


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


def answered(**overrides: Any) -> dict[str, Any]:
    """A webhook as CatchAll answers it: the auth value masked."""
    return {
        "id": "wh_1",
        "name": WEBHOOK_NAME,
        "url": URL_,
        "type": "generic",
        "delivery_mode": "full",
        "method": "POST",
        "headers": {FINGERPRINT_HEADER: "scrypt1$abc$def"},
        "params": {},
        "auth": {"type": "api_key", "header": TOKEN_HEADER, "value": "****9f31"},
        "is_active": True,
        "created_at": "2026-01-01T00:00:00Z",
        **overrides,
    }


def sent(mocked: aioresponses, method: str, url: str) -> list[Any]:
    return mocked.requests[(method, URL(url))]


async def test_list_webhooks_reads_a_page_and_keeps_no_auth_value(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    body = {"total": 101, "page": 1, "page_size": 100, "total_pages": 2, "webhooks": [answered()]}
    mocked.get(f"{BASE}/catchAll/webhooks?page=1&page_size=100", payload=body)
    page = await adapter.list_webhooks()
    assert page.total_pages == 2
    assert page.page == 1
    (hook,) = page.webhooks
    assert hook == Webhook(
        id="wh_1",
        name=WEBHOOK_NAME,
        url=URL_,
        method="POST",
        delivery_mode="full",
        headers={FINGERPRINT_HEADER: "scrypt1$abc$def"},
        auth_type="api_key",
        auth_header=TOKEN_HEADER,
        is_active=True,
    )
    assert not hasattr(hook, "auth_value")
    (call,) = sent(mocked, "GET", f"{BASE}/catchAll/webhooks?page=1&page_size=100")
    assert call.kwargs["headers"]["x-api-key"] == KEY


async def test_list_webhooks_without_a_list_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.get(f"{BASE}/catchAll/webhooks?page=3&page_size=100", payload={"total": 0})
    with pytest.raises(MalformedResponse):
        await adapter.list_webhooks(page=3)


async def test_create_webhook_sends_the_spec_and_reads_the_envelope(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.post(
        f"{BASE}/catchAll/webhooks",
        status=201,
        payload={"success": True, "message": "created", "webhook": answered(id="wh_9")},
    )
    spec = webhook_spec(URL_, SECRET, "scrypt1$abc$def")
    hook = await adapter.create_webhook(spec)
    assert hook.id == "wh_9"
    (call,) = sent(mocked, "POST", f"{BASE}/catchAll/webhooks")
    assert orjson.loads(call.kwargs["data"]) == spec
    assert spec["auth"] == {"type": "api_key", "header": TOKEN_HEADER, "value": SECRET}
    assert "token" not in str(spec["url"])


async def test_update_webhook_patches_the_quoted_id(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.patch(
        f"{BASE}/catchAll/webhooks/wh%2F1",
        payload={"success": True, "message": "updated", "webhook": answered(is_active=False)},
    )
    hook = await adapter.update_webhook("wh/1", {"is_active": False})
    assert hook.is_active is False
    (call,) = sent(mocked, "PATCH", f"{BASE}/catchAll/webhooks/wh%2F1")
    assert orjson.loads(call.kwargs["data"]) == {"is_active": False}


async def test_an_answer_without_a_webhook_is_malformed(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    mocked.post(f"{BASE}/catchAll/webhooks", payload={"success": False, "message": "no"})
    with pytest.raises(MalformedResponse):
        await adapter.create_webhook({"name": "x", "url": URL_})


async def test_a_refused_webhook_quoting_the_secret_is_masked(
    adapter: CatchAllAdapter, mocked: aioresponses
) -> None:
    detail = [{"loc": ["body", "url"], "msg": "URL must use HTTPS", "type": "value_error"}]
    echoed = {"detail": detail, "input": {"auth": {"value": SECRET}}}
    mocked.post(f"{BASE}/catchAll/webhooks", status=422, payload=echoed)
    with pytest.raises(RequestRejected) as caught:
        await adapter.create_webhook(webhook_spec(URL_, SECRET, "p"))
    assert caught.value.status == 422
    assert "URL must use HTTPS" in caught.value.message
    assert SECRET not in repr(caught.value.detail)
    assert SECRET not in caught.value.message


# --------------------------------------------------------------------------------------------------
# Pure parts: the body, the parser, push expectation, the fingerprint


def test_with_webhook_keeps_the_clients_ids_and_adds_ours_once() -> None:
    bare = {"query": "q"}
    assert with_webhook("catchall", bare, "ours") == {"query": "q", "webhook_ids": ["ours"]}
    theirs = {"query": "q", "webhook_ids": ["a", "b"]}
    assert with_webhook("catchall", theirs, "ours") == {
        "query": "q",
        "webhook_ids": ["a", "b", "ours"],
    }
    assert theirs == {"query": "q", "webhook_ids": ["a", "b"]}  # the client's body is untouched
    already = {"query": "q", "webhook_ids": ["ours"]}
    assert with_webhook("catchall", already, "ours") is already
    full = {"query": "q", "webhook_ids": ["a", "b", "c", "d", "e"]}
    assert with_webhook("catchall", full, "ours") is full
    odd = {"query": "q", "webhook_ids": "a"}
    assert with_webhook("catchall", odd, "ours") is odd
    assert with_webhook("catchall", bare, None) is bare
    assert with_webhook("extract", bare, "ours") is bare
    # CatchAll takes no callback URL: with_callback leaves it alone.
    assert with_callback("catchall", bare, "https://gw/cb") is bare


def test_webhook_room() -> None:
    assert webhook_room("catchall", {"query": "q"})
    assert webhook_room("catchall", {"query": "q", "webhook_ids": ["a"] * 4})
    assert not webhook_room("catchall", {"query": "q", "webhook_ids": ["a"] * 5})
    assert not webhook_room("catchall", {"query": "q", "webhook_ids": {"a": 1}})
    assert not webhook_room("extract", {"url": "u"})


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            {
                "monitor_id": None,
                "latest_job_id": "job-1",
                "records_count": 3,
                "updated_at": "2026-01-01T00:00:00Z",
                "records": [],
            },
            None,
        ),
        ({"latest_job_id": "job-1", "status": "completed"}, "completed"),
        ({"job_id": "job-1", "latest_job_id": "other"}, None),
        ({"event": "job.failed", "data": {"job_id": "job-1"}}, "failed"),
    ],
)
def test_catchall_webhook_payloads_name_the_job(body: JSON, status: str | None) -> None:
    notice = parse("catchall", body)
    assert (notice.upstream_id, notice.status) == ("job-1", status)


def test_a_catchall_job_expects_push_when_its_submit_carried_our_webhook() -> None:
    config = CallbackConfig(GATEWAY, {"catchall": SECRET})
    # What the service records: whether the submitted body carried jobgate's webhook (there was
    # room among the client's ids, and a registered webhook).
    assert webhook_room("catchall", {"query": "q", "webhook_ids": ["a"] * 4})
    assert not webhook_room("catchall", {"query": "q", "webhook_ids": ["a"] * 5})
    assert config.expects_push(
        make_job(provider="catchall", request={"query": "q"}, push_asked=True)
    )
    assert not config.expects_push(make_job(provider="catchall", request={"query": "q"}))


def test_the_fingerprint_names_the_secret_without_holding_it() -> None:
    proof = fingerprint(SECRET, os.urandom(16))
    assert SECRET not in proof
    assert proof.startswith("scrypt1$")
    assert fingerprint_matches(SECRET, proof)
    assert not fingerprint_matches(SECRET + "x", proof)
    assert fingerprint(SECRET, b"0" * 16) != fingerprint(SECRET, b"1" * 16)  # salted
    for bad in (None, "", "scrypt1$", "md5$abc$def", "scrypt1$!!!$x", proof[:-2]):
        assert not fingerprint_matches(SECRET, bad)


def test_webhook_url_has_no_token() -> None:
    assert webhook_url(GATEWAY + "/") == URL_
    assert "token" not in webhook_url(GATEWAY)


def hook(**overrides: Any) -> Webhook:
    base = Webhook(
        id="wh_1",
        name=WEBHOOK_NAME,
        url=URL_,
        method="POST",
        delivery_mode="full",
        headers={},
        auth_type="api_key",
        auth_header=TOKEN_HEADER,
        is_active=True,
    )
    return replace(base, **overrides)


def test_choose_and_drifted() -> None:
    others = [hook(id="a", name="slack alerts"), hook(id="b", url=GATEWAY + "/elsewhere")]
    assert choose(others, URL_) is None
    paused, live = hook(id="p", is_active=False), hook(id="l")
    assert choose([*others, paused, live], URL_) == live
    assert choose([paused], URL_ + "/") == paused
    assert not drifted(live)
    assert drifted(paused)
    assert drifted(hook(auth_type="bearer"))
    assert drifted(hook(auth_header="X-Other"))
    assert not drifted(hook(auth_header=TOKEN_HEADER.lower()))
    assert drifted(hook(method="PUT"))
    assert drifted(hook(delivery_mode="per_record"))


# --------------------------------------------------------------------------------------------------
# Find or create, against a fake CatchAll


class FakeWebhooks:
    """CatchAll's webhook list in memory, ``page_size`` a page; counts every call."""

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.hooks: list[tuple[Webhook, str | None]] = []  # with the auth value it was given
        self.calls: list[str] = []
        self.fail_with: Exception | None = None
        self.created = 0

    def add(self, webhook: Webhook, secret: str | None = None) -> None:
        self.hooks.append((webhook, secret))

    def secret_of(self, webhook_id: str) -> str | None:
        return next(secret for hook, secret in self.hooks if hook.id == webhook_id)

    async def list_webhooks(self, *, page: int = 1) -> WebhookPage:
        self.calls.append(f"list {page}")
        await asyncio.sleep(0)  # let concurrent callers interleave, as real I/O would
        if self.fail_with is not None:
            raise self.fail_with
        start = (page - 1) * self.page_size
        chosen = tuple(hook for hook, _ in self.hooks[start : start + self.page_size])
        pages = max(1, -(-len(self.hooks) // self.page_size))
        return WebhookPage(chosen, page, pages)

    async def create_webhook(self, spec: Mapping[str, JSON]) -> Webhook:
        self.calls.append("create")
        self.created += 1
        created = _from_spec(f"wh_{self.created}", spec)
        self.add(created, _auth_value(spec))
        return created

    async def update_webhook(self, webhook_id: str, changes: Mapping[str, JSON]) -> Webhook:
        self.calls.append(f"update {webhook_id}")
        index = next(i for i, (h, _) in enumerate(self.hooks) if h.id == webhook_id)
        updated = _from_spec(webhook_id, changes)
        self.hooks[index] = (updated, _auth_value(changes))
        return updated


def _auth_value(spec: Mapping[str, JSON]) -> str | None:
    auth = spec.get("auth")
    assert isinstance(auth, dict)
    value = auth.get("value")
    return value if isinstance(value, str) else None


def _from_spec(webhook_id: str, spec: Mapping[str, JSON]) -> Webhook:
    auth = spec["auth"]
    headers = spec["headers"]
    assert isinstance(auth, dict)
    assert isinstance(headers, dict)
    return Webhook(
        id=webhook_id,
        name=str(spec["name"]),
        url=str(spec["url"]),
        method=str(spec["method"]),
        delivery_mode=str(spec["delivery_mode"]),
        headers={k: str(v) for k, v in headers.items()},
        auth_type=str(auth["type"]),
        auth_header=str(auth["header"]),
        is_active=spec.get("is_active") is not False,
    )


async def test_none_yet_creates_one() -> None:
    api = FakeWebhooks()
    api.add(hook(id="other", name="alerts"))
    webhook_id = await ensure_webhook(api, URL_, SECRET)
    assert webhook_id == "wh_1"
    assert api.calls == ["list 1", "create"]
    assert api.secret_of("wh_1") == SECRET
    created = api.hooks[-1][0]
    assert fingerprint_matches(SECRET, created.headers[FINGERPRINT_HEADER])


async def test_ours_on_a_later_page_is_reused_without_a_write() -> None:
    api = FakeWebhooks(page_size=2)
    proof = fingerprint(SECRET, os.urandom(16))
    for i in range(4):
        api.add(hook(id=f"x{i}", name=f"hook {i}"))
    api.add(hook(id="ours", headers={FINGERPRINT_HEADER: proof}), SECRET)
    assert await ensure_webhook(api, URL_, SECRET) == "ours"
    assert api.calls == ["list 1", "list 2", "list 3"]


async def test_a_changed_secret_is_patched_in_place() -> None:
    api = FakeWebhooks()
    old = fingerprint("the-old-secret", os.urandom(16))
    api.add(hook(id="ours", headers={FINGERPRINT_HEADER: old}), "the-old-secret")
    assert await ensure_webhook(api, URL_, SECRET) == "ours"
    assert api.calls == ["list 1", "update ours"]
    assert api.secret_of("ours") == SECRET
    assert len(api.hooks) == 1
    # Done once: the next process finds it right.
    api.calls.clear()
    assert await ensure_webhook(api, URL_, SECRET) == "ours"
    assert api.calls == ["list 1"]


@pytest.mark.parametrize(
    "changes",
    [{"is_active": False}, {"auth_type": "bearer"}, {"auth_header": "X-Other"}, {"headers": {}}],
)
async def test_a_drifted_webhook_is_put_right(changes: dict[str, Any]) -> None:
    api = FakeWebhooks()
    proof = fingerprint(SECRET, os.urandom(16))
    api.add(replace(hook(id="ours", headers={FINGERPRINT_HEADER: proof}), **changes), SECRET)
    assert await ensure_webhook(api, URL_, SECRET) == "ours"
    assert api.calls == ["list 1", "update ours"]
    fixed = api.hooks[0][0]
    assert not drifted(fixed)
    assert fixed.is_active


async def test_another_gateways_webhook_is_not_ours() -> None:
    api = FakeWebhooks()
    api.add(hook(id="staging", url="https://staging.example.test/v1/callbacks/catchall"))
    assert await ensure_webhook(api, URL_, SECRET) == "wh_1"
    assert [h.id for h, _ in api.hooks] == ["staging", "wh_1"]


async def test_a_listing_that_never_ends_is_an_error() -> None:
    class Endless(FakeWebhooks):
        async def list_webhooks(self, *, page: int = 1) -> WebhookPage:
            return WebhookPage((hook(id=f"x{page}", name="x"),), page, page + 1)

    with pytest.raises(RuntimeError):
        await ensure_webhook(Endless(), URL_, SECRET)


# --------------------------------------------------------------------------------------------------
# The registrar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_submits_register_once() -> None:
    api = FakeWebhooks()
    push = CatchallPush(api, GATEWAY, SECRET)
    bodies = await asyncio.gather(*(push.with_webhook({"query": f"q{i}"}) for i in range(10)))
    assert api.calls == ["list 1", "create"]
    assert push.registrations == 1
    assert {tuple(body["webhook_ids"]) for body in bodies} == {("wh_1",)}
    await push.with_webhook({"query": "later"})
    assert api.calls == ["list 1", "create"]


async def test_no_room_means_no_registration() -> None:
    api = FakeWebhooks()
    push = CatchallPush(api, GATEWAY, SECRET)
    full = {"query": "q", "webhook_ids": ["a", "b", "c", "d", "e"]}
    assert await push.with_webhook(full) is full
    assert api.calls == []


async def test_a_failed_registration_submits_without_push_logs_once_and_retries_later() -> None:
    api = FakeWebhooks()
    api.fail_with = RequestRejected(f"catchall: HTTP 422: URL must use HTTPS ({SECRET[:4]})")
    clock = Clock()
    push = CatchallPush(api, "http://gw.example.test", SECRET, clock=clock, retry_after=60)
    request = {"query": "q"}
    with capture_logs() as logs:
        assert await push.with_webhook(request) is request
        assert await push.with_webhook(request) is request
        clock.now += 61
        assert await push.with_webhook(request) is request
    assert api.calls == ["list 1", "list 1"]  # the second submit did not ask again
    failures = [e for e in logs if e["event"] == "catchall_push.registration_failed"]
    assert len(failures) == 1
    assert failures[0]["error"] == "upstream_rejected"
    assert SECRET not in str(logs)
    api.fail_with = None
    clock.now += 61
    with capture_logs() as logs:
        body = await push.with_webhook(request)
    assert body == {"query": "q", "webhook_ids": ["wh_1"]}
    assert [e["event"] for e in logs][-1] == "catchall_push.registration_recovered"


async def test_a_registration_that_hangs_times_out() -> None:
    class Hanging(FakeWebhooks):
        async def list_webhooks(self, *, page: int = 1) -> WebhookPage:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    push = CatchallPush(Hanging(), GATEWAY, SECRET, timeout=0.01)
    request = {"query": "q"}
    assert await push.with_webhook(request) is request


async def test_a_webhook_gone_upstream_is_registered_again_and_the_submit_resent() -> None:
    api = FakeWebhooks()
    push = CatchallPush(api, GATEWAY, SECRET)
    await push.ensure()
    api.hooks.clear()  # deleted by hand in CatchAll's dashboard
    sent: list[Mapping[str, JSON]] = []

    async def send(body: Mapping[str, JSON]) -> Submission:
        sent.append(body)
        ids = body.get("webhook_ids")
        assert isinstance(ids, list)
        if not any(h.id == ids[-1] for h, _ in api.hooks):
            message = f"catchall: HTTP 400: Webhook not found or not accessible: {ids[-1]}"
            raise RequestRejected(message, status=400)
        return Submission(upstream_id="job-1")

    submission, carried = await push.submit({"query": "q"}, send)
    assert submission.upstream_id == "job-1"
    assert carried  # the body that was sent (the second) named jobgate's new webhook
    assert [body["webhook_ids"] for body in sent] == [["wh_1"], ["wh_2"]]
    assert push.webhook_id == "wh_2"
    assert api.calls == ["list 1", "create", "list 1", "create"]


@pytest.mark.parametrize(
    ("request_body", "error"),
    [
        (  # no room for ours: nothing of ours to blame
            {"query": "q", "webhook_ids": ["a", "b", "c", "d", "e"]},
            NotFound("catchall: HTTP 404: Webhook a not found", status=404),
        ),
        (  # about the client's own webhook
            {"query": "q", "webhook_ids": ["theirs"]},
            RequestRejected("catchall: HTTP 400: Webhook not found: theirs", status=400),
        ),
        (  # not about webhooks at all
            {"query": "q"},
            RequestRejected("catchall: HTTP 400: end_date must be after start_date", status=400),
        ),
    ],
)
async def test_other_refusals_are_the_clients(
    request_body: dict[str, JSON], error: Exception
) -> None:
    api = FakeWebhooks()
    push = CatchallPush(api, GATEWAY, SECRET)
    sent: list[Mapping[str, JSON]] = []

    async def send(body: Mapping[str, JSON]) -> Submission:
        sent.append(body)
        raise error

    with pytest.raises(type(error)):
        await push.submit(request_body, send)
    assert len(sent) == 1
    assert api.calls in ([], ["list 1", "create"])  # registered for this submit at most, once


def test_names_our_webhook() -> None:
    assert names_our_webhook("Webhook not found: wh_1", "wh_1", ["a"])
    assert names_our_webhook("Webhook not found", "wh_1", [])
    assert not names_our_webhook("Webhook not found: a", "wh_1", ["a"])
    assert not names_our_webhook("start_date exceeds your plan", "wh_1", [])


async def test_an_adapter_without_webhook_calls_never_pushes() -> None:
    push = registrar(object(), GATEWAY, SECRET)
    request = {"query": "q"}
    assert await push.with_webhook(request) is request
    assert push.registrations == 0
    sent: list[Mapping[str, JSON]] = []

    async def send(body: Mapping[str, JSON]) -> Submission:
        sent.append(body)
        return Submission(upstream_id="job-1")

    _, carried = await push.submit(request, send)
    assert sent == [request]
    assert not carried  # the job was submitted without jobgate's webhook: it expects no push
