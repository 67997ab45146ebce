"""Examples to look at: a shape mismatch shows the JSON paths where the answers part."""

from __future__ import annotations

from pathlib import Path

import orjson

from proxy.report.build import ReportFilter, build_report
from proxy.report.examples import shape_difference
from proxy.report.text import render_text
from tests.report.test_build import SETTINGS, T0, ex, resp, write

TEXT = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}  # fmt: skip
TOOL = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3}}  # fmt: skip


def test_shape_difference_names_a_missing_subtree_once_and_changed_values() -> None:
    paths = shape_difference(orjson.dumps(TOOL), orjson.dumps(TEXT))
    assert paths == (
        'choices[].finish_reason: "tool_calls" in the primary, "stop" in the copy',
        "choices[].message.content: only in the copy (str)",
        "choices[].message.tool_calls: only in the primary",
    )


def test_shape_difference_of_embeddings_is_their_dimension() -> None:
    def vectors(dims: int) -> bytes:
        return orjson.dumps({"object": "list", "data": [{"embedding": [0.1] * dims, "index": 0}]})

    assert shape_difference(vectors(1536), vectors(1024)) == (
        "data[].embedding: [num;1536] in the primary, [num;1024] in the copy",
    )


def test_shape_difference_without_bodies_is_empty() -> None:
    assert shape_difference(None, orjson.dumps(TEXT)) == ()
    assert shape_difference(b"not json", orjson.dumps(TEXT)) == ()


def test_a_shape_example_in_the_report_lists_the_paths(tmp_path: Path) -> None:
    x = ex("s0", T0)
    db = write(
        tmp_path / "s.db",
        [x],
        [
            resp(x, shape="tool", body=orjson.dumps(TOOL)),
            resp(x, "shadow", "new", shape="text", body=orjson.dumps(TEXT)),
        ],
    )
    r = build_report(db, ReportFilter(), SETTINGS)
    (example,) = [e for e in r.examples if e.reason == "shape"]
    assert "choices[].message.tool_calls: only in the primary" in example.paths
    assert "    choices[].message.tool_calls: only in the primary" in render_text(r)
