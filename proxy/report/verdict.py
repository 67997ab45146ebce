"""The verdict: each shadowed upstream's checks graded against `report.thresholds`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from proxy.report.data import (
    Agreement,
    Check,
    PairStats,
    Status,
    Unit,
    UpstreamStats,
    Verdict,
    ratio,
)
from proxy.report.text import money, ms, pct, times
from proxy.report.thresholds import Band, ReportSettings

_ORDER: Final[dict[str, int]] = {"n/a": 0, "pass": 1, "warn": 2, "fail": 3}


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of the statuses; "n/a" when there are none."""
    return max(statuses, key=_ORDER.__getitem__, default="n/a")


@dataclass(frozen=True, slots=True)
class _Figure:
    """What one check measured: the value to grade, how many items it rests on, and why."""

    value: float | None
    n: int
    evidence: str
    note: str | None = None
    what: str = "pairs"  # what `n` counts, for the note when there are too few


def _grade(name: str, unit: Unit, band: Band, min_n: int, figure: _Figure) -> Check:
    """Smaller is better: pass below `warn`, warn below `fail`, fail from `fail` on."""
    value, n, evidence, note = figure.value, figure.n, figure.evidence, figure.note
    if value is None or n == 0:
        return Check(name, "n/a", None, unit, band.warn, band.fail, n, evidence, note)
    status: Status = "pass" if value < band.warn else "warn" if value < band.fail else "fail"
    if n < min_n:
        # Too few to tell either way: never a pass, never a fail.
        alone = f"; the figure alone would {status}" if status != "warn" else ""
        few = f"not enough {figure.what} ({n:,} < min_pairs {min_n}){alone}"
        note = f"{few}; {note}" if note else few
        status = "warn"
    return Check(name, status, value, unit, band.warn, band.fail, n, evidence, note)


def _failing_share(total: int, ok: int, ok_says: str, none_says: str, what: str) -> _Figure:
    """The share of `total` items that were not `ok`."""
    return _Figure(
        (total - ok) / total if total else None,
        total,
        f"{ok:,} of {total:,} {ok_says}" if total else none_says,
        what=what,
    )


def _shortfall(a: Agreement) -> float | None:
    # (compared - agree) / compared, not 1 - rate: a band edge like 0.05 must compare exactly.
    return (a.compared - a.agree) / a.compared if a.compared else None


def _per_1k(cost: float | None, n: int) -> float | None:
    return cost / n * 1000 if cost is not None and n else None


def judge(
    pair: PairStats, shadow: UpstreamStats | None, noise: PairStats | None, settings: ReportSettings
) -> Verdict:
    """One shadowed upstream judged on its pairs, its own answers and the noise floor."""
    t = settings.thresholds
    m = t.min_pairs
    checks = (
        _grade("errors", "difference", t.errors, m, _errors(pair)),
        _grade("latency", "ratio", t.latency_ratio, m, _latency(pair)),
        _grade("tokens", "ratio", t.token_ratio, m, _tokens(pair)),
        _grade("cost", "ratio", t.cost_ratio, m, _cost(pair)),
        _grade("output shape", "share", t.shape_mismatch, m, _output_shape(pair, noise, m)),
        _grade("streaming", "share", t.stream_broken, m, _streaming(shadow)),
        _grade("tool calls", "share", t.tool_call_mismatch, m, _tool_calls(pair)),
        _grade("JSON output", "share", t.json_invalid, m, _json_output(shadow)),
    )
    return Verdict(pair.upstream, worst(c.status for c in checks), checks)


def _errors(pair: PairStats) -> _Figure:
    """Shadow minus primary upstream-error rate."""
    err = None
    if pair.other_error_rate is not None and pair.primary_error_rate is not None:
        err = pair.other_error_rate - pair.primary_error_rate
    return _Figure(
        err,
        pair.pairs,
        f"shadow {pct(pair.other_error_rate, 2)} vs primary {pct(pair.primary_error_rate, 2)} "
        f"upstream errors over {pair.pairs:,} pairs",
    )


def _latency(pair: PairStats) -> _Figure:
    """The worst shadow/primary ratio of p50 and p90, time to first token and total."""
    ratios = []
    parts = []
    for label, prim, other in (
        ("ttft", pair.primary_ttft_ms, pair.other_ttft_ms),
        ("total", pair.primary_total_ms, pair.other_total_ms),
    ):
        for p in ("p50", "p90"):
            r = ratio(getattr(other, p), getattr(prim, p))
            if r is not None:
                ratios.append(r)
                parts.append(
                    f"{label} {p} {ms(getattr(other, p))} vs {ms(getattr(prim, p))} ({times(r)})"
                )
    return _Figure(
        max(ratios, default=None),
        pair.primary_ttft_ms.n + pair.primary_total_ms.n,
        ("; ".join(parts) + " - ttft for streams, total for the rest")
        if parts
        else "no pairs where both answered",
    )


def _tokens(pair: PairStats) -> _Figure:
    """Shadow/primary total tokens over the pairs with usage on both sides."""
    p_tok, o_tok = pair.primary_tokens, pair.other_tokens
    token_ratio = ratio(o_tok[2], p_tok[2])
    return _Figure(
        token_ratio,
        pair.usage_pairs,
        f"shadow/primary: prompt {times(ratio(o_tok[0], p_tok[0]))}, completion "
        f"{times(ratio(o_tok[1], p_tok[1]))}, total {times(token_ratio)} over "
        f"{pair.usage_pairs:,} pairs with usage on both sides",
    )


def _cost(pair: PairStats) -> _Figure:
    """Shadow/primary cost over the pairs priced on both sides."""
    k = pair.priced_pairs
    return _Figure(
        ratio(pair.other_cost, pair.primary_cost),
        k,
        f"per 1,000 requests {money(_per_1k(pair.other_cost, k))} vs "
        f"{money(_per_1k(pair.primary_cost, k))} over {k:,} priced pairs"
        if k
        else "no pair priced on both sides: add both upstreams to report.pricing",
    )


def _output_shape(pair: PairStats, noise: PairStats | None, min_pairs: int) -> _Figure:
    """Pairs differing in status class or shape, less the noise floor once it rests on enough."""
    n = pair.pairs
    mismatch = _shortfall(pair.status_shape)
    note = None
    evidence = f"{pct(pair.status_shape.rate)} of {n:,} pairs have the same status class and shape"
    if mismatch is not None and noise is not None and noise.status_shape.rate is not None:
        floor = (noise.pairs - noise.status_shape.agree) / noise.pairs
        if noise.pairs >= min_pairs:
            note = (
                f"noise floor {pct(floor)} subtracted: the primary disagrees with itself "
                f"that often over {noise.pairs:,} noise pairs"
            )
            evidence += f" ({pct(mismatch)} differ, minus the noise floor {pct(floor)})"
            mismatch = max(mismatch - floor, 0.0)
        else:
            note = f"noise floor {pct(floor)} not subtracted: only {noise.pairs} noise pairs"
    return _Figure(mismatch, n, evidence, note)


def _streaming(shadow: UpstreamStats | None) -> _Figure:
    return _failing_share(
        shadow.streams if shadow else 0,
        shadow.streams_ok if shadow else 0,
        "shadow streams ended with [DONE] and usage",
        "no shadow streams",
        "streams",
    )


def _tool_calls(pair: PairStats) -> _Figure:
    tools = pair.tool_calls
    return _Figure(
        _shortfall(tools),
        tools.compared,
        f"{tools.agree:,} of {tools.compared:,} pairs with tool calls agree on names and "
        "argument keys, with valid arguments"
        if tools.compared
        else "no tool calls in the pairs",
    )


def _json_output(shadow: UpstreamStats | None) -> _Figure:
    return _failing_share(
        shadow.json_answers if shadow else 0,
        shadow.json_ok if shadow else 0,
        "shadow JSON-mode answers parse",
        "no JSON-mode answers from the shadow",
        "answers",
    )
