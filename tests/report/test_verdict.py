"""The verdict over crafted recordings: each check grades its estimate's 95% interval against
its band, and says inconclusive (with how many more pairs) while the interval spans an edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.record.rows import Exchange, Response
from proxy.report.build import ReportFilter, build_report
from proxy.report.data import Report
from proxy.report.thresholds import Price, ReportSettings, Thresholds
from tests.report.test_build import SETTINGS, T0, check, ex, resp, write

EVEN = ReportSettings(
    pricing={"old": {"*": Price(input=1, output=1)}, "new": {"*": Price(input=1, output=1)}}
)
SAME_TOOL = '[{"name":"get_weather","keys":["city"],"valid":true}]'


def pairs_db(path: Path, n: int, **shadow: object) -> str:
    """n identical pairs, 100 ms and 50 + 50 tokens, but for `shadow`'s changes."""
    exchanges: list[Exchange] = []
    responses: list[Response] = []
    for i in range(n):
        x = ex(f"p{i}", T0 + i, model="m")
        exchanges.append(x)
        responses.append(resp(x, total=100, prompt=50, completion=50))
        responses.append(
            resp(x, "shadow", "new", **{"total": 100, "prompt": 50, "completion": 50, **shadow})
        )  # type: ignore[arg-type]
    return write(path, exchanges, responses)


def statuses(r: Report) -> dict[str, str]:
    return {c.name: c.status for c in r.verdicts[0].checks}


def test_a_copy_of_the_primary_passes_every_check_it_has_data_for(tmp_path: Path) -> None:
    r = build_report(pairs_db(tmp_path / "same.db", 400), ReportFilter(), EVEN)
    assert statuses(r) == {
        "errors": "pass",  # 0 in 400 on both sides: within +-0.95 pts
        "latency": "pass",
        "tokens": "pass",
        "cost": "pass",
        "output shape": "pass",
        "text agreement": "n/a",
        "streaming": "n/a",
        "tool calls": "n/a",
        "JSON output": "n/a",
        "quality": "n/a",  # nothing judged: `python -m proxy judge` was not run
    }
    assert r.verdict == "pass"
    errors = check(r, "errors")
    assert (errors.value, errors.n) == (0.0, 400)
    assert errors.high is not None and errors.low == -errors.high < 0.01 <= 3 * errors.high


def test_no_errors_in_30_pairs_is_inconclusive_and_says_how_many_more(tmp_path: Path) -> None:
    r = build_report(pairs_db(tmp_path / "few.db", 30), ReportFilter(), EVEN)
    errors = check(r, "errors")
    assert errors.status == "inconclusive"
    assert errors.more == 381 - 30  # 3.84 / (n + 3.84) < 0.01 from 381 pairs on
    assert r.verdict == "inconclusive"  # never "pass" while a check can still go either way


def test_every_pair_failing_fails_even_below_min_pairs(tmp_path: Path) -> None:
    db = pairs_db(tmp_path / "bad.db", 29, status=500, error_kind="http_5xx", shape="e")
    r = build_report(db, ReportFilter(), EVEN)
    assert check(r, "errors").status == "fail"  # 29 of 29: no more pairs needed
    assert check(r, "output shape").status == "fail"
    assert r.verdict == "fail"


def test_below_min_pairs_a_pass_is_held_back_as_inconclusive(tmp_path: Path) -> None:
    settings = ReportSettings(pricing=EVEN.pricing, thresholds=Thresholds(min_pairs=500))
    r = build_report(pairs_db(tmp_path / "v.db", 400), ReportFilter(), settings)
    tokens = check(r, "tokens")
    assert tokens.status == "inconclusive"
    assert tokens.note is not None and "fewer pairs than min_pairs (400 < 500)" in tokens.note
    assert tokens.more == 100


def test_token_and_cost_ratios_beyond_the_fail_band_fail(tmp_path: Path) -> None:
    r = build_report(pairs_db(tmp_path / "t.db", 100, completion=100), ReportFilter(), EVEN)
    tokens, cost = check(r, "tokens"), check(r, "cost")
    assert (tokens.status, tokens.value, tokens.low, tokens.high) == ("fail", 1.5, 1.5, 1.5)
    assert cost.status == "fail" and cost.value == pytest.approx(1.5)
    assert "over 100 pairs with usage on both sides" in tokens.evidence
    assert tokens.method == "bootstrap over pairs"


def latency_db(path: Path, n: int, primary: float, shadow: float, jitter: float = 0.0) -> str:
    exchanges, responses = [], []
    for i in range(n):
        x = ex(f"l{i}", T0 + i)
        wobble = jitter * ((i * 37) % 11 - 5) / 5  # deterministic, symmetric
        exchanges.append(x)
        responses.append(resp(x, total=primary + wobble))
        responses.append(resp(x, "shadow", "new", total=shadow - wobble))
    return write(path, exchanges, responses)


def test_a_slower_copy_by_a_few_ms_passes_however_large_the_ratio(tmp_path: Path) -> None:
    # The case: "total p50 12 ms vs 8.4 ms (x1.44)" is not a difference anyone feels.
    r = build_report(latency_db(tmp_path / "l.db", 200, 8.4, 12.0, 1.0), ReportFilter(), SETTINGS)
    latency = check(r, "latency")
    assert latency.value is not None and latency.value > 1.4
    assert latency.status == "pass"
    assert "a slowdown counts from 50 ms and 10%" in latency.evidence


def test_a_copy_felt_slower_beyond_doubt_fails_latency(tmp_path: Path) -> None:
    r = build_report(latency_db(tmp_path / "s.db", 200, 400, 900, 30), ReportFilter(), SETTINGS)
    latency = check(r, "latency")
    assert latency.status == "fail"
    assert latency.low is not None and latency.low >= 1.6
    assert latency.method == "sign-test interval of the medians"


def test_a_copy_slower_within_the_warn_band_warns(tmp_path: Path) -> None:
    r = build_report(latency_db(tmp_path / "w.db", 300, 400, 560, 10), ReportFilter(), SETTINGS)
    latency = check(r, "latency")
    assert latency.status == "warn"
    assert latency.value == pytest.approx(1.4, abs=0.05)


def test_stream_latency_is_time_to_first_token(tmp_path: Path) -> None:
    exchanges, responses = [], []
    for i in range(60):
        x = ex(f"s{i}", T0 + i, stream=True)
        exchanges.append(x)
        responses.append(resp(x, ttft=50, total=1000))
        responses.append(resp(x, "shadow", "new", ttft=400, total=1000))
    r = build_report(write(tmp_path / "t.db", exchanges, responses), ReportFilter(), SETTINGS)
    latency = check(r, "latency")
    assert (latency.status, latency.value) == ("fail", 8.0)
    assert "60 streams by time to first token, 0 others" in latency.evidence


def stream_tools_db(path: Path, n: int = 40) -> str:
    """n stream pairs: one shadow stream broken, 4 of the other tool calls disagree."""
    exchanges, responses = [], []
    for i in range(n):
        x = ex(f"s{i}", T0 + i, stream=True)
        exchanges.append(x)
        responses.append(resp(x, ttft=50, total=100, tool_calls=SAME_TOOL))
        if i == 0:
            shadow = resp(
                x, "shadow", "new", error_kind="broken_stream", stream_done=False,
                tool_calls=SAME_TOOL,
            )  # fmt: skip
        else:
            calls = {
                1: '[{"name":"get_weather","keys":["town"],"valid":true}]',
                2: '[{"name":"get_time","keys":["city"],"valid":true}]',
                3: '[{"name":"get_weather","keys":null,"valid":false}]',
                4: None,
            }.get(i, SAME_TOOL)
            shadow = resp(x, "shadow", "new", ttft=55, total=100, tool_calls=calls)
        responses.append(shadow)
    return write(path, exchanges, responses)


def test_streams_and_tool_calls_are_graded_on_their_intervals(tmp_path: Path) -> None:
    r = build_report(stream_tools_db(tmp_path / "s.db"), ReportFilter(), SETTINGS)
    streaming, tools = check(r, "streaming"), check(r, "tool calls")
    assert (streaming.status, streaming.value, streaming.n) == ("inconclusive", 1 / 40, 40)
    assert (tools.status, tools.value, tools.n) == ("inconclusive", 4 / 39, 39)
    assert tools.low is not None and tools.low > 0.02  # beyond warn already, fail still open
    # 10.3% against a fail band at 10%: even 100 times the pairs would still straddle it.
    assert tools.more is None
    assert tools.note is not None and "sits on a band edge" in tools.note
    assert streaming.more is not None and streaming.more > 0
    assert [e.exchange_id for e in r.examples if e.reason == "tool_calls"] == [
        "s1",
        "s2",
        "s3",
        "s4",
    ]
    big = build_report(stream_tools_db(tmp_path / "b.db", 1000), ReportFilter(), SETTINGS)
    assert check(big, "streaming").status == "pass"  # 1 in 1000: below 1% beyond doubt


def test_tool_calls_the_shadow_refused_count_against_the_tool_check(tmp_path: Path) -> None:
    exchanges, responses = [], []
    for i in range(50):
        x = ex(f"t{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x, tool_calls=SAME_TOOL))
        responses.append(
            resp(
                x,
                "shadow",
                "new",
                status=400,
                error_kind="http_4xx",
                shape="err",
                error="Function calling is not supported yet",
            )
        )
    r = build_report(write(tmp_path / "r.db", exchanges, responses), ReportFilter(), SETTINGS)
    tools = check(r, "tool calls")
    assert (tools.status, tools.value, tools.n) == ("fail", 1.0, 50)
    assert "refused by the shadow" in tools.evidence


def test_a_shadow_5xx_is_the_errors_check_not_the_tool_checks(tmp_path: Path) -> None:
    exchanges, responses = [], []
    for i in range(50):
        x = ex(f"t{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x, tool_calls=SAME_TOOL))
        responses.append(resp(x, "shadow", "new", status=503, error_kind="http_5xx"))
    r = build_report(write(tmp_path / "r.db", exchanges, responses), ReportFilter(), SETTINGS)
    assert check(r, "tool calls").status == "n/a"
    assert check(r, "errors").status == "fail"


def shape_db(path: Path, noise_pairs: int, noise_mismatches: int, n: int = 100) -> str:
    exchanges, responses = [], []
    for i in range(n):
        x = ex(f"n{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x))
        responses.append(resp(x, "shadow", "new", shape="other" if i < n // 10 else "s"))
        if i < noise_pairs:
            responses.append(
                resp(x, "noise", "old", shape="other" if i < noise_mismatches else "s")
            )
    return write(path, exchanges, responses)


def test_output_shape_subtracts_the_noise_floor_with_its_uncertainty(tmp_path: Path) -> None:
    shape = check(
        build_report(shape_db(tmp_path / "a.db", 40, 3), ReportFilter(), SETTINGS), "output shape"
    )
    assert shape.value == pytest.approx(0.10 - 3 / 40)
    assert (shape.unit, shape.method) == ("difference", "Newcombe, less the noise floor")
    assert shape.status == "inconclusive"
    assert "less the noise floor: 3 of 40 noise pairs differ (7.5%)" in shape.evidence


def test_output_shape_without_noise_pairs_is_not_discounted_and_says_so(tmp_path: Path) -> None:
    none = build_report(shape_db(tmp_path / "c.db", 0, 0, n=300), ReportFilter(), SETTINGS)
    shape = check(none, "output shape")
    assert (shape.status, shape.value, shape.method) == ("fail", 0.10, "Wilson")
    assert shape.note is not None and "not discounted" in shape.note
    assert any("No noise pairs" in n for n in none.notes)


def text_db(path: Path, n: int, noise: int, noise_differ: int) -> str:
    exchanges, responses = [], []
    for i in range(n):
        x = ex(f"x{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x, text=f"answer {i}"))
        responses.append(resp(x, "shadow", "new", text=f"reworded {i}"))
        if i < noise:
            responses.append(resp(x, "noise", "old", text=f"other {i}" if i < noise_differ else f"answer {i}"))  # fmt: skip
    return write(path, exchanges, responses)


def test_text_that_differs_only_as_the_primary_differs_from_itself_is_no_fail(
    tmp_path: Path,
) -> None:
    sampled = build_report(text_db(tmp_path / "a.db", 200, 100, 100), ReportFilter(), SETTINGS)
    assert check(sampled, "text agreement").status == "pass"  # 100% vs 100%: no excess
    steady = build_report(text_db(tmp_path / "b.db", 200, 100, 0), ReportFilter(), SETTINGS)
    # The primary never rewords, the shadow always does: worth a look, not a failure (two
    # models never word alike; the judge says whether the answers are worse).
    worded = check(steady, "text agreement")
    assert worded.status == "warn" and "warn at most" in (worded.note or "")


def test_text_without_noise_pairs_can_pass_but_never_fail(tmp_path: Path) -> None:
    r = build_report(text_db(tmp_path / "c.db", 200, 0, 0), ReportFilter(), SETTINGS)
    text = check(r, "text agreement")
    assert (text.status, text.value, text.more) == ("inconclusive", 1.0, None)
    assert text.note is not None and "only a pass is graded" in text.note


def test_json_output_is_discounted_by_the_noise_copies_own_failures(tmp_path: Path) -> None:
    exchanges, responses = [], []
    for i in range(200):
        x = ex(f"j{i}", T0 + i)
        exchanges.append(x)
        responses.append(resp(x, json_ok=True))
        responses.append(resp(x, "shadow", "new", json_ok=i % 10 != 0))
        responses.append(resp(x, "noise", "old", json_ok=i % 10 != 0))
    r = build_report(write(tmp_path / "j.db", exchanges, responses), ReportFilter(), SETTINGS)
    json_check = check(r, "JSON output")
    assert json_check.value == pytest.approx(0.0)
    assert json_check.status != "fail"
    assert "less the noise floor: 20 of 200 noise answers don't parse" in json_check.evidence
