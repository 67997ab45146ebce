"""`sse`: framing a byte stream into events, byte for byte, however it is cut."""

from __future__ import annotations

import string
import time

from hypothesis import given
from hypothesis import strategies as st

from proxy.sse import Event, SSEDecoder


def decode(*chunks: bytes, max_event: int | None = None) -> list[Event]:
    decoder = SSEDecoder() if max_event is None else SSEDecoder(max_event)
    events = [ev for chunk in chunks for ev in decoder.feed(chunk)]
    return events + decoder.flush()


# --- framing -------------------------------------------------------------------------------


def test_single_data_line_event_keeps_its_raw_bytes() -> None:
    assert decode(b'data: {"a":1}\n\n') == [Event(b'data: {"a":1}\n\n', b'{"a":1}', None)]


def test_one_leading_space_is_stripped_from_a_value_and_only_one() -> None:
    events = decode(b"data:x\n\ndata:  y\n\n")
    assert [ev.data for ev in events] == [b"x", b" y"]


def test_data_lines_are_joined_with_newlines() -> None:
    (event,) = decode(b"data: a\ndata:\ndata: b\n\n")
    assert event.data == b"a\n\nb"


def test_a_bare_data_line_gives_empty_data() -> None:
    assert decode(b"data\n\n")[0].data == b""


def test_event_name_and_data_are_both_read() -> None:
    (event,) = decode(b'event: response.created\ndata: {"type":"response.created"}\n\n')
    assert event.event == "response.created"
    assert event.data == b'{"type":"response.created"}'


def test_comment_only_block_is_an_event_without_data() -> None:
    assert decode(b": keep-alive\n\n") == [Event(b": keep-alive\n\n", None, None)]


def test_comments_inside_an_event_are_not_data() -> None:
    (event,) = decode(b": hi\ndata: x\n: there\n\n")
    assert event.data == b"x"
    assert event.raw == b": hi\ndata: x\n: there\n\n"


def test_other_fields_are_kept_in_raw_but_ignored() -> None:
    (event,) = decode(b"id: 7\nretry: 1000\ndata: x\n\n")
    assert (event.data, event.event) == (b"x", None)


def test_crlf_line_endings() -> None:
    events = decode(b"event: e\r\ndata: a\r\n\r\ndata: b\r\n\r\n")
    assert [(ev.raw, ev.data, ev.event) for ev in events] == [
        (b"event: e\r\ndata: a\r\n\r\n", b"a", "e"),
        (b"data: b\r\n\r\n", b"b", None),
    ]


def test_lone_cr_line_endings() -> None:
    assert decode(b"data: a\rdata: b\r\rdata: c\r\r") == [
        Event(b"data: a\rdata: b\r\r", b"a\nb", None),
        Event(b"data: c\r\r", b"c", None),
    ]


def test_mixed_line_endings_in_one_stream() -> None:
    events = decode(b"data: a\r\n\ndata: b\n\r\ndata: c\r\n")
    assert [ev.data for ev in events] == [b"a", b"b", b"c"]
    assert b"".join(ev.raw for ev in events) == b"data: a\r\n\ndata: b\n\r\ndata: c\r\n"


def test_crlf_split_across_chunks_waits_for_the_next_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [
        Event(b"data: a\r\n\r\n", b"a", None),
        Event(b"data: b\r\n\r\n", b"b", None),
    ]


def test_cr_at_chunk_end_is_a_line_end_when_no_newline_follows() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.feed(b"data: b\r\r") == [Event(b"data: a\r\r", b"a", None)]
    assert decoder.flush() == [Event(b"data: b\r\r", b"b", None)]


def test_an_event_split_over_many_chunks_is_returned_once_complete() -> None:
    decoder = SSEDecoder()
    body = b'data: {"choices":[]}\n\n'
    out = [ev for i in range(len(body)) for ev in decoder.feed(body[i : i + 1])]
    assert out == [Event(body, b'{"choices":[]}', None)]


def test_stray_blank_lines_come_back_as_empty_events() -> None:
    events = decode(b"data: a\n\n\ndata: b\n\n")
    assert events == [
        Event(b"data: a\n\n", b"a", None),
        Event(b"\n", None, None),
        Event(b"data: b\n\n", b"b", None),
    ]


def test_flush_returns_the_unterminated_remainder() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: partial") == [Event(b"data: a\n\n", b"a", None)]
    assert decoder.flush() == [Event(b"data: partial", b"partial", None)]
    assert decoder.flush() == []


def test_flush_of_a_cleanly_ended_stream_is_empty() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: [DONE]\n\n")
    assert decoder.flush() == []


def test_leading_byte_order_mark_is_its_own_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.feed(b"\xbfdata: a\n\n") == [
        Event(b"\xef\xbb\xbf", None, None),
        Event(b"data: a\n\n", b"a", None),
    ]


def test_a_bom_later_in_the_stream_is_left_alone() -> None:
    events = decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    assert [ev.data for ev in events] == [b"a", None]


def test_a_large_event_in_many_small_reads_costs_linear_time() -> None:
    # Joining each read to the held tail copied it again every time: 24 MB in 2 KB reads
    # took most of a minute. A generous bound, only to say it did not hang.
    body = b'data: {"b64_json":"' + b"A" * (24 * 1024 * 1024) + b'"}\n\n'
    chunks = [body[i : i + 2048] for i in range(0, len(body), 2048)]
    started = time.perf_counter()
    events = decode(*chunks, b"data: [DONE]\n\n")
    assert time.perf_counter() - started < 20
    assert [ev.raw for ev in events] == [body, b"data: [DONE]\n\n"]
    assert events[0].data == body[6:-2]


def test_a_lone_cr_then_its_lf_in_the_next_read_is_one_blank_line() -> None:
    # Found by the chunking property below: the held-reads path took "\r" + "\ndata: " for
    # a read that ends nothing.
    assert decode(b"\r", b"\ndata: ") == [Event(b"\r\n", None, None), Event(b"data: ", b"", None)]
    assert decode(b"data: a\r\n\r", b"\nx") == [
        Event(b"data: a\r\n\r\n", b"a", None),
        Event(b"x", None, None),
    ]


def test_an_event_that_never_ends_is_let_go_past_the_limit() -> None:
    head = b"data: " + b"x" * 250  # no blank line: an upstream that never ends its event
    rest = b"yz\n\n"
    chunks = [head[i : i + 10] for i in range(0, len(head), 10)]
    events = decode(*chunks, rest, b"data: b\n\n", max_event=100)
    # Bytes go on as they came, held no longer than the limit; the event's remainder reads
    # as an event without data, and the stream is back in step at the next blank line.
    assert b"".join(ev.raw for ev in events) == head + rest + b"data: b\n\n"
    assert max(len(ev.raw) for ev in events) <= 110
    assert all(ev.data is None for ev in events[:-1])
    assert events[-1] == Event(b"data: b\n\n", b"b", None)


# --- framing properties --------------------------------------------------------------------

_EOLS = (b"\n", b"\r\n", b"\r")
_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=12,
).map(str.encode)
_names = st.text(alphabet=string.ascii_letters + "._", min_size=1, max_size=12)


@st.composite
def _block(draw: st.DrawFn, min_lines: int = 0) -> tuple[list[bytes], bytes | None, str | None]:
    """Field lines of one event with the data and event name a reader must find in them."""
    lines: list[bytes] = []
    data: list[bytes] = []
    name: str | None = None
    for _ in range(draw(st.integers(min_lines, 4))):
        kind = draw(st.sampled_from(["data", "data:", "data-bare", "comment", "event", "id"]))
        value = draw(_values)
        if kind == "data":
            lines.append(b"data: " + value)
            data.append(value)
        elif kind == "data:":
            lines.append(b"data:" + value)
            data.append(value[1:] if value.startswith(b" ") else value)
        elif kind == "data-bare":
            lines.append(b"data")
            data.append(b"")
        elif kind == "comment":
            lines.append(b":" + value)
        elif kind == "event":
            name = draw(_names)
            lines.append(b"event: " + name.encode())
        else:
            lines.append(b"id: " + value)
    return lines, (b"\n".join(data) if data else None), name


@st.composite
def _stream(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A serialised stream, with the events it holds, line endings drawn per line."""
    out = bytearray()
    expected: list[Event] = []

    def line(content: bytes, eol: bytes) -> None:
        # "\r" then an empty "\n" line would read as one "\r\n": make that blank line "\r".
        if not content and eol == b"\n" and out.endswith(b"\r"):
            eol = b"\r"
        out.extend(content + eol)

    for lines, data, name in draw(st.lists(_block(), max_size=6)):
        start = len(out)
        for content in lines:
            line(content, draw(st.sampled_from(_EOLS)))
        line(b"", draw(st.sampled_from(_EOLS)))
        expected.append(Event(bytes(out[start:]), data, name))
    if draw(st.booleans()):  # an unterminated last event, which flush must return
        lines, data, name = draw(_block(min_lines=1))
        start = len(out)
        for content in lines[:-1]:
            line(content, draw(st.sampled_from(_EOLS)))
        out.extend(lines[-1] + draw(st.sampled_from((b"", *_EOLS))))
        expected.append(Event(bytes(out[start:]), data, name))
    return bytes(out), expected


@given(_stream(), st.data())
def test_any_chunking_yields_the_same_events_and_bytes(
    stream: tuple[bytes, list[Event]], data: st.DataObject
) -> None:
    body, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    whole = decode(body)
    pieces = decode(*chunks)
    assert whole == expected
    assert pieces == expected
    assert b"".join(ev.raw for ev in pieces) == body


@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_are_relayed_unchanged(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    pieces = decode(*chunks)
    assert b"".join(ev.raw for ev in pieces) == body
    assert pieces == decode(body)
    # Whatever is let go at a limit, every byte still goes on, once and in order.
    assert b"".join(ev.raw for ev in decode(*chunks, max_event=16)) == body
