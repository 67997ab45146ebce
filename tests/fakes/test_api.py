"""The SSE framing the fakes' API shapes share, tested as plain functions."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fakes.api import DONE, data, pieces, truncated


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_stream_pieces_join_back_into_the_text(text: str, count: int) -> None:
    got = pieces(text, count)
    assert "".join(got) == text
    assert len(got) == min(count, len(text))


def test_stream_pieces_default_to_one_per_word_keeping_leading_spaces() -> None:
    assert pieces("Hello big world ", None) == ["Hello", " big", " world "]


def test_truncated_event_keeps_its_framing_but_breaks_its_json() -> None:
    whole = data({"choices": [{"delta": {"content": "Hello there"}}]})
    cut = truncated(whole)
    assert cut.startswith(b"data: {") and cut.endswith(b"\n\n") and len(cut) < len(whole)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut[6:])
    assert DONE == b"data: [DONE]\n\n"
