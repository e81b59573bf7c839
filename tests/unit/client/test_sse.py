"""The SSE decoder fed in awkward pieces: every split of a stream gives the same messages."""

from __future__ import annotations

import pytest

from jobgate.client.sse import Message, SSEDecoder

STREAM = (
    "\ufeff: hello\r\n"
    "retry: 2500\r\n"
    "id: 7\r\n"
    "event: state\r\n"
    'data: {"a":1,\r\n'
    'data: "b":"é"}\r\n'
    "\r\n"
    ": keep-alive\n"
    "\n"
    "data: no event name\r"
    "\r"
    "id: 9\n"
    "\n"
    "event: end\n"
    "data:nospace\n"
    "unknown: field\n"
    "data\n"
    "\n"
).encode()

EXPECTED = [
    Message("state", '{"a":1,\n"b":"é"}', "7", True),
    Message("message", "no event name", "7", False),
    Message("end", "nospace\n", "9", False),
]


def decode(chunks: list[bytes]) -> tuple[list[Message], SSEDecoder]:
    decoder = SSEDecoder()
    messages: list[Message] = []
    for chunk in chunks:
        messages.extend(decoder.feed(chunk))
    return messages, decoder


def test_whole_stream() -> None:
    messages, decoder = decode([STREAM])
    assert messages == EXPECTED
    assert decoder.retry == 2500
    assert decoder.last_event_id == "9"  # an id alone moves it, without a message


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_chunking_gives_the_same_messages(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    messages, _ = decode(chunks)
    assert messages == EXPECTED


def test_every_split_point_including_inside_crlf_and_utf8() -> None:
    for cut in range(len(STREAM) + 1):
        messages, _ = decode([STREAM[:cut], STREAM[cut:]])
        assert messages == EXPECTED, cut


def test_a_cr_at_a_chunk_end_waits_for_the_next_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    # A CR then LF in the next chunk is one line end, not a line end and an empty line.
    assert decoder.feed(b"\ndata: y\r\n") == []
    assert decoder.feed(b"\r\n") == [Message("message", "x\ny", None, False)]


def test_an_incomplete_message_is_dropped_on_reset() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 3\n\nid: 4\ndata: half")
    assert decoder.last_event_id == "3"  # 4's message is not whole yet
    decoder.reset()
    # The cut message's id went with it: the stream stands at 3.
    assert decoder.feed(b"data: whole\n\n") == [Message("message", "whole", "3", False)]


def test_bad_retry_and_nul_ids_are_ignored() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: soon\nid: 1\x002\ndata: x\n\n")
    assert decoder.retry is None
    assert decoder.last_event_id is None


def test_only_the_first_bom_is_stripped() -> None:
    messages, _ = decode([b"\xef\xbb", b"\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"])
    assert [m.data for m in messages] == ["a"]  # a BOM later is part of a field name: ignored
