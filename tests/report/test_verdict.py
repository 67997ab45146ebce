"""The verdict over crafted recordings: each check passes, warns or fails as its band says."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.report.build import ReportFilter, build_report
from proxy.report.thresholds import Price, ReportSettings, Thresholds
from tests.report.test_build import SETTINGS, T0, check, ex, resp, write


def verdict_db(path: Path, n: int = 100) -> str:
    """n pairs: 1 shadow error, 10% slower, 50% more completion tokens, 1 of 40 JSON answers bad."""
    exchanges, responses = [], []
    for i in range(n):
        x = ex(f"v{i}", T0 + i, model="m")
        exchanges.append(x)
        responses.append(
            resp(x, total=100, prompt=50, completion=50, json_ok=True if i < 40 else None)
        )
        if i == n - 1:
            responses.append(
                resp(
                    x,
                    "shadow",
                    "new",
                    status=500,
                    error_kind="http_5xx",
                    shape="e",
                    prompt=None,
                    completion=None,
                )
            )
        else:
            responses.append(
                resp(
                    x,
                    "shadow",
                    "new",
                    total=110,
                    prompt=50,
                    completion=100,
                    json_ok=(i != 0) if i < 40 else None,
                )
            )
    return write(path, exchanges, responses)


EVEN = ReportSettings(
    pricing={"old": {"*": Price(input=1, output=1)}, "new": {"*": Price(input=1, output=1)}}
)


def test_verdict_rows_pass_warn_and_fail_against_the_bands(tmp_path: Path) -> None:
    r = build_report(verdict_db(tmp_path / "v.db"), ReportFilter(), EVEN)
    statuses = {c.name: (c.status, c.value) for c in r.verdicts[0].checks}
    assert statuses["errors"] == ("warn", 0.01)  # equal to `warn` warns
    assert statuses["latency"] == ("pass", 1.1)
    assert statuses["tokens"] == ("fail", 1.5)  # 150 / 100 tokens
    assert statuses["cost"] == ("fail", 1.5)  # the same dollars per token on both sides
    assert statuses["output shape"] == ("warn", 0.01)  # the failed shadow answer
    assert statuses["JSON output"] == ("warn", 1 / 40)
    assert statuses["streaming"] == ("n/a", None)
    assert statuses["tool calls"] == ("n/a", None)
    assert r.verdicts[0].status == r.verdict == "fail"
    assert "over 99 pairs with usage on both sides" in check(r, "tokens").evidence


def test_fewer_pairs_than_min_pairs_is_at_most_warn_and_says_so(tmp_path: Path) -> None:
    settings = ReportSettings(pricing=EVEN.pricing, thresholds=Thresholds(min_pairs=500))
    r = build_report(verdict_db(tmp_path / "v.db"), ReportFilter(), settings)
    tokens, latency = check(r, "tokens"), check(r, "latency")
    assert tokens.status == latency.status == "warn"
    assert tokens.note is not None and "not enough pairs (99 < min_pairs 500)" in tokens.note
    assert "would fail" in tokens.note
    assert latency.note is not None and "would pass" in latency.note
    assert r.verdict == "warn"


def stream_tools_db(path: Path) -> str:
    """40 stream pairs: one shadow stream broken, 4 of the other 39 tool calls disagree."""
    same = '[{"name":"get_weather","keys":["city"],"valid":true}]'
    exchanges, responses = [], []
    for i in range(40):
        x = ex(f"s{i}", T0 + i, stream=True)
        exchanges.append(x)
        responses.append(resp(x, ttft=50, total=100, tool_calls=same))
        if i == 0:
            shadow = resp(
                x, "shadow", "new", error_kind="broken_stream", stream_done=False, tool_calls=same
            )
        else:
            calls = {
                1: '[{"name":"get_weather","keys":["town"],"valid":true}]',
                2: '[{"name":"get_time","keys":["city"],"valid":true}]',
                3: '[{"name":"get_weather","keys":null,"valid":false}]',
                4: None,
            }.get(i, same)
            shadow = resp(x, "shadow", "new", ttft=80, total=100, tool_calls=calls)
        responses.append(shadow)
    return write(path, exchanges, responses)


def test_streams_tool_calls_and_ttft_are_checked(tmp_path: Path) -> None:
    r = build_report(stream_tools_db(tmp_path / "s.db"), ReportFilter(), SETTINGS)
    streaming, tools, latency = check(r, "streaming"), check(r, "tool calls"), check(r, "latency")
    assert (streaming.status, streaming.value, streaming.n) == ("warn", 1 / 40, 40)
    assert (tools.status, tools.value, tools.n) == ("fail", 4 / 39, 39)
    assert (latency.status, latency.value) == ("fail", 80 / 50)  # ttft counts for streams
    assert [e.exchange_id for e in r.examples if e.reason == "tool_calls"] == [
        "s1",
        "s2",
        "s3",
        "s4",
    ]


def shape_db(path: Path, noise_pairs: int, noise_mismatches: int) -> str:
    exchanges, responses = [], []
    for i in range(100):
        x = ex(f"n{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x))
        responses.append(resp(x, "shadow", "new", shape="other" if i < 10 else "s"))
        if i < noise_pairs:
            responses.append(
                resp(x, "noise", "old", shape="other" if i < noise_mismatches else "s")
            )
    return write(path, exchanges, responses)


def test_output_shape_subtracts_the_noise_floor(tmp_path: Path) -> None:
    shape = check(
        build_report(shape_db(tmp_path / "a.db", 40, 3), ReportFilter(), SETTINGS), "output shape"
    )
    assert shape.value == pytest.approx(0.10 - 3 / 40)
    assert shape.status == "warn"
    assert shape.note is not None and "noise floor 7.5% subtracted" in shape.note


def test_output_shape_without_enough_noise_pairs_is_not_discounted(tmp_path: Path) -> None:
    few = check(
        build_report(shape_db(tmp_path / "b.db", 20, 3), ReportFilter(), SETTINGS), "output shape"
    )
    assert (few.status, few.value) == ("fail", 0.10)
    assert few.note is not None and "not subtracted: only 20 noise pairs" in few.note
    none = build_report(shape_db(tmp_path / "c.db", 0, 0), ReportFilter(), SETTINGS)
    assert check(none, "output shape").value == 0.10
    assert any("No noise pairs" in n for n in none.notes)
