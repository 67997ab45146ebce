"""The verdict: each shadowed upstream's checks graded against `report.thresholds`."""

from __future__ import annotations

from collections.abc import Iterable
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


def _failing_share(
    name: str, total: int, ok: int, band: Band, ok_says: str, none_says: str, min_n: int, what: str
) -> Check:
    """A check on the share of `total` items that were not `ok`."""
    return _grade(
        name,
        (total - ok) / total if total else None,
        total,
        band,
        "share",
        f"{ok:,} of {total:,} {ok_says}" if total else none_says,
        min_n,
        what=what,
    )


def _grade(
    name: str,
    value: float | None,
    n: int,
    band: Band,
    unit: Unit,
    evidence: str,
    min_n: int,
    what: str = "pairs",
    note: str | None = None,
) -> Check:
    """Smaller is better: pass below `warn`, warn below `fail`, fail from `fail` on."""
    if value is None or n == 0:
        return Check(name, "n/a", None, unit, band.warn, band.fail, n, evidence, note)
    status: Status = "pass" if value < band.warn else "warn" if value < band.fail else "fail"
    if n < min_n:
        # Too few to tell either way: never a pass, never a fail.
        alone = f"; the figure alone would {status}" if status != "warn" else ""
        few = f"not enough {what} ({n:,} < min_pairs {min_n}){alone}"
        note = f"{few}; {note}" if note else few
        status = "warn"
    return Check(name, status, value, unit, band.warn, band.fail, n, evidence, note)


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
    n = pair.pairs
    checks = []

    err = None
    if pair.other_error_rate is not None and pair.primary_error_rate is not None:
        err = pair.other_error_rate - pair.primary_error_rate
    checks.append(
        _grade(
            "errors",
            err,
            n,
            t.errors,
            "difference",
            f"shadow {pct(pair.other_error_rate, 2)} vs primary {pct(pair.primary_error_rate, 2)} "
            f"upstream errors over {n:,} pairs",
            m,
        )
    )

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
    latency_n = pair.primary_ttft_ms.n + pair.primary_total_ms.n
    checks.append(
        _grade(
            "latency",
            max(ratios, default=None),
            latency_n,
            t.latency_ratio,
            "ratio",
            ("; ".join(parts) + " - ttft for streams, total for the rest")
            if parts
            else "no pairs where both answered",
            m,
        )
    )

    p_tok, o_tok = pair.primary_tokens, pair.other_tokens
    token_ratio = ratio(o_tok[2], p_tok[2])
    checks.append(
        _grade(
            "tokens",
            token_ratio,
            pair.usage_pairs,
            t.token_ratio,
            "ratio",
            f"shadow/primary: prompt {times(ratio(o_tok[0], p_tok[0]))}, completion "
            f"{times(ratio(o_tok[1], p_tok[1]))}, total {times(token_ratio)} over "
            f"{pair.usage_pairs:,} pairs with usage on both sides",
            m,
        )
    )

    cost_ratio = ratio(pair.other_cost, pair.primary_cost)
    k = pair.priced_pairs
    checks.append(
        _grade(
            "cost",
            cost_ratio,
            k,
            t.cost_ratio,
            "ratio",
            f"per 1,000 requests {money(_per_1k(pair.other_cost, k))} vs "
            f"{money(_per_1k(pair.primary_cost, k))} over {k:,} priced pairs"
            if k
            else "no pair priced on both sides: add both upstreams to report.pricing",
            m,
        )
    )

    mismatch = _shortfall(pair.status_shape)
    note = None
    evidence = f"{pct(pair.status_shape.rate)} of {n:,} pairs have the same status class and shape"
    if mismatch is not None and noise is not None and noise.status_shape.rate is not None:
        floor = (noise.pairs - noise.status_shape.agree) / noise.pairs
        if noise.pairs >= m:
            note = (
                f"noise floor {pct(floor)} subtracted: the primary disagrees with itself "
                f"that often over {noise.pairs:,} noise pairs"
            )
            evidence += f" ({pct(mismatch)} differ, minus the noise floor {pct(floor)})"
            mismatch = max(mismatch - floor, 0.0)
        else:
            note = f"noise floor {pct(floor)} not subtracted: only {noise.pairs} noise pairs"
    checks.append(
        _grade("output shape", mismatch, n, t.shape_mismatch, "share", evidence, m, note=note)
    )

    checks.append(
        _failing_share(
            "streaming",
            shadow.streams if shadow else 0,
            shadow.streams_ok if shadow else 0,
            t.stream_broken,
            "shadow streams ended with [DONE] and usage",
            "no shadow streams",
            m,
            "streams",
        )
    )

    tools = pair.tool_calls
    checks.append(
        _grade(
            "tool calls",
            _shortfall(tools),
            tools.compared,
            t.tool_call_mismatch,
            "share",
            f"{tools.agree:,} of {tools.compared:,} pairs with tool calls agree on names and "
            "argument keys, with valid arguments"
            if tools.compared
            else "no tool calls in the pairs",
            m,
        )
    )

    checks.append(
        _failing_share(
            "JSON output",
            shadow.json_answers if shadow else 0,
            shadow.json_ok if shadow else 0,
            t.json_invalid,
            "shadow JSON-mode answers parse",
            "no JSON-mode answers from the shadow",
            m,
            "answers",
        )
    )
    return Verdict(pair.upstream, worst(c.status for c in checks), tuple(checks))
