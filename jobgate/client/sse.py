"""A sans-I/O Server-Sent Events decoder (the WHATWG "event stream interpretation"): bytes in,
messages out, whatever the chunking. It knows nothing of sockets, reconnects or jobgate's events;
:mod:`jobgate.client.core` builds those on top.

Chunk boundaries fall anywhere: inside a UTF-8 sequence, between the ``\\r`` and ``\\n`` of a
CRLF, inside a field name. So bytes are buffered until a line ends, and a trailing ``\\r`` is held
back until the next byte says whether it was a CRLF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOM = "\ufeff"
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched message. ``id`` is the stream's last event id as of this message (the spec's
    semantics: an id persists until changed), ``has_id`` whether this message itself set one."""

    event: str
    data: str
    id: str | None
    has_id: bool


class SSEDecoder:
    """Feed it bytes with :meth:`feed`; it returns the messages completed so far.

    ``retry`` is the last valid ``retry:`` field, in milliseconds (the server's reconnect advice);
    ``last_event_id`` the last ``id:`` of a completed message (kept across messages, as
    EventSource does). An ``id:`` with no data still sets it once its blank line arrives (the
    spec sets the last event id before it drops a data-less message): a server can tell a new
    subscriber where the stream stands before any event. An ``id:`` of a message cut off by a
    dropped connection does not count: that message was never received.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._scanned = 0
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._has_id = False
        self._id: str | None = None
        """The id buffer: the message being received's id, committed at its blank line."""
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Message]:
        self._buffer += chunk
        messages: list[Message] = []
        for line in self._lines():
            message = self._line(line)
            if message is not None:
                messages.append(message)
        return messages

    def reset(self) -> None:
        """Forget a half-received message: the connection it came on is gone (the spec discards
        an incomplete message at the end of a stream). ``last_event_id`` and ``retry`` stay."""
        self._buffer = b""
        self._scanned = 0
        self._started = False
        self._event = ""
        self._data = []
        self._has_id = False
        self._id = self.last_event_id

    def _lines(self) -> list[str]:
        lines: list[str] = []
        buffer = self._buffer
        start = 0
        # Resume the search where the last feed stopped: a long line arriving in many small chunks
        # would otherwise be rescanned from its start at every chunk.
        for match in _EOL.finditer(buffer, self._scanned):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # the next chunk says whether this CR is half of a CRLF: hold it back
            lines.append(buffer[start : match.start()].decode("utf-8", "replace"))
            start = match.end()
        self._buffer = buffer[start:]
        held_cr = self._buffer.endswith(b"\r")
        self._scanned = len(self._buffer) - 1 if held_cr else len(self._buffer)
        if lines and not self._started:
            lines[0] = lines[0].removeprefix(_BOM)
            self._started = True
        return lines

    def _line(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alives
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:  # the spec ignores such ids
                self._id = value
                self._has_id = True
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        # Any other field is ignored, as the spec says.
        return None

    def _dispatch(self) -> Message | None:
        event, data, has_id = self._event, self._data, self._has_id
        self._event, self._data, self._has_id = "", [], False
        self.last_event_id = self._id
        if not data:
            # No data, no message; an ``id:`` alone still moved last_event_id.
            return None
        return Message(
            event=event or "message",
            data="\n".join(data),
            id=self.last_event_id,
            has_id=has_id,
        )
