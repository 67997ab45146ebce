"""Server-Sent Events: cut a byte stream into events without changing a byte.

Pure: no I/O, no clock. The relay writes each `Event.raw` through as it arrives and hands
the same event to a `tally.StreamTally`, which reads what the stream said.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"[\r\n]")
_EOL_BYTES = (0x0D, 0x0A)
# Leftmost alternation takes "\r\n" as one line ending before trying a lone "\r".
_LINE_SPLIT = re.compile(rb"\r\n|\r|\n")
# An event held back longer than this is let go as it is (see `SSEDecoder`).
MAX_EVENT = 32 * 1024 * 1024


class Event(NamedTuple):
    """One SSE event. `raw` ends with its blank line, so joining every `raw` rebuilds the stream.

    A named tuple: built in C, where a frozen dataclass sets each field through
    `object.__setattr__` (a third of the decoder's time per event).
    """

    raw: bytes
    data: bytes | None  # data lines joined with b"\n"; None when the event had no data line
    event: str | None  # the `event:` field, if any


def _event_of(raw: bytes, lines: list[bytes]) -> Event:
    data: list[bytes] | None = None
    name: str | None = None
    for line in lines:
        if not line or line[0] == 0x3A:  # blank, or a ":" comment
            continue
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            if data is None:
                data = [value]
            else:
                data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return Event(raw, None if data is None else b"\n".join(data), name)


class SSEDecoder:
    """Incremental SSE framing: `feed` returns whole events only and keeps the partial tail.

    Blank lines that end no event (extra separators, keep-alive newlines) and a leading
    byte-order mark come back as events of their own with no fields, so that the
    concatenated `raw` of everything returned is exactly the input.
    """

    __slots__ = ("_held", "_held_size", "_last", "_max", "_resume", "_started", "_tail")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._tail = b""
        # Where the separator search may restart in the tail: the tail holds no complete
        # event, so only its last few bytes can begin a separator.
        self._resume = 0
        self._started = False
        # Reads that came after the tail and end no event, not yet joined to it: joining every
        # read of a large event (an image's base64, a long tool call) to the tail copied it
        # again each time, and 32 MB in 16 KB reads held the event loop for 38 s.
        self._held: list[bytes] = []
        self._held_size = 0
        self._last = b""  # the last 3 bytes of tail and held reads, where a separator may begin
        self._max = max_event

    def feed(self, chunk: bytes) -> list[Event]:
        # The usual read of a paced stream: exactly one `data:` line and its blank line.
        end = len(chunk) - 2
        if (
            self._started
            and not self._tail
            and chunk.startswith(b"data:")
            and chunk.find(b"\n") == end
            and chunk[-1] == 0x0A
            and b"\r" not in chunk
        ):
            return [Event(chunk, chunk[6 if chunk[5:6] == b" " else 5 : end], None)]
        if self._tail and self._started:
            # An event ends at a blank line, and every blank line after the first line holds
            # "\n\n", "\r\r" or "\n\r" (whatever the line endings). A read without one ends
            # nothing, unless the tail is itself a blank line (a lone "\r" waiting for "\n").
            edge = self._last + chunk[:3]
            if self._tail[0] not in _EOL_BYTES and not (_may_end(chunk) or _may_end(edge)):
                self._held.append(chunk)
                self._held_size += len(chunk)
                self._last = edge[-3:] if len(chunk) < 3 else chunk[-3:]
                if len(self._tail) + self._held_size > self._max:
                    return [self._let_go()]
                return []
            if self._held:
                self._resume = max(0, len(self._tail) + self._held_size - 3)
                buf = b"".join([self._tail, *self._held, chunk])
                self._held = []
                self._held_size = 0
            else:
                buf = self._tail + chunk
        else:
            buf = self._tail + chunk if self._tail else chunk  # the start of a byte-order mark
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._tail = buf  # perhaps the start of a byte-order mark: wait for more
                return []
            self._started = True
            if buf.startswith(_BOM):
                self._tail = b""
                self._resume = 0
                return [Event(_BOM, None, None), *self.feed(buf[3:])]
        if b"\r" not in buf:
            return self._split(buf, b"\n", b"\n\n")
        # Pure CRLF (as sse-starlette writes by default) is a fast path too; a buffer that
        # ends in "\r" fails this test, since its "\n" may still be on the way.
        n_cr = buf.count(b"\r")
        if n_cr == buf.count(b"\n") == buf.count(b"\r\n"):
            return self._split(buf, b"\r\n", b"\r\n\r\n")
        return self._split_mixed(buf)

    def _let_go(self) -> Event:
        """An event over `max_event` bytes that has not ended: its bytes go on unread, as an
        event without fields, so that memory stays bounded and the relay stays byte-exact.
        The rest of it reads as a field-less event too, up to its blank line."""
        raw = b"".join([self._tail, *self._held])
        self._tail = self._last = b""
        self._held = []
        self._held_size = self._resume = 0
        return Event(raw, None, None)

    def flush(self) -> list[Event]:
        """At end of stream: whatever is left, as one event (it was never terminated)."""
        tail = b"".join([self._tail, *self._held]) if self._held else self._tail
        self._tail = self._last = b""
        self._held = []
        self._held_size = self._resume = 0
        if not tail:
            return []
        return [_event_of(tail, _LINE_SPLIT.split(tail))]

    def _split(self, buf: bytes, eol: bytes, sep: bytes) -> list[Event]:
        # One line-ending style throughout. The end of an event's first line is one memchr;
        # when the blank line follows at once (the usual single `data:` line) the event is
        # sliced out there, else the separator is searched for from that line on.
        out: list[Event] = []
        find = buf.find
        mark = eol[0]
        width = len(eol)
        step = len(sep)
        size = len(buf)
        pos = 0
        search = self._resume
        while pos < size:
            end = find(mark, pos)
            if end < 0:
                break
            if end == pos:  # a blank line ending no event
                nxt = pos + width
                out.append(Event(buf[pos:nxt], None, None))
            elif buf.startswith(sep, end):
                nxt = end + step
                if buf.startswith(b"data:", pos):
                    start = pos + 5
                    if start < end and buf[start] == 0x20:
                        start += 1
                    out.append(Event(buf[pos:nxt], buf[start:end], None))
                else:
                    out.append(_event_of(buf[pos:nxt], [buf[pos:end]]))
            else:
                end = find(sep, max(end, search))
                if end < 0:
                    break
                nxt = end + step
                out.append(_event_of(buf[pos:nxt], buf[pos:end].split(eol)))
            pos = search = nxt
        self._keep(buf, pos)
        if len(self._tail) > self._max:
            out.append(self._let_go())
        return out

    def _split_mixed(self, buf: bytes) -> list[Event]:
        # Any mix of "\n", "\r\n" and "\r": walk line by line. Rare, so the tail is simply
        # rescanned from its start on the next feed.
        out: list[Event] = []
        search = _EOL.search
        size = len(buf)
        pos = line = 0
        while (m := search(buf, line)) is not None:
            end = m.start()
            if buf[end] == 0x0D:
                if end + 1 == size:
                    break  # a "\r" at the very end: its "\n" may be in the next chunk
                nxt = end + 2 if buf[end + 1] == 0x0A else end + 1
            else:
                nxt = end + 1
            if end == line:  # a blank line ends the event
                out.append(_event_of(buf[pos:nxt], _LINE_SPLIT.split(buf[pos:end])))
                pos = nxt
            line = nxt
        self._keep(buf, pos)
        if len(self._tail) > self._max:
            out.append(self._let_go())
        return out

    def _keep(self, buf: bytes, pos: int) -> None:
        self._tail = tail = buf[pos:] if pos else buf
        # A separator is at most 4 bytes ("\r\n\r\n"), so it can start at most 3 back.
        self._resume = max(0, len(tail) - 3)
        self._last = tail[-3:]


def _may_end(data: bytes) -> bool:
    return b"\n\n" in data or b"\r\r" in data or b"\n\r" in data
