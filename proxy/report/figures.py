"""The report's figures from its query rows: nearest-rank percentiles, chart sketches, and
the stats of one upstream or one pairing. Pure: `build` runs the SQL and hands the rows here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, get_args

import orjson

from proxy.record.rows import ErrorKind
from proxy.report.data import (
    Agreement,
    Count,
    PairStats,
    Percentiles,
    Similarity,
    UpstreamStats,
    ratio,
)

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


def _n(row: Sequence[Any], i: int) -> int:
    return int(row[i] or 0)


class PairSums:
    """One query's sums for (shadow or noise) copies against primaries; noise ones are pooled."""

    def __init__(self, role: str, upstream: str) -> None:
        self.role = role
        self.upstream = upstream
        self.counts = [0] * 17
        self.costs: list[float | None] = [None, None]
        self.values: list[list[int]] = [[] for _ in range(7)]
        self.examples: dict[str, list[int]] = {"status": [], "shape": [], "tool_calls": []}
        self.bodies: list[int] = []

    def add(self, row: Sequence[Any]) -> None:
        for i in range(17):
            self.counts[i] += _n(row, i)
        for i, value in enumerate(row[17:19]):
            if value is not None:
                self.costs[i] = (self.costs[i] or 0.0) + value
        for i in range(7):
            self.values[i] += ints(row[19 + i])
        for i, reason in enumerate(("status", "shape", "tool_calls")):
            self.examples[reason] += ints(row[26 + i])
        self.bodies += ints(row[29])


def upstream_stats(upstream: str, role: str, row: Sequence[Any]) -> UpstreamStats:
    n = _n(row, 0)
    kinds = Counter(row[3].split(",") if row[3] else ())
    ordered = [k for k in ERROR_KINDS if k in kinds] + sorted(
        k for k in kinds if k not in ERROR_KINDS
    )
    ttfb, ttft, total = (_sorted(row[i]) for i in (14, 15, 16))
    with_usage, priced, cost = _n(row, 4), _n(row, 8), row[9]
    cost = cost if priced else None
    return UpstreamStats(
        upstream=upstream,
        role=role,
        responses=n,
        succeeded=_n(row, 1),
        upstream_errors=_n(row, 2),
        error_rate=_n(row, 2) / n,
        errors=tuple(Count(k, kinds[k], kinds[k] / n) for k in ordered),
        ttfb_ms=_percentiles(ttfb),
        ttft_ms=_percentiles(ttft),
        total_ms=_percentiles(total),
        ttft_sketch=_sketch(ttft),
        total_sketch=_sketch(total),
        with_usage=with_usage,
        no_usage=n - with_usage,
        prompt_tokens=_n(row, 5),
        completion_tokens=_n(row, 6),
        total_tokens=_n(row, 7),
        priced=priced,
        cost=cost,
        cost_per_1k=cost / priced * 1000 if priced and cost is not None else None,
        streams=_n(row, 10),
        streams_ok=_n(row, 11),
        json_answers=_n(row, 12),
        json_ok=_n(row, 13),
    )


def pair_stats(raw: PairSums, scores: list[tuple[float, int]]) -> PairStats:
    c = raw.counts
    pairs = c[0]
    for v in raw.values:
        v.sort()
    values = raw.values
    sims = sorted(s for s, _ in scores)
    return PairStats(
        role=raw.role,
        upstream=raw.upstream,
        pairs=pairs,
        primary_error_rate=ratio(c[1], pairs),
        other_error_rate=ratio(c[2], pairs),
        status=_agreement(c[3], pairs),
        status_shape=_agreement(c[4], pairs),
        tool_calls=_agreement(c[6], c[5]),
        text=_agreement(c[8], c[7]),
        similarity=Similarity(
            len(sims),
            sum(sims) / len(sims) if sims else None,
            _rank(sims, 10) if sims else None,
        ),
        ttfb_diff_ms=_percentiles(values[0]),
        ttft_diff_ms=_percentiles(values[1]),
        total_diff_ms=_percentiles(values[2]),
        primary_ttft_ms=_percentiles(values[3]),
        other_ttft_ms=_percentiles(values[4]),
        primary_total_ms=_percentiles(values[5]),
        other_total_ms=_percentiles(values[6]),
        usage_pairs=c[9],
        primary_tokens=(c[10], c[11], c[12]),
        other_tokens=(c[13], c[14], c[15]),
        priced_pairs=c[16],
        primary_cost=raw.costs[0],
        other_cost=raw.costs[1],
    )
