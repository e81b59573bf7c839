"""The download's Range/resume decisions and the event stream's reconnect rules, without I/O."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from gateway.web.models import EndEventData, StateEventData
from jobgate.client.download import Again, Complete, DownloadPlan, Write, parse_content_range
from jobgate.client.errors import DownloadError, GatewayUnreachable, NotFound
from jobgate.client.events import EventStream
from tests.unit.client.test_core import job

BODY = bytes(range(256)) * 40
SHA = hashlib.sha256(BODY).hexdigest()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def range_header(plan: DownloadPlan) -> str | None:
    return dict(plan.next_call().headers).get("Range")


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
    plan.opened(200, {"content-length": str(len(BODY))})
    plan.feed(BODY[:500])
    plan.interrupted()
    assert range_header(plan) == "bytes=500-"
    assert plan.opened(206, {"content-range": f"bytes 500-{len(BODY) - 1}/{len(BODY)}"}) == Write(
        500, rehash=False
    )


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


def test_the_servers_retry_field_sets_the_base_delay() -> None:
    stream = EventStream("j", rand=lambda: 0.0)
    stream.feed(b"retry: 2000\n\n")
    assert stream.dropped(None, "http://gw") == 1.0  # 2 s, jittered down to half


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
    assert stream.refused(busy, NOW) == 1.0  # Retry-After wins over the 0.1 s base
    no_reconnect = EventStream("j", reconnect=False)
    assert no_reconnect.dropped(None, "http://gw") is None
    assert no_reconnect.done
    with pytest.raises(GatewayUnreachable):
        EventStream("j", reconnect=False).dropped("ReadError", "http://gw")
    with pytest.raises(ValueError, match="filter"):
        EventStream("j", provider="pulse")
