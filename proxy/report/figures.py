"""The report's figures from its query rows: nearest-rank percentiles, chart sketches, and
the stats of one upstream or one pairing. Pure: `build` runs the SQL and hands the rows here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, get_args

import orjson

from proxy.record.rows import ErrorKind
from proxy.report.data import (
    NO_ESTIMATE,
    Agreement,
    Count,
    Estimate,
    PairStats,
    Percentiles,
    Similarity,
    UpstreamStats,
    ratio,
)
from proxy.report.stats import Interval, median_interval, ratio_of_sums

ERROR_KINDS: Final[tuple[str, ...]] = get_args(ErrorKind)
SKETCH_POINTS: Final = 400  # evenly ranked values kept per latency distribution, for charts


def ints(joined: str | None) -> list[int]:
    """A group_concat of integers as a list; orjson parses it three times faster than int()."""
    return orjson.loads(f"[{joined}]") if joined else []


def _sorted(joined: str | None) -> list[int]:
    values = ints(joined)
    values.sort()
    return values


def _rank(values: Sequence[float], p: int) -> float:
    """Nearest-rank percentile of sorted values: the value at rank ceil(p/100 * n)."""
    return values[max(-(-p * len(values) // 100), 1) - 1]


def _percentiles(us_sorted: Sequence[int]) -> Percentiles:
    if not us_sorted:
        return Percentiles(0, None, None, None)
    p50, p90, p99 = (_rank(us_sorted, p) / 1000 for p in (50, 90, 99))
    return Percentiles(len(us_sorted), p50, p90, p99)


def _sketch(us_sorted: Sequence[int]) -> tuple[float, ...]:
    n = len(us_sorted)
    if n <= SKETCH_POINTS:
        return tuple(v / 1000 for v in us_sorted)
    last = SKETCH_POINTS - 1
    return tuple(us_sorted[i * (n - 1) // last] / 1000 for i in range(SKETCH_POINTS))


def _agreement(agree: int, compared: int) -> Agreement:
    return Agreement(agree, compared, ratio(agree, compared))


def _n(value: Any) -> int:
    return int(value or 0)


def floats(joined: str | None) -> list[float]:
    """A group_concat of numbers (REAL or integer) as a list of floats."""
    return [float(v) for v in orjson.loads(f"[{joined}]")] if joined else []


_COUNTS: Final = (
    "pairs", "p_errors", "s_errors", "both_errors", "same_class", "same_shape", "tools",
    "tools_same", "texts", "texts_same", "usage_pairs", "p_prompt", "p_completion", "p_tokens",
    "s_prompt", "s_completion", "s_tokens", "p_cached", "s_cached", "priced_pairs",
)  # fmt: skip
_LISTS: Final = (
    "ttfb_diff", "ttft_diff", "total_diff", "p_ttft", "s_ttft", "p_total", "s_total", "latency",
    "ex_status", "ex_shape", "ex_tool_calls", "bodies",
)  # fmt: skip


class PairSums:
    """One query's sums for (shadow or noise) copies against primaries; noise ones are pooled."""

    def __init__(self, role: str, upstream: str) -> None:
        self.role = role
        self.upstream = upstream
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.costs: dict[str, float | None] = {"p_cost": None, "s_cost": None}
        self.lists: dict[str, list[int]] = {name: [] for name in _LISTS}
        self.pairs: dict[str, list[float]] = {"token_pairs": [], "cost_pairs": []}

    def add(self, row: dict[str, Any]) -> None:
        for name in _COUNTS:
            self.counts[name] += _n(row[name])
        for name in self.costs:
            if row[name] is not None:
                self.costs[name] = (self.costs[name] or 0.0) + row[name]
        for name in _LISTS:
            self.lists[name] += ints(row[name])
        for name in self.pairs:
            self.pairs[name] += floats(row[name])

    @property
    def examples(self) -> dict[str, list[int]]:
        return {r: self.lists[f"ex_{r}"] for r in ("status", "shape", "tool_calls")}

    @property
    def bodies(self) -> list[int]:
        return self.lists["bodies"]


def upstream_stats(upstream: str, role: str, row: dict[str, Any]) -> UpstreamStats:
    n = _n(row["responses"])
    kinds = Counter(row["kinds"].split(",") if row["kinds"] else ())
    ordered = [k for k in ERROR_KINDS if k in kinds] + sorted(
        k for k in kinds if k not in ERROR_KINDS
    )
    ttfb, ttft, total = (_sorted(row[name]) for name in ("ttfb", "ttft", "total"))
    with_usage, priced, cost = _n(row["with_usage"]), _n(row["priced"]), row["cost"]
    cost = cost if priced else None
    return UpstreamStats(
        upstream=upstream,
        role=role,
        responses=n,
        succeeded=_n(row["ok"]),
        upstream_errors=_n(row["upstream_errors"]),
        error_rate=_n(row["upstream_errors"]) / n,
        errors=tuple(Count(k, kinds[k], kinds[k] / n) for k in ordered),
        ttfb_ms=_percentiles(ttfb),
        ttft_ms=_percentiles(ttft),
        total_ms=_percentiles(total),
        ttft_sketch=_sketch(ttft),
        total_sketch=_sketch(total),
        with_usage=with_usage,
        no_usage=n - with_usage,
        prompt_tokens=_n(row["prompt"]),
        completion_tokens=_n(row["completion"]),
        total_tokens=_n(row["tokens"]),
        cached_tokens=_n(row["cached"]),
        images=_n(row["images"]),
        priced=priced,
        cost=cost,
        cost_per_1k=cost / priced * 1000 if priced and cost is not None else None,
        streams=_n(row["streams"]),
        streams_ok=_n(row["streams_ok"]),
        json_answers=_n(row["json_answers"]),
        json_ok=_n(row["json_ok"]),
    )


def _estimate(value: float | None, interval: Interval | None, n: int) -> Estimate:
    if value is None:
        return Estimate(None, None, None, n)
    if interval is None:
        return Estimate(value, None, None, n)
    return Estimate(value, interval.low, interval.high, n)


def _median(values: list[float]) -> Estimate:
    if not values:
        return NO_ESTIMATE
    values.sort()
    mid, interval = median_interval(values)
    return _estimate(mid, interval, len(values))


def _latency(triples: list[int]) -> tuple[Estimate, Estimate, int]:
    """The median ratio and difference, copy against primary, over the pairs both timed."""
    ratios: list[float] = []
    diffs: list[float] = []
    streams = 0
    for i in range(0, len(triples) - 2, 3):
        primary, copy, stream = triples[i : i + 3]
        if primary <= 0:
            continue  # a zero time has no ratio; microseconds make it all but impossible
        ratios.append(copy / primary)
        diffs.append((copy - primary) / 1000)
        streams += stream
    return _median(ratios), _median(diffs), streams


def _ratio(flat: list[float]) -> Estimate:
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    found = ratio_of_sums(pairs)
    return NO_ESTIMATE if found is None else _estimate(found[0], found[1], len(pairs))


def pair_stats(raw: PairSums, scores: list[tuple[float, int]]) -> PairStats:
    c = raw.counts
    pairs = c["pairs"]
    values = {name: sorted(raw.lists[name]) for name in _LISTS[:7]}
    sims = sorted(s for s, _ in scores)
    ratio_ms, diff_ms, streams = _latency(raw.lists["latency"])
    return PairStats(
        role=raw.role,
        upstream=raw.upstream,
        pairs=pairs,
        primary_error_rate=ratio(c["p_errors"], pairs),
        other_error_rate=ratio(c["s_errors"], pairs),
        both_errors=c["both_errors"],
        status=_agreement(c["same_class"], pairs),
        status_shape=_agreement(c["same_shape"], pairs),
        tool_calls=_agreement(c["tools_same"], c["tools"]),
        text=_agreement(c["texts_same"], c["texts"]),
        similarity=Similarity(
            len(sims),
            sum(sims) / len(sims) if sims else None,
            _rank(sims, 10) if sims else None,
        ),
        ttfb_diff_ms=_percentiles(values["ttfb_diff"]),
        ttft_diff_ms=_percentiles(values["ttft_diff"]),
        total_diff_ms=_percentiles(values["total_diff"]),
        primary_ttft_ms=_percentiles(values["p_ttft"]),
        other_ttft_ms=_percentiles(values["s_ttft"]),
        primary_total_ms=_percentiles(values["p_total"]),
        other_total_ms=_percentiles(values["s_total"]),
        latency_ratio=ratio_ms,
        latency_diff_ms=diff_ms,
        latency_streams=streams,
        usage_pairs=c["usage_pairs"],
        primary_tokens=(c["p_prompt"], c["p_completion"], c["p_tokens"]),
        other_tokens=(c["s_prompt"], c["s_completion"], c["s_tokens"]),
        primary_cached=c["p_cached"],
        other_cached=c["s_cached"],
        token_ratio=_ratio(raw.pairs["token_pairs"]),
        priced_pairs=c["priced_pairs"],
        primary_cost=raw.costs["p_cost"],
        other_cost=raw.costs["s_cost"],
        cost_ratio=_ratio(raw.pairs["cost_pairs"]),
    )
