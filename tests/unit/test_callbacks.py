"""Inbound callbacks without sockets: parsing per provider, tokens, dedupe, the inbox, the lookup
by upstream id in every store, and the slower poll cadence of a job that expects a push."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.base import JSON
from adapters.extract.adapter import ExtractAdapter
from gateway.callbacks import (
    CallbackConfig,
    CallbackInbox,
    CallbacksNotEnabled,
    CallbackUnauthorized,
    Deduper,
    InvalidCallback,
    callback_secrets,
    callback_url,
    parse,
    token_matches,
    with_callback,
)
from gateway.errors import JobNotFound
from gateway.events import EventHub
from gateway.jobs import Cadence, Job
from gateway.runner import Runner
from gateway.settings import load_settings
from gateway.states import JobState
from gateway.store.base import JobStore, NewEvent
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_sql import SELECT_JOBS_BY_UPSTREAM
from tests.support import bumped
from tests.unit.store.factories import make_job
from tests.unit.test_runner import POLICY, FakeClock, ScriptedAdapter, report

SECRET = "s3cret-token-value"


# -- parsing --------------------------------------------------------------------------------------


def test_extract_callback_names_its_job_and_status() -> None:
    notice = parse("extract", {"jobId": "job_1", "status": "COMPLETED", "result": {"a": 1}})
    assert (notice.provider, notice.upstream_id, notice.status) == ("extract", "job_1", "COMPLETED")
    assert parse("extract", {"id": "job_2", "status": "failed"}).upstream_id == "job_2"


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "job_1",
        {"status": "completed"},
        {"jobId": "", "status": "completed"},
        {"jobId": 1},
    ],
)
def test_an_extract_body_without_a_job_is_invalid(body: JSON) -> None:
    with pytest.raises(InvalidCallback):
        parse("extract", body)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"job_id": "u1", "status": "completed"}, "completed"),
        ({"data": {"job_id": "u1", "status": "failed"}}, "failed"),
        ({"event": "job.completed", "data": {"job_id": "u1"}}, "completed"),
        ({"event": "job.completed", "job_id": "u1", "status": "enriching"}, "enriching"),
        ({"jobId": "u1"}, None),
        ({"data": "not an object", "job_id": "u1", "status": "completed"}, "completed"),
    ],
)
def test_catchall_webhook_shapes(body: JSON, status: str | None) -> None:
    notice = parse("catchall", body)
    assert (notice.upstream_id, notice.status) == ("u1", status)


@pytest.mark.parametrize("body", [None, [], {"status": "completed"}, {"data": {"job_id": 7}}])
def test_a_catchall_body_without_a_job_is_invalid(body: JSON) -> None:
    with pytest.raises(InvalidCallback):
        parse("catchall", body)


def test_providers_that_do_not_push_have_no_parser() -> None:
    with pytest.raises(CallbacksNotEnabled):
        parse("platform", {"id": "x"})


def test_the_dedupe_key_ignores_key_order_but_not_content() -> None:
    a = parse("extract", {"jobId": "j", "status": "completed", "result": {"x": 1, "y": 2}})
    b = parse("extract", {"result": {"y": 2, "x": 1}, "status": "completed", "jobId": "j"})
    c = parse("extract", {"jobId": "j", "status": "completed", "result": {"x": 2, "y": 2}})
    d = parse("extract", {"jobId": "j", "status": "failed"})
    assert a.key == b.key
    assert len({a.key, c.key, d.key}) == 3


# -- tokens, secrets and the URL a provider is given ---------------------------------------------


def test_token_matches_only_the_exact_secret() -> None:
    assert token_matches(SECRET, SECRET)
    for wrong in (None, "", SECRET[:-1], SECRET + "x", SECRET.upper(), "ünïcode"):
        assert not token_matches(wrong, SECRET)


def test_the_callback_url_quotes_the_secret() -> None:
    url = callback_url("https://gw.example.test/base/", "extract", "a b/c&d")
    assert url == "https://gw.example.test/base/v1/callbacks/extract?token=a%20b%2Fc%26d"


def test_with_callback_adds_the_url_only_where_it_can_and_should() -> None:
    request: dict[str, JSON] = {"url": "https://example.com"}
    assert with_callback("extract", request, "https://gw/cb") == {
        **request,
        "callbackUrl": "https://gw/cb",
    }
    assert request == {"url": "https://example.com"}, "the client's body is never changed"
    own = {"url": "https://example.com", "callbackUrl": "https://client/hook"}
    assert with_callback("extract", own, "https://gw/cb") is own
    assert with_callback("extract", request, None) is request
    assert with_callback("catchall", request, "https://gw/cb") is request


def _settings(tmp_path: Path, *, embedded: bool, **providers: dict[str, Any]) -> Any:
    base = {
        name: {"base_url": "http://127.0.0.1:9/x", "api_key": "k"}
        for name in ("extract", "catchall", "pulse")
    }
    for name, extra in providers.items():
        base[name] = {**base[name], **extra}
    return load_settings(tmp_path / "none.toml", sandbox={"embedded": embedded}, providers=base)


def test_configured_secrets_are_used_and_only_for_providers_that_push(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        embedded=False,
        extract={"callback_secret": SECRET},
        pulse={"callback_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    )
    assert callback_secrets(settings, ["extract", "catchall"]) == {"extract": SECRET}


def test_the_embedded_sandbox_gets_a_random_secret_per_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path, embedded=True, catchall={"callback_secret": "mine"})
    first = callback_secrets(settings, ["extract", "catchall"])
    again = callback_secrets(settings, ["extract", "catchall"])
    assert first == again
    assert first["catchall"] == "mine"
    assert len(first["extract"]) >= 32


def test_a_job_expects_a_push_only_when_jobgate_asked_for_one() -> None:
    config = CallbackConfig("https://gw.example.test", {"extract": SECRET, "catchall": SECRET})
    asked = make_job(provider="extract", request={"url": "https://example.com"}, push_asked=True)
    assert config.expects_push(asked)
    assert config.expects_push(replace(asked, provider="catchall", request={"query": "q"}))
    # The submit did not ask (the client's own callbackUrl, five webhook ids of its own, a failed
    # registration, an adopted job): polled normally.
    assert not config.expects_push(replace(asked, push_asked=False))
    # Callbacks no longer configured: nothing will come.
    assert not CallbackConfig(None, {"extract": SECRET}).expects_push(asked)
    assert not CallbackConfig("https://gw", {}).expects_push(asked)
    # Pulse pushes every job of the organisation, adopted ones too, once its secret is set.
    signed = CallbackConfig(None, {"pulse": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    assert signed.expects_push(make_job(provider="pulse", request=None))
    assert not config.expects_push(make_job(provider="pulse", request={"x": 1}, push_asked=True))


# -- dedupe ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_dedupe_within_the_window_and_again_after_it() -> None:
    clock = Clock()
    seen = Deduper(ttl=60, size=100, clock=clock)
    assert seen.first("a")
    assert not seen.first("a")
    clock.now += 59.9
    assert not seen.first("a")
    clock.now += 0.2
    assert seen.first("a")


def test_dedupe_memory_is_bounded_and_forgets_on_request() -> None:
    seen = Deduper(ttl=60, size=3, clock=Clock())
    for key in "abcd":
        assert seen.first(key)
    assert len(seen) == 3
    assert seen.first("a"), "the oldest key was evicted"
    assert not seen.first("d")
    seen.forget("d")
    assert seen.first("d")
    with pytest.raises(ValueError, match="ttl"):
        Deduper(ttl=0)


# -- the inbox ------------------------------------------------------------------------------------


class Refresher:
    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.finals: list[bool] = []
        self.error = error

    async def __call__(self, job_id: str, tenant: str, final: bool = True) -> None:
        self.calls.append(job_id)
        self.finals.append(final)
        if self.error is not None:
            raise self.error


async def _inbox(refresh: Refresher) -> tuple[CallbackInbox, Job]:
    store = MemoryStore()
    job = make_job(provider="extract", upstream_id="job_up")
    await store.create(job, [NewEvent("created", job.public())])
    config = CallbackConfig("https://gw", {"extract": SECRET, "pulse": SECRET})
    return CallbackInbox(config, store, refresh), job


async def test_a_callback_says_whether_it_claims_an_end() -> None:
    refresh = Refresher()
    store = MemoryStore()
    job = make_job(provider="extract", upstream_id="job_up")
    await store.create(job, [NewEvent("created", job.public())])
    config = CallbackConfig("https://gw", {"extract": SECRET})
    table = ExtractAdapter.status_table
    inbox = CallbackInbox(config, store, refresh, status_tables={"extract": table})
    running = next(status for status, state in table.items() if state is JobState.RUNNING)
    for status in (running, "completed", "reticulating"):
        await inbox.receive("extract", {"jobId": "job_up", "status": status, "result": {}})
    # A status the table calls running is progress; an end, or a status nobody knows, is an end
    # (the poll decides either way).
    assert refresh.finals == [False, True, True]
    notice = parse("catchall", {"latest_job_id": "x"})
    assert notice.status is None
    assert inbox.says_ended(notice)  # CatchAll's webhook fires only at the end


async def test_authentication_is_404_before_401() -> None:
    inbox, _ = await _inbox(Refresher())
    inbox.authenticate("extract", SECRET)
    for provider in ("platform", "catchall", "nope"):  # no parser, no secret, unknown
        with pytest.raises(CallbacksNotEnabled):
            inbox.authenticate(provider, SECRET)
    with capture_logs() as logs, pytest.raises(CallbackUnauthorized) as caught:
        inbox.authenticate("extract", "wrong")
    assert SECRET not in str(caught.value.message)
    assert SECRET not in str(logs)
    assert logs[0]["event"] == "callback.unauthorized"


async def test_a_callback_refreshes_its_job_once() -> None:
    refresh = Refresher()
    inbox, job = await _inbox(refresh)
    body = {"jobId": "job_up", "status": "completed", "result": {}}
    assert await inbox.receive("extract", body) == {"matched": True, "duplicate": False}
    assert await inbox.receive("extract", body) == {"matched": True, "duplicate": True}
    assert refresh.calls == [job.id]
    assert await inbox.receive("extract", {**body, "status": "failed"}) == {
        "matched": True,
        "duplicate": False,
    }
    assert refresh.calls == [job.id, job.id]


async def test_an_unknown_upstream_id_is_unmatched_and_logged_once() -> None:
    refresh = Refresher()
    inbox, _ = await _inbox(refresh)
    body = {"jobId": "job_other", "status": "completed"}
    with capture_logs() as logs:
        assert await inbox.receive("extract", body) == {"matched": False}
        assert await inbox.receive("extract", body) == {"matched": False}
    assert [entry["event"] for entry in logs] == ["callback.unmatched"]
    assert logs[0]["upstream_id"] == "job_other"
    assert refresh.calls == []


async def test_a_failed_refresh_lets_the_retry_through() -> None:
    refresh = Refresher(error=RuntimeError("store down"))
    inbox, job = await _inbox(refresh)
    body = {"jobId": "job_up", "status": "completed"}
    with pytest.raises(RuntimeError):
        await inbox.receive("extract", body)
    refresh.error = None
    assert await inbox.receive("extract", body) == {"matched": True, "duplicate": False}
    assert refresh.calls == [job.id, job.id]


async def test_a_job_deleted_before_its_refresh_is_unmatched() -> None:
    inbox, _ = await _inbox(Refresher(error=JobNotFound("gone")))
    assert await inbox.receive("extract", {"jobId": "job_up", "status": "completed"}) == {
        "matched": False
    }


# -- the store lookup, in every store -------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    made: JobStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "j.db")
    await made.open()
    yield made
    await made.close()


async def test_get_by_upstream(store: JobStore) -> None:
    older = make_job(id="job_01A", provider="extract", upstream_id="u1")
    newer = make_job(id="job_01B", provider="extract", upstream_id="u1")
    other_provider = make_job(id="job_01C", provider="pulse", upstream_id="u1")
    other_tenant = make_job(id="job_01D", provider="extract", upstream_id="u2", tenant="acme")
    for job in (older, newer, other_provider, other_tenant):
        await store.create(job, [])
    found = await store.get_by_upstream("extract", "u1")
    assert found is not None
    assert found.id == newer.id
    pulse = await store.get_by_upstream("pulse", "u1")
    assert pulse is not None
    assert pulse.id == other_provider.id
    assert await store.get_by_upstream("extract", "u2") is None
    acme = await store.get_by_upstream("extract", "u2", tenant="acme")
    assert acme is not None
    assert acme.id == other_tenant.id
    assert await store.get_by_upstream("extract", "nope") is None
    assert await store.delete(newer.id)
    found = await store.get_by_upstream("extract", "u1")
    assert found is not None
    assert found.id == older.id
    assert await store.delete(older.id)
    assert await store.get_by_upstream("extract", "u1") is None


async def test_get_by_upstream_survives_saves(store: JobStore) -> None:
    job = make_job(provider="extract", upstream_id="u9")
    await store.create(job, [])
    saved = await store.save_many([(bumped(job, job.updated_at, state=JobState.RUNNING), [])])
    assert saved[0] is not None
    found = await store.get_by_upstream("extract", "u9")
    assert found is not None
    assert (found.state, found.version) == (JobState.RUNNING, 2)


async def test_sqlite_lookup_uses_the_index_and_old_files_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    job = make_job(provider="extract", upstream_id="u-old")
    await store.create(job, [])
    await store.close()
    # Turn the file back into a schema-1 database: no upstream_id column, no index.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX jobs_upstream")
        conn.execute("ALTER TABLE jobs DROP COLUMN upstream_id")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        found = await store.get_by_upstream("extract", "u-old")
        assert found is not None
        assert found.id == job.id
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + SELECT_JOBS_BY_UPSTREAM, ("extract", "u-old", "default")
        ).fetchall()
    conn.close()
    assert any("jobs_upstream" in str(row) for row in plan), plan


# -- the runner's cadence for a job that expects a push -------------------------------------------


async def test_a_job_that_expects_a_push_is_polled_at_the_slowest_cadence() -> None:
    clock = FakeClock()
    adapter = ScriptedAdapter("a")
    store = MemoryStore()
    pushed = make_job(id="job_push", provider="a", upstream_id="p", created_at=clock.now)
    polled = make_job(id="job_poll", provider="a", upstream_id="q", created_at=clock.now)
    for job in (pushed, polled):
        job = bumped(
            job, clock.now, next_poll_at=clock.now, deadline_at=clock.now + timedelta(days=1)
        )
        await store.create(job, [])
        adapter.script(job.upstream_id, report(JobState.RUNNING, "processing"))
    runner = Runner(
        store,
        {"a": adapter},
        {"a": POLICY},
        EventHub(),
        clock=clock.wall,
        mono=clock.monotonic,
        push_expected=lambda job: job.id == "job_push",
    )
    await runner.step()
    await runner.drain()
    due = {}
    for job_id in ("job_push", "job_poll"):
        stored = await store.get(job_id)
        assert stored is not None
        assert stored.next_poll_at is not None
        due[job_id] = (stored.next_poll_at - clock.now).total_seconds()
    assert due == {"job_push": POLICY.longest_wait, "job_poll": POLICY.min_interval}
    assert (await store.get("job_push")).cadence == Cadence("push", POLICY.longest_wait / 2)
