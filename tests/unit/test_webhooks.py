"""Outbound webhooks: the Standard Webhooks signature, the schedule, SSRF refusals, the delivery
rows in both stores, and the dispatcher and sender against a fake clock and a scripted client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from gateway.errors import CallbackURLRefused
from gateway.events import EventHub, wait_set
from gateway.jobs import Job
from gateway.results import (
    STANDARD_PORTS,
    FetchPolicy,
    FetchTimeout,
    PointerFetchFailed,
    UnsafeURL,
)
from gateway.settings import Settings, load_settings
from gateway.signatures import sign
from gateway.states import JobState
from gateway.store.base import Event, JobStore, NewEvent
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.webhooks import (
    CURSOR,
    CallbackCheck,
    Endpoint,
    WebhookClient,
    WebhookConfig,
    WebhookDispatcher,
    WebhookSender,
    category_of,
    message_id,
    outcome_of,
    parse_secret,
    payload,
    retry_delay,
    signed_headers,
    targets,
    webhook_config,
    webhook_policy,
)
from tests.support import bumped
from tests.unit.store.factories import make_job, new_delivery

T0 = datetime(2026, 11, 22, 10, 0, 0, 123457, tzinfo=UTC)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- the receiver's side, written from the spec and sharing no code with gateway.webhooks --------


def verify_standard_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = 300,
) -> bool:
    """What a receiver does: check the timestamp is recent, recompute the HMAC, and accept any
    ``v1`` signature in the space-separated list that matches in constant time."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError:
        return False
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret[len("whsec_") :] if secret.startswith("whsec_") else secret)
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(msg_id.encode() + b"." + timestamp.encode() + b"." + body)
    expected = base64.b64encode(mac.digest())
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


# -- signature -----------------------------------------------------------------------------------


def test_the_signature_matches_the_published_test_vector() -> None:
    key = parse_secret(SECRET)
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_prefix_is_optional_and_the_key_is_the_decoded_bytes() -> None:
    assert parse_secret(SECRET) == parse_secret(SECRET.removeprefix("whsec_"))
    assert parse_secret(SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_an_independent_receiver_accepts_our_headers_and_refuses_tampering() -> None:
    body = b'{"id":"job_1","state":"succeeded"}'
    now = 1_800_000_000
    headers = signed_headers(parse_secret(SECRET), "msg_x_1", now, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert verify_standard_webhook(SECRET, headers, body, now=now + 10)
    # Another body, another id, another secret, or a stale or future timestamp: refused.
    assert not verify_standard_webhook(SECRET, headers, body + b" ", now=now)
    assert not verify_standard_webhook(SECRET, {**headers, "webhook-id": "msg_y"}, body, now=now)
    other = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert not verify_standard_webhook(other, headers, body, now=now)
    assert not verify_standard_webhook(SECRET, headers, body, now=now + 301)
    assert not verify_standard_webhook(SECRET, headers, body, now=now - 301)
    # A receiver rotating secrets sees a list; ours is among them.
    listed = {**headers, "webhook-signature": "v1,bm90IGl0 " + headers["webhook-signature"]}
    assert verify_standard_webhook(SECRET, listed, body, now=now)


def test_message_ids_are_stable_and_unique_per_job_and_event() -> None:
    assert message_id("job_01ABC", 7) == message_id("job_01ABC", 7) == "msg_01ABC_7"
    assert message_id("job_01ABC", 8) != message_id("job_01ABD", 7)


# -- schedule and outcomes ----------------------------------------------------------------------


def test_the_default_schedule_is_the_standard_one(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "none.toml")
    schedule = settings.webhooks.schedule
    assert schedule == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert settings.webhooks.timeout == 15
    delays = [retry_delay(schedule, attempts) for attempts in range(10)]
    assert delays == [0, 5, 300, 1800, 7200, 18000, 36000, 36000, None, None]
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(schedule, -1)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (301, "retry"),
        (302, "retry"),
        (307, "retry"),
        (308, "retry"),
        (400, "retry"),
        (404, "retry"),
        (410, "disabled"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_what_an_answer_means(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def event(kind: str, state: JobState, event_id: int = 1, **data: Any) -> Event:
    return Event(
        id=event_id,
        job_id="job_1",
        tenant="default",
        provider="pulse",
        state=state,
        kind=kind,
        data={"id": "job_1", "state": state.value, **data},
        created_at=T0,
    )


def test_categories_and_targets() -> None:
    assert category_of(event("state", JobState.SUCCEEDED)) == "terminal"
    assert category_of(event("state", JobState.EXPIRED)) == "terminal"
    assert category_of(event("created", JobState.FAILED)) == "terminal"  # adopted when finished
    assert category_of(event("state", JobState.RUNNING)) == "progress"
    assert category_of(event("progress", JobState.RUNNING)) == "progress"
    for kind in ("created", "records", "anomaly", "deleted"):
        assert category_of(event(kind, JobState.RUNNING)) is None

    both = Endpoint("http://a.test/hook", frozenset({"terminal", "progress"}))
    terminal = Endpoint("http://b.test/hook", frozenset({"terminal"}))
    assert targets("terminal", "http://c.test/cb", [both, terminal]) == [
        "http://c.test/cb",
        "http://a.test/hook",
        "http://b.test/hook",
    ]
    assert targets("progress", "http://c.test/cb", [both, terminal]) == ["http://a.test/hook"]
    assert targets("terminal", "http://a.test/hook", [both]) == ["http://a.test/hook"]
    assert targets("terminal", None, []) == []

    # A team's endpoint hears its own tenant's jobs only; an operator's (no tenants) hears all.
    team = Endpoint("http://team.test/hook", frozenset({"terminal"}), frozenset({"growth"}))
    assert targets("terminal", None, [team, terminal], "growth") == [
        "http://team.test/hook",
        "http://b.test/hook",
    ]
    assert targets("terminal", None, [team, terminal], "billing") == ["http://b.test/hook"]


def test_the_payload_is_the_canonical_job_without_the_logs_extras() -> None:
    logged = replace(event("state", JobState.SUCCEEDED), data={"id": "job_1", "from": "running"})
    assert orjson.loads(payload(logged)) == {"id": "job_1"}
    body = orjson.loads(payload(event("state", JobState.SUCCEEDED)))
    assert body == {"id": "job_1", "state": "succeeded"}


# -- SSRF ----------------------------------------------------------------------------------------


def policy(*hosts: str, networks: Sequence[str] = (), ports: Sequence[int] = ()) -> FetchPolicy:
    return FetchPolicy(
        allowed_hosts=frozenset(hosts),
        allowed_networks=tuple(ip_network(n) for n in networks),
        allowed_ports=STANDARD_PORTS | frozenset(ports),
        max_redirects=0,
        timeout=FetchTimeout(connect=1, total=1),
    )


async def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}: a refused URL must be refused before any lookup")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://10.0.0.5/hook", "private"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://evil.test/hook", "not allowed"),
        ("ftp://hooks.test/hook", "scheme"),
        ("http://user:pw@hooks.test/hook", "credentials"),
    ],
)
async def test_callback_urls_are_refused_like_result_pointers(url: str, reason: str) -> None:
    allowed = policy(
        "hooks.test",
        "169.254.169.254",
        "fd00:ec2::254",
        "10.0.0.5",
        "127.0.0.1",
        "::ffff:127.0.0.1",
        # Even an allowance cannot open the metadata address.
        networks=["169.254.0.0/16"],
    )
    async with WebhookClient(allowed, resolver=no_dns) as client:
        with pytest.raises(UnsafeURL, match=reason):
            await client.post(url, b"{}", {})


async def test_a_name_resolving_to_a_forbidden_address_is_refused() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]

    async with WebhookClient(policy("hooks.test"), resolver=rebinding) as client:
        with pytest.raises(UnsafeURL, match="metadata"):
            await client.post("https://hooks.test/cb", b"{}", {})


async def test_an_unreachable_target_is_a_retryable_failure() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    allowed = policy("127.0.0.1", networks=["127.0.0.1/32"], ports=[9])
    async with WebhookClient(allowed) as client:
        with pytest.raises(PointerFetchFailed, match=r"could not deliver to 127\.0\.0\.1"):
            await client.post("http://127.0.0.1:9/hook?token=s3cret", b"{}", {})


@pytest.mark.parametrize("url", ["http://hooks.test:22/cb", "https://hooks.test:8443/cb"])
async def test_a_port_off_the_list_is_refused_before_any_lookup(url: str) -> None:
    async with WebhookClient(policy("hooks.test", ports=[8080]), resolver=no_dns) as client:
        with pytest.raises(UnsafeURL, match=r"port \d+ is not allowed"):
            await client.post(url, b"{}", {})


# -- settings ------------------------------------------------------------------------------------


def settings(tmp_path: Path, *, embedded: bool = False, **webhooks: Any) -> Settings:
    return load_settings(tmp_path / "none.toml", sandbox={"embedded": embedded}, webhooks=webhooks)


def test_webhook_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="base64"):
        settings(tmp_path, secret="whsec_not base64!")
    with pytest.raises(ValidationError, match="24 to 64 bytes"):
        settings(tmp_path, secret="whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ValidationError, match="terminal"):
        settings(tmp_path, secret=SECRET, endpoints=[{"url": "http://a.test", "events": []}])
    with pytest.raises(ValidationError, match="http or https"):
        settings(tmp_path, secret=SECRET, endpoints=[{"url": "file:///etc/passwd"}])
    with pytest.raises(ValidationError, match=">= 0"):
        settings(tmp_path, secret=SECRET, schedule=[0, -1])
    with pytest.raises(ValidationError, match=r"need webhooks\.secret"):
        settings(tmp_path, endpoints=[{"url": "http://a.test/hook"}])
    # The embedded sandbox makes its own secret, so endpoints without one are fine there.
    assert settings(tmp_path, embedded=True, endpoints=[{"url": "http://a.test/hook"}])


def test_without_a_secret_webhooks_are_off_outside_the_sandbox(tmp_path: Path) -> None:
    assert webhook_config(settings(tmp_path)) is None


def test_the_sandbox_generates_a_secret_and_never_logs_it(tmp_path: Path) -> None:
    with capture_logs() as logs:
        first = webhook_config(settings(tmp_path, embedded=True))
        second = webhook_config(settings(tmp_path, embedded=True))
    assert first is not None
    assert second is not None
    assert len(first.key) == 32
    assert first.key != second.key
    assert [entry["event"] for entry in logs] == ["webhooks.secret_generated"] * 2
    text = repr(logs)
    for key in (first.key, second.key):
        assert base64.b64encode(key).decode() not in text


def test_endpoint_hosts_are_allowed_and_callback_hosts_must_be_listed(tmp_path: Path) -> None:
    config = webhook_config(
        settings(
            tmp_path,
            secret=SECRET,
            endpoints=[{"url": "https://Hooks.Example.com/in", "events": ["terminal", "progress"]}],
            allowed_hosts=["*.callbacks.test"],
            allowed_networks=["127.0.0.1/32"],
            timeout=3,
        )
    )
    assert config is not None
    assert config.policy.allowed_hosts == {"hooks.example.com", "*.callbacks.test"}
    assert config.policy.allowed_ports == {80, 443}
    assert config.policy.max_redirects == 0
    assert config.timeout == 3
    assert config.endpoints == (
        Endpoint("https://Hooks.Example.com/in", frozenset({"terminal", "progress"})),
    )


def test_endpoint_ports_are_allowed_and_others_must_be_listed(tmp_path: Path) -> None:
    hooks = settings(
        tmp_path,
        secret=SECRET,
        endpoints=[{"url": "http://hooks.example.com:8080/in"}, {"url": "https://b.test/in"}],
        allowed_ports=[9000],
    )
    assert webhook_policy(hooks).allowed_ports == {80, 443, 8080, 9000}
    config = webhook_config(hooks)
    assert config is not None
    assert config.policy == webhook_policy(hooks)
    with pytest.raises(ValidationError, match="allowed_ports"):
        settings(tmp_path, secret=SECRET, allowed_ports=[0])
    with pytest.raises(ValidationError, match="http or https"):
        settings(tmp_path, secret=SECRET, endpoints=[{"url": "http://a.test:0/"}])
    with pytest.raises(ValidationError, match="out of range"):
        settings(tmp_path, secret=SECRET, endpoints=[{"url": "http://a.test:70000/"}])


# -- the callback_url check at submit: the delivery rules, resolution included ------------------


class TableDNS:
    """Answers from a table and records every question; anything else fails like NXDOMAIN."""

    def __init__(self, table: Mapping[str, list[str]]) -> None:
        self.table = dict(table)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host}: not in the test table")
        return self.table[host]


def callback_check(tmp_path: Path, dns: TableDNS, **webhooks: Any) -> CallbackCheck:
    hooks = {
        "secret": SECRET,
        "allowed_hosts": ["hooks.test", "internal.test", "localhost", "127.0.0.1", "10.0.0.5"],
        **webhooks,
    }
    return CallbackCheck.from_settings(settings(tmp_path, **hooks), dns)


DNS = {
    "hooks.test": ["93.184.216.34"],
    "internal.test": ["93.184.216.34", "10.0.0.7"],
    "localhost": ["127.0.0.1", "::1"],
}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/cb", "callback_url host 10.0.0.5 is a forbidden address (private)"),
        ("http://127.0.0.1:22/", "callback_url host 127.0.0.1 is a forbidden address (loopback)"),
        (
            "http://internal.test/cb",
            "callback_url host internal.test resolves to 10.0.0.7, a forbidden address (private)",
        ),
        (
            "http://localhost/cb",
            "callback_url host localhost resolves to 127.0.0.1, a forbidden address (loopback)",
        ),
        ("http://hooks.test:22/cb", "callback_url port 22 is not allowed"),
        ("http://evil.test/cb?token=s3cret", "callback_url host evil.test is not allowed"),
        ("http://user:pw@hooks.test/cb", "callback_url carries credentials (userinfo)"),
        ("ftp://hooks.test/cb", "callback_url scheme 'ftp' is not http or https"),
        ("http://missing.hooks.test/cb", "callback_url host missing.hooks.test is not allowed"),
    ],
)
async def test_the_check_refuses_what_delivery_would_with_the_reason(
    tmp_path: Path, url: str, reason: str
) -> None:
    check = callback_check(tmp_path, TableDNS(DNS))
    with pytest.raises(CallbackURLRefused) as caught:
        await check(url)
    assert caught.value.message == reason
    assert caught.value.status == 422
    assert caught.value.code == "callback_url_refused"
    assert "s3cret" not in caught.value.message


async def test_the_check_passes_what_delivery_would_call(tmp_path: Path) -> None:
    dns = TableDNS(DNS)
    check = callback_check(tmp_path, dns, allowed_ports=[8443])
    await check("https://hooks.test/cb?token=t")
    await check("https://hooks.test:8443/cb")
    assert dns.asked == ["hooks.test", "hooks.test"]


async def test_a_name_that_does_not_resolve_is_refused(tmp_path: Path) -> None:
    check = callback_check(tmp_path, TableDNS({}))
    with pytest.raises(CallbackURLRefused, match="could not resolve the callback_url host"):
        await check("https://hooks.test/cb")


async def test_a_resolver_that_never_answers_is_cut_off(tmp_path: Path) -> None:
    async def silent(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    hooks = settings(tmp_path, secret=SECRET, allowed_hosts=["hooks.test"], timeout=0.05)
    with pytest.raises(CallbackURLRefused, match="could not resolve"):
        await CallbackCheck.from_settings(hooks, silent)("https://hooks.test/cb")


async def test_without_webhooks_every_callback_url_is_refused(tmp_path: Path) -> None:
    check = CallbackCheck.from_settings(settings(tmp_path, allowed_hosts=["hooks.test"]))
    with pytest.raises(CallbackURLRefused, match="sends no webhooks"):
        await check("https://hooks.test/cb")


# -- the delivery rows (their contract: tests/unit/store/test_deliveries_contract.py) ----------


async def test_deliveries_and_the_cursor_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = SqliteStore(path)
    await first.open()
    await first.enqueue_deliveries([new_delivery(1)], cursor=(CURSOR, 3))
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.get_cursor(CURSOR) == 3
        assert [d.event_id for d in await second.list_deliveries()] == [1]
    finally:
        await second.close()


# -- dispatcher and sender -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class ScriptedClient(WebhookClient):
    """Answers from a script (a status or an exception per call) and records what it was sent."""

    def __init__(self, script: Sequence[int | Exception]) -> None:
        super().__init__(policy("hooks.test"))
        self.script = list(script)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.calls.append((url, body, dict(headers)))
        answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


def config(*endpoints: Endpoint, schedule: Sequence[float] = (0, 5, 300)) -> WebhookConfig:
    return WebhookConfig(
        key=parse_secret(SECRET),
        endpoints=endpoints,
        schedule=tuple(schedule),
        policy=policy("hooks.test"),
    )


async def finish(store: JobStore, job: Job, *states: JobState) -> None:
    for state in states:
        new = bumped(job, T0, state=state)
        kind = "state"
        saved = await store.save_many(
            [(new, [NewEvent(kind, {**new.public(), "from": job.state.value})])]
        )
        assert saved[0] is not None
        job = new


async def test_the_dispatcher_enqueues_each_event_once_from_its_persisted_cursor() -> None:
    store = MemoryStore()
    clock = Clock()
    old = make_job()
    await store.create(old, [NewEvent("created", old.public())])
    await finish(store, old, JobState.SUCCEEDED)  # before webhooks existed: never sent

    progress = Endpoint("http://hooks.test/all", frozenset({"terminal", "progress"}))
    hooks = config(progress, schedule=(2, 5))
    woken: list[int] = []
    dispatcher = WebhookDispatcher(
        store, EventHub(), hooks, on_enqueued=lambda: woken.append(1), clock=clock
    )
    await dispatcher.start()
    assert await store.get_cursor(CURSOR) == await store.last_event_id()

    job = make_job(callback_url="http://hooks.test/cb?token=t")
    await store.create(job, [NewEvent("created", job.public())])
    await finish(store, job, JobState.RUNNING, JobState.SUCCEEDED)
    assert await dispatcher.step() == 3
    assert woken == [1]
    rows = await store.list_deliveries()
    assert [(d.kind, d.url) for d in rows] == [
        ("progress", "http://hooks.test/all"),
        ("terminal", "http://hooks.test/cb?token=t"),
        ("terminal", "http://hooks.test/all"),
    ]
    assert all(d.job_id == job.id and d.next_attempt_at == T0 + timedelta(seconds=2) for d in rows)
    terminal = orjson.loads(rows[1].payload)
    assert (terminal["state"], terminal["id"]) == ("succeeded", job.id)
    assert not {"from", "callback_url"} & set(terminal)

    # A restarted dispatcher resumes after the cursor: nothing is enqueued twice.
    again = WebhookDispatcher(store, EventHub(), hooks, clock=clock)
    await again.start()
    assert await again.step() == 0
    assert len(await store.list_deliveries()) == 3

    # Events written while no dispatcher ran (a crash after the state write) are picked up.
    late = make_job(callback_url="http://hooks.test/late")
    await store.create(late, [NewEvent("created", late.public())])
    await finish(store, late, JobState.FAILED)
    restarted = WebhookDispatcher(store, EventHub(), hooks, clock=clock)
    await restarted.start()
    assert await restarted.step() == 2
    assert [d.url for d in await store.list_deliveries(job_id=late.id)] == [
        "http://hooks.test/late",
        "http://hooks.test/all",
    ]


async def sender_with(
    script: Sequence[int | Exception], schedule: Sequence[float] = (0, 5, 300)
) -> tuple[MemoryStore, WebhookSender, ScriptedClient, Clock]:
    store = MemoryStore()
    clock = Clock()
    client = ScriptedClient(script)
    sender = WebhookSender(store, config(schedule=schedule), client, clock=clock)
    await store.enqueue_deliveries([new_delivery(41, "http://hooks.test/cb")])
    return store, sender, client, clock


async def run_until_settled(sender: WebhookSender, clock: Clock, store: JobStore) -> int:
    """Step the sender through its schedule on the fake clock; the number of attempts."""
    attempts = 0
    for _ in range(20):
        attempts += await sender.step()
        await sender.drain()
        due = await store.next_delivery_due()
        if due is None:
            return attempts
        clock.now = max(clock.now, due)
    raise AssertionError("the delivery never settled")


async def test_the_sender_follows_the_schedule_then_gives_up() -> None:
    store, sender, client, clock = await sender_with([500, 503, 502, 500])
    with capture_logs() as logs:
        assert await run_until_settled(sender, clock, store) == 3
    (row,) = await store.list_deliveries()
    assert (row.status, row.attempts, row.last_status, row.last_error) == (
        "failed",
        3,
        502,
        "answered 502",
    )
    events = [entry["event"] for entry in logs]
    assert events == ["webhook.retry", "webhook.retry", "webhook.failed"]
    assert [entry.get("retry_in") for entry in logs[:2]] == [5, 300]
    # The same webhook-id on every attempt; a fresh timestamp and signature each time.
    ids = {headers["webhook-id"] for _, _, headers in client.calls}
    assert ids == {message_id("job_1", 41)}
    assert [int(h["webhook-timestamp"]) for _, _, h in client.calls] == [
        int(T0.timestamp()),
        int(T0.timestamp()) + 5,
        int(T0.timestamp()) + 305,
    ]
    for _, body, headers in client.calls:
        now = int(headers["webhook-timestamp"])
        assert verify_standard_webhook(SECRET, headers, body, now=now)
        assert headers["content-type"] == "application/json"
    # Hosts in logs, never the URL (its query may hold a token).
    assert all(entry["host"] == "hooks.test" for entry in logs)


async def test_a_success_after_failures_is_delivered() -> None:
    store, sender, _, clock = await sender_with([500, PointerFetchFailed("timeout"), 204])
    assert await run_until_settled(sender, clock, store) == 3
    (row,) = await store.list_deliveries()
    assert (row.status, row.attempts, row.last_status) == ("delivered", 3, 204)


async def test_a_redirect_is_a_failed_attempt() -> None:
    store, sender, client, clock = await sender_with([302, 307, 200])
    assert await run_until_settled(sender, clock, store) == 3
    assert [url for url, _, _ in client.calls] == ["http://hooks.test/cb"] * 3


async def test_an_unsafe_target_fails_at_once() -> None:
    store, sender, _, clock = await sender_with([UnsafeURL("result host x is not allowed")])
    assert await run_until_settled(sender, clock, store) == 1
    (row,) = await store.list_deliveries()
    assert row.status == "failed"
    assert row.last_error == "unsafe_result_url: result host x is not allowed"


async def test_a_410_disables_the_endpoint() -> None:
    store, sender, _, clock = await sender_with([410])
    await store.enqueue_deliveries(
        [new_delivery(42, "http://hooks.test/cb", due_at=T0 + timedelta(seconds=1))]
    )
    assert await run_until_settled(sender, clock, store) == 1
    assert [d.status for d in await store.list_deliveries()] == ["disabled", "disabled"]
    assert await store.endpoint_disabled("http://hooks.test/cb")


async def test_a_wake_up_never_swallows_the_shutdowns_cancellation() -> None:
    # The sender's wake-up is set by every finished attempt, so a stop often lands on the same
    # loop iteration; Python 3.11's wait_for then returned normally and the loop never stopped.
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_set(event, 10))
    await asyncio.sleep(0)
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_stopping_hands_claimed_deliveries_back() -> None:
    store, _, _, clock = await sender_with([])
    client = HangingClient()
    sender = WebhookSender(store, config(), client, clock=clock)
    assert await sender.step() == 1
    await client.called.wait()  # the attempt is in flight, holding its lease
    (leased,) = await store.list_deliveries()
    assert leased.next_attempt_at == T0 + sender.lease
    clock.advance(1)
    await sender.stop()
    (row,) = await store.list_deliveries()
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, clock.now)


class HangingClient(ScriptedClient):
    """Never answers: an attempt in flight when the process stops."""

    def __init__(self) -> None:
        super().__init__([])
        self.called = asyncio.Event()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
