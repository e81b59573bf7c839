"""The client core without a server: requests as built, answers as read, retries as decided."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from gateway.web.models import JobList
from gateway.web.routes import JOB_EVENTS
from jobgate.client import core
from jobgate.client.errors import (
    BY_STATUS,
    Conflict,
    GatewayUnreachable,
    NotFound,
    ProblemError,
    RateLimited,
    Unavailable,
    UnexpectedAnswer,
    Unprocessable,
    WaitTimeout,
)
from jobgate.client.events import EVENT_MODELS
from tests.support import public_job

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POLICY = core.RetryPolicy(max_retries=3, max_retry_wait=30.0)


def job(state: str = "running", job_id: str = "job_1", **extra: Any) -> dict[str, Any]:
    return public_job(state=state, id=job_id, **extra)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content_type = "application/problem+json" if status >= 400 else "application/json"
    return httpx.Response(
        status,
        content=orjson.dumps(body) if body is not None else b"",
        headers={"Content-Type": content_type, **(headers or {})},
    )


def problem(status: int, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://jobgate.dev/problems/{code}",
        "title": "t",
        "status": status,
        "detail": f"{code} happened",
        "code": code,
        **extra,
    }


# -- building requests ----------------------------------------------------------------------------


def test_submit_always_carries_an_idempotency_key_and_is_retryable() -> None:
    call = core.submit("extract", {"url": "u"}, labels={"team": "a"}, new_key=lambda: "k-1")
    assert (call.method, call.path, call.idempotent) == ("POST", "/v1/jobs", True)
    assert dict(call.headers) == {"Idempotency-Key": "k-1"}
    assert call.body == {"provider": "extract", "request": {"url": "u"}, "labels": {"team": "a"}}
    given = core.submit("extract", {}, idempotency_key="mine", callback_url="https://x/cb")
    assert dict(given.headers)["Idempotency-Key"] == "mine"
    assert given.body["callback_url"] == "https://x/cb"
    assert core.submit("extract", {}).headers != core.submit("extract", {}).headers


def test_adopt_sends_the_upstream_id() -> None:
    call = core.adopt("platform", "job_x", new_key=lambda: "k")
    assert call.body == {"provider": "platform", "upstream_id": "job_x"}
    assert call.idempotent


def test_actions_are_never_retried_and_ids_are_escaped() -> None:
    for call in (core.cancel("a/b?c"), core.rerun("j"), core.continue_("j", new_limit=30)):
        assert call.method == "POST"
        assert not call.idempotent
    assert core.cancel("a/b?c").path == "/v1/jobs/a%2Fb%3Fc/cancel"
    assert core.continue_("j", new_limit=30).body == {"new_limit": 30}
    assert not core.continue_("j").has_body
    assert core.delete("j").idempotent


def test_long_polls_and_list_parameters() -> None:
    get = core.get_job("j", wait=12.5)
    assert get.params == (("wait", "12.5"),)
    assert get.wait == 12.5
    assert core.get_job("j").params == ()
    page = core.list_page(
        provider="pulse", state="succeeded", labels={"a": "1", "b": "x:y"}, limit=7, cursor="c"
    )
    assert page.params == (
        ("provider", "pulse"),
        ("state", "succeeded"),
        ("label", "a:1"),
        ("label", "b:x:y"),
        ("limit", "7"),
        ("cursor", "c"),
    )
    result = core.result("j", wait=30, page=2, page_size=5)
    assert result.params == (("wait", "30"), ("page", "2"), ("page_size", "5"))


def test_config_from_the_environment_and_the_key_stays_out_of_reprs() -> None:
    env = {"JOBGATE_URL": "http://gw:9/", "JOBGATE_API_KEY": "jg_secret"}
    config = core.Config.resolve(None, None, env, timeout=5, max_retries=1, max_retry_wait=2)
    assert config.url == "http://gw:9"
    assert config.headers()["Authorization"] == "Bearer jg_secret"
    assert "jg_secret" not in repr(config)
    bare = core.Config.resolve(None, None, {}, timeout=5, max_retries=1, max_retry_wait=2)
    assert bare.url == core.DEFAULT_URL
    assert "Authorization" not in bare.headers()
    args = config.request_args(core.get_job("j", wait=20))
    assert args["timeout"].read == 25
    assert core.safe_url("http://user:pw@host:1/x") == "http://host:1/x"
    # A key put in the URL's user info stays out of the repr too.
    inline = core.Config.resolve(
        "http://jg_inurl@gw:9", None, {}, timeout=5, max_retries=1, max_retry_wait=2
    )
    assert "jg_inurl" not in repr(inline)
    assert "http://gw:9" in repr(inline)


# -- Retry-After and the retry decision ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("Fri, 02 Jan 2026 03:04:15 GMT", 10.0),
        ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-1", None),
        (None, None),
        ("999999999", 999999999.0),
        ("1" * 10, None),  # past any sane wait: as if absent
        ("9" * 5000, None),  # int() of this raises; it must not escape
        ("Fri, 02 Jan 99999999999 03:04:15 GMT", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert core.parse_retry_after(value, NOW) == seconds


def retry(
    call: core.Call[Any],
    status: int,
    code: str,
    attempt: int = 0,
    retry_after: str | None = None,
    left: float | None = None,
) -> Any:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return core.retry_delay(
        call,
        core.problem_from(answer(status, problem(status, code), headers), NOW),
        attempt,
        POLICY,
        left,
    )


def test_retry_decisions() -> None:
    get = core.get_job("j")
    assert retry(get, 503, "upstream_unavailable", retry_after="2") == 2.0
    # Longer than max_retry_wait: not retried early, but raised (with retry_after) to the caller.
    assert retry(get, 429, "tenant_rate_limited", retry_after="600") is None
    assert retry(get, 429, "tenant_rate_limited", retry_after="30") == 30.0
    assert retry(get, 503, "x") == core.DEFAULT_RETRY_WAIT  # absent: a small default
    assert retry(get, 503, "x", attempt=2) == core.DEFAULT_RETRY_WAIT * 4
    assert retry(get, 503, "x", attempt=3) is None  # out of retries
    assert retry(get, 500, "x") is None
    assert retry(get, 409, "idempotency_key_in_flight") is None  # a GET has no key in flight
    submit = core.submit("p", {})
    assert retry(submit, 409, "idempotency_key_in_flight", retry_after="1") == 1.0
    assert retry(submit, 409, "invalid_state") is None
    assert retry(core.cancel("j"), 503, "upstream_unavailable", retry_after="0") is None
    # Connection failures: idempotent calls only, with a bounded backoff.
    assert core.retry_delay(get, None, 0, POLICY) == core.TRANSPORT_BACKOFF
    assert core.retry_delay(get, None, 3, POLICY) is None
    assert core.retry_delay(core.rerun("j"), None, 0, POLICY) is None
    # A deadline: no retry that would start at or after it.
    assert retry(get, 503, "x", retry_after="2", left=2.5) == 2.0
    assert retry(get, 503, "x", retry_after="2", left=2.0) is None
    assert retry(get, 503, "x", left=0.5) is None  # the 1 s default does not fit either
    assert core.retry_delay(get, None, 0, POLICY, left=0.0) is None


def exchange_of(calls: Any, clock: float = 0.0) -> core.Exchange[Any]:
    exchange: core.Exchange[Any] = core.Exchange(calls, POLICY, "http://gw")
    exchange.next_call(clock)
    return exchange


def test_an_exchange_parses_retries_then_raises() -> None:
    exchange = exchange_of(core.get_job("j"))
    busy = answer(503, problem(503, "upstream_unavailable"), {"Retry-After": "0"})
    assert [exchange.answered(busy, NOW, 0.0) for _ in range(3)] == [core.Retry(0.0)] * 3
    with pytest.raises(Unavailable):
        exchange.answered(busy, NOW, 0.0)
    parsed = exchange_of(core.get_job("j")).answered(answer(200, job()), NOW, 0.0)
    assert not isinstance(parsed, core.Retry)
    assert parsed.id == "job_1"
    with pytest.raises(GatewayUnreachable, match="http://gw") as caught:
        exchange_of(core.cancel("j")).failed("ConnectError: refused", 0.0)
    assert "refused" in str(caught.value)


def test_a_long_retry_after_is_raised_with_its_retry_after() -> None:
    exchange = exchange_of(core.get_job("j"))
    limited = answer(429, problem(429, "tenant_rate_limited"), {"Retry-After": "120"})
    with pytest.raises(RateLimited) as caught:
        exchange.answered(limited, NOW, 0.0)
    assert caught.value.retry_after == 120.0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html>\n<body>\nproxy login</body></html>" + b"x" * 500, "text/html"),
        (orjson.dumps({**job(), "state": "paused"}), "application/json"),  # a state it lacks
        (b'{"jobs": "nope"}', "application/json"),
    ],
)
def test_a_success_that_does_not_read_is_one_unexpected_answer(
    body: bytes, content_type: str
) -> None:
    call = core.get_job("j") if b"jobs" not in body else core.list_page()
    response = httpx.Response(200, content=body, headers={"Content-Type": content_type})
    with pytest.raises(UnexpectedAnswer) as caught:
        exchange_of(call).answered(response, NOW, 0.0)
    text = str(caught.value)
    assert "\n" not in text
    assert "HTTP 200" in text
    assert content_type in text
    assert len(text) < 250  # the start of the body, not all of it
    # Raised outside the except block: no pydantic error (nor anything else) chained to it.
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None


def test_unknown_fields_of_a_job_are_tolerated() -> None:
    parsed = exchange_of(core.get_job("j")).answered(
        answer(200, {**job(), "new_field": 1}), NOW, 0.0
    )
    assert not isinstance(parsed, core.Retry)
    assert parsed.id == "job_1"


def test_a_resent_delete_that_finds_the_job_gone_succeeded() -> None:
    gone = answer(404, problem(404, "job_not_found"))
    with pytest.raises(NotFound):
        exchange_of(core.delete("j")).answered(gone, NOW, 0.0)  # the first try: it was not there
    exchange = exchange_of(core.delete("j"))
    assert exchange.failed("ReadTimeout", 0.0) == core.Retry(core.TRANSPORT_BACKOFF)
    assert exchange.answered(gone, NOW, 1.0) is None  # the lost first try deleted it
    with pytest.raises(NotFound):
        exchange_of(core.get_job("j")).answered(gone, NOW, 0.0)


def test_wait_retries_stop_at_its_deadline() -> None:
    loop = core.WaitLoop("j", 10.0, now=0.0)
    exchange = exchange_of(loop, clock=0.0)
    busy = answer(503, problem(503, "upstream_unavailable"), {"Retry-After": "3"})
    assert exchange.answered(busy, NOW, 0.0) == core.Retry(3.0)
    # The poll after the retry asks only for the time that is left.
    assert dict(exchange.next_call(3.0).params) == {"wait": "7"}
    with pytest.raises(Unavailable):
        exchange.answered(busy, NOW, 8.0)  # 3 s more would pass the deadline: raised instead
    unreachable = exchange_of(core.WaitLoop("j", 10.0, now=0.0), clock=9.9)
    with pytest.raises(GatewayUnreachable):
        unreachable.failed("ConnectError", 9.9)


def not_ready(state: str) -> httpx.Response:
    return answer(409, problem(409, "result_not_ready", state=state))


def test_a_long_result_wait_is_long_polls_the_gateway_accepts() -> None:
    waiting = core.result_wait("j", wait=120, now=0.0, page=2)
    exchange = exchange_of(waiting, clock=0.0)
    assert dict(exchange.next_call(0.0).params) == {"wait": "30", "page": "2"}
    # Not ready after 30 s, the job still running: ask again, at once, for what is left.
    assert exchange.answered(not_ready("running"), NOW, 30.0) == core.Retry(0.0)
    assert dict(exchange.next_call(100.0).params) == {"wait": "20", "page": "2"}
    assert exchange.attempt == 0  # asking again is not a failure
    with pytest.raises(Conflict):
        exchange.answered(not_ready("running"), NOW, 120.0)  # the deadline passed
    ended = exchange_of(core.result_wait("j", wait=120, now=0.0))
    with pytest.raises(Conflict):
        ended.answered(not_ready("failed"), NOW, 1.0)  # it never gets a result
    assert core.result_wait("j", wait=None, now=0.0).next_call(5.0).params == ()


# -- problems -------------------------------------------------------------------------------------


def test_problem_to_exception() -> None:
    fields = [{"field": "request", "type": "missing", "message": "missing field: request"}]
    error = core.problem_from(
        answer(
            422, problem(422, "validation_error", errors=fields, reason="r"), {"X-Request-ID": "rq"}
        ),
        NOW,
    )
    assert isinstance(error, Unprocessable)
    assert (error.status, error.code, error.errors) == (422, "validation_error", fields)
    assert error.extra == {"reason": "r"}
    assert error.request_id == "rq"
    assert str(error) == "validation_error: validation_error happened"
    limited = core.problem_from(
        answer(429, problem(429, "tenant_rate_limited"), {"Retry-After": "4"}), NOW
    )
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 4.0
    assert isinstance(
        core.problem_from(answer(409, problem(409, "action_not_supported")), NOW), Conflict
    )
    assert isinstance(core.problem_from(answer(404, problem(404, "job_not_found")), NOW), NotFound)
    odd = core.problem_from(answer(418, problem(418, "teapot")), NOW)
    assert type(odd) is ProblemError


def test_a_non_problem_error_is_still_a_problem_error_on_one_line() -> None:
    response = httpx.Response(
        502, content=b"<html>\nBad\ngateway</html>", headers={"Content-Type": "text/html"}
    )
    error = core.problem_from(response, NOW)
    assert error.code == "http_502"
    assert "\n" not in str(error)
    assert str(error).startswith("http_502: ")
    assert set(BY_STATUS) == {400, 401, 403, 404, 409, 410, 422, 429, 502, 503}


# -- results --------------------------------------------------------------------------------------


def test_only_small_json_results_are_read_whole() -> None:
    assert core.small_json({"content-type": "application/json", "content-length": "10"})
    big = str(core.SMALL_RESULT + 1)
    assert not core.small_json({"content-type": "application/json", "content-length": big})
    assert not core.small_json({"content-type": "application/json"})  # length unknown
    assert not core.small_json({"content-type": "application/pdf", "content-length": "10"})
    assert not core.small_json({"content-type": "text/json", "content-length": "9" * 40})
    call = core.result("j", stream=True)
    exchange = exchange_of(call)
    assert exchange.streams(200, {"content-type": "application/pdf"})
    assert not exchange.streams(409, {"content-type": "application/pdf"})
    assert not exchange_of(core.result("j")).streams(200, {"content-type": "application/pdf"})
    stream = core.ResultStream("application/vnd.x+json; charset=utf-8", None, iter(()))
    assert stream.is_json
    assert not core.ResultStream("application/pdf", 1, iter(())).is_json


def test_results_are_models_or_the_providers_bytes() -> None:
    inline = core.parse_result(answer(200, {"kind": "inline", "partial": False, "data": {"x": 1}}))
    assert not isinstance(inline, bytes)
    assert inline.data == {"x": 1}
    document = orjson.dumps({"pages": [1, 2], "kind": "report"})
    assert core.parse_result(answer(200, {"pages": [1, 2], "kind": "report"})) == document
    pdf = httpx.Response(200, content=b"%PDF", headers={"Content-Type": "application/pdf"})
    assert core.parse_result(pdf) == b"%PDF"


# -- multi-request state machines -----------------------------------------------------------------


def page(ids: list[str], cursor: str | None) -> JobList:
    return JobList.model_validate({"jobs": [job(job_id=i) for i in ids], "next_cursor": cursor})


def test_the_list_cursor_follows_pages_and_stops_at_the_limit() -> None:
    pages = core.JobPages(state="running", page_size=2, limit=5)
    seen: list[str] = []
    cursors: list[str | None] = []
    limits: list[str] = []
    answers = [page(["a", "b"], "c1"), page(["c", "d"], "c2"), page(["e", "f"], "c3")]
    while (call := pages.next_call()) is not None:
        params = dict(call.params)
        cursors.append(params.get("cursor"))
        limits.append(params["limit"])
        seen += [j.id for j in pages.feed(answers.pop(0))]
    assert seen == ["a", "b", "c", "d", "e"]
    assert cursors == [None, "c1", "c2"]
    assert limits == ["2", "2", "1"]  # the last page asks only for what is left


def test_the_list_cursor_stops_at_the_last_page_and_on_an_empty_one() -> None:
    pages = core.JobPages(page_size=10)
    assert pages.next_call() is not None
    assert [j.id for j in pages.feed(page(["a"], None))] == ["a"]
    assert pages.next_call() is None
    empty = core.JobPages()
    empty.feed(page([], "c"))
    assert empty.next_call() is None
    assert core.JobPages(limit=0).next_call() is None


def test_wait_long_polls_until_finished_or_the_deadline() -> None:
    loop = core.WaitLoop("j", 45.0, now=100.0)
    first = loop.next_call(100.0)
    assert dict(first.params) == {"wait": "30"}
    assert loop.feed(core._job(answer(200, job("running")))) is None
    second = loop.next_call(130.0)
    assert dict(second.params) == {"wait": "15"}
    assert loop.feed(core._job(answer(200, job("running", version=2)))) is None
    with pytest.raises(WaitTimeout) as caught:
        loop.next_call(145.0)
    assert caught.value.job.version == 2
    done = core.WaitLoop("j", None, now=0.0)
    assert dict(done.next_call(1e9).params) == {"wait": "30"}
    finished = done.feed(core._job(answer(200, job("succeeded"))))
    assert finished is not None
    assert finished.state == "succeeded"


def test_result_pages_until_the_last() -> None:
    pages = core.ResultPages("j", page_size=2, wait=10)
    calls = []
    total = 3
    while (calls_ := pages.next_call(0.0)) is not None:
        calls.append(dict(calls_.next_call(0.0).params))
        n = int(calls[-1]["page"])
        pages.feed(
            core.parse_result(
                answer(
                    200,
                    {
                        "kind": "paged",
                        "partial": False,
                        "page": n,
                        "page_size": 2,
                        "total_pages": total,
                        "total_records": 5,
                        "records": [n],
                    },
                )
            )
        )
    assert calls == [
        {"wait": "10", "page": "1", "page_size": "2"},
        {"page": "2", "page_size": "2"},
        {"page": "3", "page_size": "2"},
    ]
    inline = core.ResultPages("j")
    inline.feed(core.parse_result(answer(200, {"kind": "inline", "partial": False, "data": 1})))
    assert inline.next_call(0.0) is None


def test_event_models_match_the_routes() -> None:
    assert {**dict(JOB_EVENTS), "end": EVENT_MODELS["end"]} == EVENT_MODELS
