"""The download's Range/resume decisions and the event stream's reconnect rules, without I/O."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from gateway.web.models import EndEventData, StateEventData
from jobgate.client.core import Retry, RetryPolicy
from jobgate.client.download import (
    Again,
    Complete,
    Download,
    DownloadPlan,
    Write,
    parse_content_range,
)
from jobgate.client.errors import (
    Conflict,
    DownloadError,
    GatewayUnreachable,
    NotFound,
    UnexpectedAnswer,
)
from jobgate.client.events import MAX_ADVISED_WAIT, EventStream
from tests.unit.client.test_core import answer, job, problem

BODY = bytes(range(256)) * 40
SHA = hashlib.sha256(BODY).hexdigest()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def headers_of(plan: DownloadPlan) -> dict[str, str]:
    call = plan.next_call(0.0)
    assert call is not None
    return dict(call.headers)


def range_header(plan: DownloadPlan) -> str | None:
    return headers_of(plan).get("Range")


def test_content_range() -> None:
    assert parse_content_range("bytes 10-19/100") == (10, 100)
    assert parse_content_range("bytes */100") == (None, 100)
    assert parse_content_range("bytes 0-9/*") == (0, None)
    assert parse_content_range("junk") == (None, None)


def test_a_resume_appends_after_the_partial_and_verifies_the_whole() -> None:
    plan = DownloadPlan("j", partial=1000, expected_size=len(BODY), expected_sha256=SHA)
    assert range_header(plan) == "bytes=1000-"
    headers = {"content-range": f"bytes 1000-{len(BODY) - 1}/{len(BODY)}", "etag": f'"{SHA}"'}
    assert plan.opened(206, headers) == Write(1000, rehash=True)
    plan.existing(BODY[:1000])
    plan.feed(BODY[1000:])
    done = plan.finish("out")
    assert not isinstance(done, Again)
    assert (done.size, done.sha256, done.resumed_from, done.status) == (len(BODY), SHA, 1000, 206)


def test_a_200_to_a_range_request_starts_over() -> None:
    plan = DownloadPlan("j", partial=1000)
    assert plan.opened(200, {"content-length": str(len(BODY)), "etag": f'"{SHA}"'}) == Write(
        0, rehash=False
    )
    plan.feed(BODY)
    done = plan.finish("out")
    assert not isinstance(done, Again)
    assert (done.resumed_from, done.sha256, done.status) == (0, SHA, 200)


def test_416_means_already_whole_or_start_over() -> None:
    whole = DownloadPlan("j", partial=len(BODY), expected_sha256=SHA)
    assert whole.opened(416, {"content-range": f"bytes */{len(BODY)}"}) == Complete(rehash=True)
    whole.existing(BODY)
    assert not isinstance(whole.finish("out"), Again)
    longer = DownloadPlan("j", partial=len(BODY) + 5)
    assert longer.opened(416, {"content-range": f"bytes */{len(BODY)}"}) == Again()
    assert range_header(longer) is None  # from byte 0 now


def test_a_206_of_another_copy_or_offset_starts_over() -> None:
    plan = DownloadPlan("j", partial=10, expected_sha256=SHA)
    other = {"content-range": "bytes 10-99/100", "etag": '"' + "0" * 64 + '"'}
    assert plan.opened(206, other) == Again()
    plan = DownloadPlan("j", partial=10)
    assert plan.opened(206, {"content-range": "bytes 0-99/100"}) == Again()


def test_a_resumed_mismatch_starts_over_once_a_whole_one_raises() -> None:
    plan = DownloadPlan("j", partial=3, expected_size=len(BODY), expected_sha256=SHA)
    plan.opened(206, {"content-range": f"bytes 3-{len(BODY) - 1}/{len(BODY)}"})
    plan.existing(b"xyz")  # a partial of some other result
    plan.feed(BODY[3:])
    assert plan.finish("out") == Again()
    assert range_header(plan) is None
    plan.opened(200, {})
    plan.feed(BODY[:-1])
    with pytest.raises(DownloadError, match="expected"):
        plan.finish("out")


def test_an_interrupted_body_resumes_from_what_was_written() -> None:
    plan = DownloadPlan("j", expected_size=len(BODY))
    assert "If-Range" not in headers_of(plan)
    plan.opened(200, {"content-length": str(len(BODY)), "etag": '"v1"'})
    plan.feed(BODY[:500])
    plan.failed("ReadError", 0.0)
    # The resume names the copy it continues: a different one is sent whole (200), not spliced.
    assert headers_of(plan) == {
        "Accept-Encoding": "identity",
        "Range": "bytes=500-",
        "If-Range": '"v1"',
    }
    rest = {"content-range": f"bytes 500-{len(BODY) - 1}/{len(BODY)}", "etag": '"v1"'}
    assert plan.opened(206, rest) == Write(500, rehash=False)
    plan.feed(BODY[500:])
    plan.ended()
    assert plan.next_call(0.0) is None
    assert plan.download == Download("", len(BODY), SHA, 500, 206)


def test_if_range_names_the_stored_copy_and_never_a_weak_tag() -> None:
    plan = DownloadPlan("j", partial=10, expected_sha256=SHA)
    assert headers_of(plan)["If-Range"] == f'"{SHA}"'
    weak = DownloadPlan("j")
    weak.opened(200, {"etag": 'W/"x"'})
    weak.feed(b"abc")
    weak.failed("ReadError", 0.0)
    assert "If-Range" not in headers_of(weak)
    # A 206 of another tag than the download's: start over rather than splice.
    other = DownloadPlan("j")
    other.opened(200, {"etag": '"v1"'})
    other.feed(b"abc")
    other.failed("ReadError", 0.0)
    assert other.opened(206, {"content-range": "bytes 3-9/10", "etag": '"v2"'}) == Again()
    # If-Range no longer matching: the server sends it all, and the download starts over.
    moved = DownloadPlan("j")
    moved.opened(200, {"etag": '"v1"'})
    moved.feed(b"abc")
    moved.failed("ReadError", 0.0)
    assert moved.opened(200, {"etag": '"v2"', "content-length": "4"}) == Write(0, rehash=False)
    assert moved.resumed_from == 0
    moved.feed(b"abcd")
    moved.failed("ReadError", 0.0)
    assert headers_of(moved)["If-Range"] == '"v2"'


def test_a_mismatch_after_a_cut_starts_over_instead_of_raising() -> None:
    plan = DownloadPlan("j", expected_sha256=SHA)
    plan.opened(200, {"content-length": str(len(BODY))})
    plan.feed(BODY[:100])
    plan.failed("ReadError", 0.0)
    plan.opened(206, {"content-range": f"bytes 100-{len(BODY) - 1}/{len(BODY)}"})
    plan.feed(b"X" * (len(BODY) - 100))  # bytes of something else
    plan.ended()
    assert plan.download is None
    assert range_header(plan) is None  # from byte 0 again


def test_the_retry_budget_counts_failures_without_progress() -> None:
    plan = DownloadPlan("j", policy=RetryPolicy(max_retries=2))
    plan.next_call(0.0)
    plan.opened(200, {"content-length": "1000"})
    for cut in range(10):  # ten cuts, each after new bytes: it goes on
        plan.feed(b"x" * 10)
        assert isinstance(plan.failed("ReadError", 0.0), Retry), cut
        plan.next_call(0.0)
    plan.failed("ConnectError", 0.0)  # a second failure in a row without bytes
    with pytest.raises(GatewayUnreachable):
        plan.failed("ConnectError", 0.0)


def test_a_download_waits_for_its_result_as_long_polls() -> None:
    plan = DownloadPlan("j", wait=100, now=0.0)
    call = plan.next_call(0.0)
    assert call is not None
    assert dict(call.params) == {"wait": "30"}
    not_ready = answer(409, problem(409, "result_not_ready", state="running"))
    assert plan.refused(not_ready, NOW, 30.0) == Retry(0.0)
    call = plan.next_call(90.0)
    assert call is not None
    assert dict(call.params) == {"wait": "10"}
    with pytest.raises(Conflict):
        plan.refused(not_ready, NOW, 100.0)
    busy = answer(503, problem(503, "upstream_unavailable"), {"Retry-After": "1"})
    assert DownloadPlan("j").refused(busy, NOW, 0.0) == Retry(1.0)


def test_expectations_come_from_a_stored_whole_copy_only() -> None:
    stored = {"stored": True, "kind": "pointer", "size": 5, "sha256": "ab"}
    summary = {**job()["result"], **stored}
    assert DownloadPlan.expectations(
        StateEventData.model_validate({**job(result=summary), "job_id": "j", "from": "running"})
    ) == (5, "ab")
    paged = {**summary, "kind": "paged"}
    assert DownloadPlan.expectations(
        StateEventData.model_validate({**job(result=paged), "job_id": "j", "from": "running"})
    ) == (None, None)


# -- events ---------------------------------------------------------------------------------------


def frame(event_id: int | None, kind: str, data: dict[str, object]) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def state(event_id: int) -> bytes:
    return frame(event_id, "state", {**job("running"), "job_id": "job_1", "from": "queued"})


END = frame(None, "end", {"job_id": "job_1", "state": "succeeded", "reason": "finished"})


def test_events_are_typed_and_a_job_stream_ends_at_end() -> None:
    stream = EventStream("job_1")
    assert "Last-Event-ID" not in dict(stream.next_call().headers)
    events = stream.feed(state(5) + b": keep-alive\n\n" + END + state(6))
    assert [e.id for e in events] == [5, None]
    assert isinstance(events[0].data, StateEventData)
    assert isinstance(events[1].data, EndEventData)
    assert events[0].raw["from"] == "queued"
    assert stream.done


def test_a_reconnect_resumes_after_the_last_id_and_drops_repeats() -> None:
    stream = EventStream(None, provider=["pulse", "extract"], state="succeeded", rand=lambda: 1.0)
    assert dict(stream.next_call().params) == {"provider": "pulse,extract", "state": "succeeded"}
    assert [e.id for e in stream.feed(state(1) + state(2) + b"id: 3\nevent: st")] == [1, 2]
    delay = stream.dropped("ReadError", "http://gw")
    assert delay == 0.1
    assert dict(stream.next_call().headers)["Last-Event-ID"] == "2"
    assert stream.opened(200, "text/event-stream; charset=utf-8")
    # The server replays from 2 on; the half message from the dead connection is gone.
    assert [e.id for e in stream.feed(state(2) + state(3) + state(4))] == [3, 4]
    assert not stream.done


def test_reconnect_backoff_is_bounded_and_gives_up() -> None:
    stream = EventStream("j", max_reconnect_wait=0.5, max_reconnects=4, rand=lambda: 1.0)
    delays = [stream.dropped("ConnectError", "http://gw") for _ in range(4)]
    assert delays == [0.1, 0.2, 0.4, 0.5]
    with pytest.raises(GatewayUnreachable):
        stream.dropped("ConnectError", "http://gw")
    stream.feed(b": alive\n\n")  # a working connection resets the budget
    assert stream.dropped(None, "http://gw") == 0.1


def test_the_servers_advice_is_a_floor_up_to_a_bound() -> None:
    stream = EventStream("j", max_reconnect_wait=5.0, rand=lambda: 0.0)
    stream.feed(b"retry: 10000\n\n")
    # Above max_reconnect_wait, and still followed: never sooner than the server asked.
    assert stream.dropped(None, "http://gw") == 10.0
    busy = httpx.Response(503, content=b"down", headers={"Retry-After": "30"})
    assert stream.refused(busy, NOW) == 30.0
    huge = httpx.Response(429, content=b"slow down", headers={"Retry-After": "86400"})
    assert stream.refused(huge, NOW) == MAX_ADVISED_WAIT
    jittered = EventStream("j", rand=lambda: 1.0)
    jittered.feed(b"retry: 2000\n\n")
    assert jittered.dropped(None, "http://gw") == 2.5  # jitter only adds to the advice


def test_a_data_less_id_is_where_a_reconnect_resumes() -> None:
    stream = EventStream(None)
    assert stream.feed(b": hello\n\nid: 41\n\n") == []
    assert stream.last_id == 41
    stream.dropped("ReadError", "http://gw")
    assert dict(stream.next_call().headers)["Last-Event-ID"] == "41"  # type: ignore[union-attr]
    stream.opened(200, "text/event-stream")
    # An id whose message was cut off by the drop does not count.
    assert stream.feed(b"id: 40\n\n" + state(42)[:-1]) == []
    assert stream.last_id == 41
    stream.dropped("ReadError", "http://gw")
    assert dict(stream.next_call().headers)["Last-Event-ID"] == "41"  # type: ignore[union-attr]
    stream.opened(200, "text/event-stream")
    assert [e.id for e in stream.feed(state(42))] == [42]
    assert stream.last_id == 42


def test_event_data_tolerates_new_fields_but_not_broken_ones() -> None:
    stream = EventStream("job_1")
    newer = {**job("running"), "job_id": "job_1", "from": "queued", "shiny": True}
    (event,) = stream.feed(frame(7, "state", newer))
    assert isinstance(event.data, StateEventData)
    assert event.raw["shiny"] is True
    assert stream.feed(frame(8, "unheard_of", {"x": 1})) == []
    assert stream.last_id == 8
    with pytest.raises(UnexpectedAnswer) as caught:
        stream.feed(b'id: 9\nevent: state\ndata: {"job_id": 3}\n\n')
    assert "'state' event" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.__context__ is None
    with pytest.raises(UnexpectedAnswer):
        EventStream("j").feed(b"id: 1\nevent: end\ndata: not json\n\n")


def test_error_answers_raise_or_reconnect() -> None:
    stream = EventStream("j")
    gone = httpx.Response(
        404,
        content=orjson.dumps(
            {"type": "t", "title": "t", "status": 404, "detail": "d", "code": "job_not_found"}
        ),
        headers={"Content-Type": "application/problem+json"},
    )
    with pytest.raises(NotFound):
        stream.refused(gone, NOW)
    busy = httpx.Response(503, content=b"down", headers={"Retry-After": "1"})
    assert stream.refused(busy, NOW) == 1.25  # Retry-After (jittered up) over the 0.1 s base
    no_reconnect = EventStream("j", reconnect=False)
    assert no_reconnect.dropped(None, "http://gw") is None
    assert no_reconnect.done
    assert no_reconnect.next_call() is None
    with pytest.raises(GatewayUnreachable):
        EventStream("j", reconnect=False).dropped("ReadError", "http://gw")
    with pytest.raises(ValueError, match="filter"):
        EventStream("j", provider="pulse")
