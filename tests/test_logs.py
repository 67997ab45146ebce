"""The log sink: one JSON line per request, and a reader that went away breaks nothing."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator

import orjson
import pytest

from proxy import logs


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    monkeypatch.setattr(logs, "SINK", logs.Sink(out))
    yield out
    logs.configure("info")


def test_the_request_line_has_structlogs_fields_in_its_order(sink: io.BytesIO) -> None:
    logs.configure("info")
    logs.request("req_1", "default", "old", None, 200, 1.5)
    line = orjson.loads(sink.getvalue())
    assert list(line) == [
        *("request_id", "route", "upstream", "model", "status", "ms"),
        *("event", "level", "timestamp"),
    ]
    assert line["event"] == "request" and line["level"] == "info" and line["model"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


def test_a_level_above_info_hides_the_request_lines(sink: io.BytesIO) -> None:
    logs.configure("warning")
    logs.request("req_1", "default", "old", "m", 200, 1.5)
    assert sink.getvalue() == b""


def test_a_closed_reader_is_counted_not_raised() -> None:
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as f:
        sink = logs.Sink(f)
        sink.msg(b"{}")  # EPIPE: the descriptor is pointed at /dev/null from here
        sink.msg(b"{}")
    assert sink.dropped == 2
