"""The report's figures from its query rows: nearest-rank percentiles, chart sketches, and
the stats of one upstream or one pairing. Pure: `build` runs the SQL and hands the rows here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, get_args

import orjson

from proxy.record import rollups
from proxy.record.rows import ErrorKind
from proxy.report import sql
from proxy.report.bins import Histogram, at_ranks
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
from proxy.report.stats import (
    BOOTSTRAP_MAX_PAIRS,
    Interval,
    Sums,
    median_interval,
    median_ranks,
    ratio_from_sums,
    ratio_of_sums,
)

ERROR_KINDS: Final[tuple[str, ...]] = get_args(ErrorKind)
SKETCH_POINTS: Final = 400  # evenly ranked values kept per latency distribution, for charts


def ints(joined: str | None) -> list[int]:
    """A group_concat of integers as a list; orjson parses it three times faster than int()."""
    return orjson.loads(f"[{joined}]") if joined else []


def _rank(values: Sequence[float], p: int) -> float:
    """Nearest-rank percentile of sorted values: the value at rank ceil(p/100 * n)."""
    return values[max(-(-p * len(values) // 100), 1) - 1]


def _ranks(n: int, ps: Sequence[int]) -> list[int]:
    return [max(-(-p * n // 100), 1) for p in ps]


def _percentiles(h: Histogram) -> Percentiles:
    n = h.n
    if not n:
        return Percentiles(0, None, None, None)
    p50, p90, p99 = at_ranks(h.ranked(), _ranks(n, (50, 90, 99)))
    return Percentiles(n, p50, p90, p99)


def _sketch(h: Histogram) -> tuple[float, ...]:
    n = h.n
    if not n:
        return ()
    points = min(n, SKETCH_POINTS)
    last = max(points - 1, 1)
    ranks = [i * (n - 1) // last + 1 for i in range(points)] if points > 1 else [1]
    return tuple(at_ranks(h.ranked(), ranks))


def _agreement(agree: int, compared: int) -> Agreement:
    return Agreement(agree, compared, ratio(agree, compared))


def _n(value: Any) -> int:
    return int(value or 0)


def floats(joined: str | None) -> list[float]:
    """A group_concat of numbers (REAL or integer) as a list of floats."""
    return [float(v) for v in orjson.loads(f"[{joined}]")] if joined else []


def _histogram(binned: bool) -> Histogram:
    # Exact values are integer microseconds; the report shows milliseconds.
    return Histogram(binned=binned, scale=1.0 if binned else 0.001)


_UPSTREAM_COUNTS: Final = (
    "responses", "ok", "upstream_errors", "with_usage", "prompt", "completion", "tokens",
    "cached", "images", "priced", "streams", "streams_ok", "json_answers", "json_ok",
)  # fmt: skip
_UPSTREAM_SUMS: Final = ("prompt", "completion", "tokens", "cached", "images", "priced")
# the counts read off an answer's flags (see rollups.OK), and the bit each one counts
_UPSTREAM_FLAGS: Final = (
    ("ok", rollups.OK), ("upstream_errors", rollups.UPSTREAM_ERROR), ("streams", rollups.STREAM),
    ("streams_ok", rollups.STREAM_OK), ("json_answers", rollups.JSON),
    ("json_ok", rollups.JSON_OK), ("with_usage", rollups.USAGE),
)  # fmt: skip
_UPSTREAM_LISTS: Final = ("ttfb", "ttft", "total")


def parsed(
    row: dict[str, Any], counted: tuple[str, ...], listed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A query's row with its lists parsed: `counted` ones into counts of each value, `listed`
    ones into lists. Done in the worker that read it, beside the other worker's SQL, rather
    than after both, on one core."""
    for name in counted:
        row[name] = Counter(ints(row[name]))
    for name in listed:
        row[name] = ints(row[name])
    return row


def parsed_answers(row: dict[str, Any]) -> dict[str, Any]:
    """`UpstreamSums.add`'s input from `sql.upstream_query`'s row: its lists as counts (what
    `minutes.answers` reads off the recording's minutes)."""
    row["kinds"] = Counter(row["kinds"].split(",")) if row["kinds"] else Counter()
    row["revisions"] = Counter(row["revisions"].split("\x1f")) if row["revisions"] else Counter()
    unpriced: Counter[tuple[str | None, bool, bool]] = Counter()
    for code in row["unpriced"].split("\x1f") if row["unpriced"] else ():
        model, flags = code.rsplit("\x1d", 1)
        unpriced[(None if model == "\x1e" else model, flags[0] == "1", flags[1] == "1")] += 1
    row["unpriced"] = unpriced
    return parsed(row, ("flags", *_UPSTREAM_LISTS))


def parsed_pairs(row: dict[str, Any]) -> dict[str, Any]:
    """`PairSums.add`'s input from `sql.copy_query`'s row (its pairs' columns)."""
    for kind in ("token", "cost"):
        row[f"{kind}_pairs"] = floats(row[f"{kind}_pairs"])
    return parsed(row, _PAIR_COUNTED, ("latency", "marks"))


class UpstreamSums:
    """One (upstream, role)'s figures, summed over the ranges and recordings it was read in."""

    def __init__(self, upstream: str, role: str, *, binned: bool) -> None:
        self.upstream = upstream
        self.role = role
        self.counts = dict.fromkeys(_UPSTREAM_COUNTS, 0)
        self.cost: float | None = None
        self.kinds: Counter[str] = Counter()
        self.latency = {name: _histogram(binned) for name in _UPSTREAM_LISTS}
        self.buckets: Counter[int] = Counter()
        self.error_buckets: Counter[int] = Counter()
        self.revisions: Counter[str] = Counter()
        self.unpriced: Counter[tuple[str | None, bool, bool]] = Counter()

    def add(self, row: dict[str, Any]) -> None:
        counts = self.counts
        for name in _UPSTREAM_SUMS:
            counts[name] += _n(row[name])
        names = row.get("revision_names")  # the revisions in the flags, by place
        for key, n in row["flags"].items():
            slot, flags = divmod(key, sql.ANSWER_BUCKET)
            bucket, place = divmod(slot, sql.REVISIONS)
            if names:
                self.revisions[names[place] if place < len(names) else "?"] += n
            counts["responses"] += n
            for name, bit in _UPSTREAM_FLAGS:
                if flags & bit:
                    counts[name] += n
            self.buckets[bucket] += n
            if flags & rollups.UPSTREAM_ERROR:
                self.error_buckets[bucket] += n
        if row["cost"] is not None:
            self.cost = (self.cost or 0.0) + row["cost"]
        self.kinds.update(row["kinds"])
        for name in _UPSTREAM_LISTS:
            self.latency[name].counts.update(row[name])
        self.revisions.update(row["revisions"])
        self.unpriced.update(row["unpriced"])

    def unpriced_rows(self) -> list[tuple[str, str, str | None, int, int, int, int]]:
        """(upstream, role, model, answers, with usage, with images, priced) per model, over
        the successful answers without a price."""
        by_model: dict[str | None, list[int]] = {}
        for (model, usage, images), count in self.unpriced.items():
            totals = by_model.setdefault(model, [0, 0, 0])
            totals[0] += count
            totals[1] += count if usage else 0
            totals[2] += count if images else 0
        return [
            (self.upstream, self.role, model, n, with_usage, images, 0)
            for model, (n, with_usage, images) in sorted(
                by_model.items(), key=lambda kv: kv[0] or ""
            )
        ]


_COUNTS: Final = (
    "pairs", "p_errors", "s_errors", "both_errors", "same_class", "same_shape", "tools",
    "tools_same", "texts", "texts_same", "usage_pairs", "p_prompt", "p_completion", "p_tokens",
    "s_prompt", "s_completion", "s_tokens", "p_cached", "s_cached", "priced_pairs",
    "latency_streams",
)  # fmt: skip
_HISTOGRAMS: Final = (
    "ttfb_diff", "ttft_diff", "total_diff", "p_ttft", "s_ttft", "p_total", "s_total",
)  # fmt: skip
_PAIR_SUMS: Final = (
    "p_prompt", "p_completion", "s_prompt", "s_completion", "p_cached", "s_cached",
)  # fmt: skip
# the counts read off a pair's flags (see sql.P_ERROR): each counts the pairs with all its bits
_PAIR_FLAGS: Final = (
    ("p_errors", sql.P_ERROR), ("s_errors", sql.S_ERROR),
    ("both_errors", sql.P_ERROR | sql.S_ERROR), ("same_class", sql.SAME_CLASS),
    ("same_shape", sql.SAME_SHAPE), ("tools", sql.TOOLS), ("tools_same", sql.TOOLS_SAME),
    ("texts", sql.TEXTS), ("texts_same", sql.TEXTS_SAME), ("usage_pairs", sql.USAGE_BOTH),
    ("priced_pairs", sql.PRICED_BOTH), ("latency_streams", sql.TIMED_STREAM),
)  # fmt: skip
_SUMS: Final = ("p", "s", "pp", "ss", "ps")
_PAIR_COUNTED: Final = (
    "flags", "ttfb_diff", "ttft_diff", "total_diff", "p_lat", "s_lat", "latency_ratio",
    "latency_diff",
)  # fmt: skip
EXAMPLES_KEPT: Final = 5  # per reason and recording: the most recent mismatches


class PairSums:
    """(Shadow, replay or noise) copies against primaries, summed over the ranges, upstreams
    (noise copies are pooled) and recordings they were read in."""

    def __init__(self, role: str, upstream: str, *, binned: bool = False) -> None:
        self.role = role
        self.upstream = upstream
        self.binned = binned
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.costs: dict[str, float | None] = {"p_cost": None, "s_cost": None}
        self.histograms = {name: _histogram(binned) for name in _HISTOGRAMS}
        # exact: (primary us, copy us, stream) per pair; binned: the ratio's and difference's
        self.latency: list[int] = []
        self.latency_ratio = Histogram(binned=True)
        self.latency_diff = Histogram(binned=True)
        self.pairs: dict[str, list[float]] = {"token": [], "cost": []}
        self.sums = {kind: dict.fromkeys(_SUMS, 0.0) for kind in ("token", "cost")}
        # per reason, per recording: the last rowids, the most recent mismatches
        self.examples: dict[str, dict[int, list[int]]] = {
            r: {} for r in ("status", "shape", "tool_calls")
        }
        self.bodies: list[tuple[int, int]] = []

    def add(self, row: dict[str, Any], source: int = 0) -> None:
        """One query's row, read from recording number `source`."""
        counts = self.counts
        for name in _PAIR_SUMS:
            counts[name] += _n(row[name])
        priced = counts["priced_pairs"]
        for key, n in row["flags"].items():
            counts["pairs"] += n
            for name, bits in _PAIR_FLAGS:
                if key & bits == bits:
                    counts[name] += n
        for kind, sums in self.sums.items():
            self.pairs[kind] += row[f"{kind}_pairs"]
            for name in _SUMS:
                sums[name] += row[f"{kind}_{name}"] or 0.0
        counts["p_tokens"] = round(self.sums["token"]["p"])
        counts["s_tokens"] = round(self.sums["token"]["s"])
        if counts["priced_pairs"] > priced:  # the range had pairs priced on both sides
            for name, a in (("p_cost", "p"), ("s_cost", "s")):
                self.costs[name] = (self.costs[name] or 0.0) + (row[f"cost_{a}"] or 0.0) / 1e6
        for name in ("ttfb_diff", "ttft_diff", "total_diff"):
            self.histograms[name].counts.update(row[name])
        for side in ("p", "s"):
            for key, n in row[f"{side}_lat"].items():
                kind = "total" if key & 1 else "ttft"  # 1: not a stream
                self.histograms[f"{side}_{kind}"].counts[key >> 1] += n
        self.latency += row["latency"]
        self.latency_ratio.counts.update(row["latency_ratio"])
        self.latency_diff.counts.update(row["latency_diff"])
        self._marks(row["marks"], source)

    def absorb(self, other: PairSums) -> None:
        """Pools another upstream's pairs into these (noise copies: the floor is the
        primary's, whichever upstream the copy went to)."""
        if other.upstream not in self.upstream.split("+"):
            self.upstream += "+" + other.upstream
        for name, n in other.counts.items():
            self.counts[name] += n
        for name, cost in other.costs.items():
            if cost is not None:
                self.costs[name] = (self.costs[name] or 0.0) + cost
        for name, h in other.histograms.items():
            self.histograms[name].counts.update(h.counts)
        self.latency += other.latency
        self.latency_ratio.counts.update(other.latency_ratio.counts)
        self.latency_diff.counts.update(other.latency_diff.counts)
        for kind, sums in other.sums.items():
            self.pairs[kind] += other.pairs[kind]
            for name, value in sums.items():
                self.sums[kind][name] += value
        self.counts["p_tokens"] = round(self.sums["token"]["p"])
        self.counts["s_tokens"] = round(self.sums["token"]["s"])
        for reason, by_source in other.examples.items():
            for source, rowids in by_source.items():
                kept = self.examples[reason].setdefault(source, [])
                kept += rowids
                kept.sort()
                del kept[:-EXAMPLES_KEPT]
        self.bodies += other.bodies

    def _marks(self, marks: list[int], source: int) -> None:
        """The mismatches' and the sampled bodies' rowids, from a range's marks."""
        found: dict[str, list[int]] = {reason: [] for reason in self.examples}
        for mark in marks:
            rowid, flags = divmod(mark, sql.PAIR_ROWID)
            if not flags & sql.SAME_CLASS:
                found["status"].append(rowid)
            elif not flags & sql.SAME_SHAPE:
                found["shape"].append(rowid)
            if flags & (sql.TOOLS | sql.TOOLS_SAME) == sql.TOOLS:
                found["tool_calls"].append(rowid)
            if flags & sql.BODIES:
                self.bodies.append((source, rowid))
        for reason, by_source in self.examples.items():
            kept = by_source.setdefault(source, [])
            kept += found[reason]
            kept.sort()
            del kept[:-EXAMPLES_KEPT]

    def ratio_sums(self, kind: str) -> Sums:
        n = self.counts["usage_pairs" if kind == "token" else "priced_pairs"]
        return Sums(n, *(self.sums[kind][name] for name in _SUMS))


def upstream_stats(sums: UpstreamSums) -> UpstreamStats:
    c = sums.counts
    n = c["responses"]
    kinds = sums.kinds
    ordered = [k for k in ERROR_KINDS if k in kinds] + sorted(
        k for k in kinds if k not in ERROR_KINDS
    )
    ttfb, ttft, total = (sums.latency[name] for name in _UPSTREAM_LISTS)
    with_usage, priced = c["with_usage"], c["priced"]
    cost = sums.cost if priced else None
    return UpstreamStats(
        upstream=sums.upstream,
        role=sums.role,
        responses=n,
        succeeded=c["ok"],
        upstream_errors=c["upstream_errors"],
        error_rate=c["upstream_errors"] / n,
        errors=tuple(Count(k, kinds[k], kinds[k] / n) for k in ordered),
        ttfb_ms=_percentiles(ttfb),
        ttft_ms=_percentiles(ttft),
        total_ms=_percentiles(total),
        ttft_sketch=_sketch(ttft),
        total_sketch=_sketch(total),
        with_usage=with_usage,
        no_usage=n - with_usage,
        prompt_tokens=c["prompt"],
        completion_tokens=c["completion"],
        total_tokens=c["tokens"],
        cached_tokens=c["cached"],
        images=c["images"],
        priced=priced,
        cost=cost,
        cost_per_1k=cost / priced * 1000 if priced and cost is not None else None,
        streams=c["streams"],
        streams_ok=c["streams_ok"],
        json_answers=c["json_answers"],
        json_ok=c["json_ok"],
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


def _binned_median(h: Histogram, scale: float = 1.0) -> Estimate:
    """`_median` of binned values: the middle rank's bin (the mean of the two middle ones for
    an even count), and the sign test's ranks' bins."""
    n = h.n
    if not n:
        return NO_ESTIMATE
    r = median_ranks(n)
    middle = [(n + 1) // 2, n // 2 + 1]
    ranks = sorted(set(middle + ([] if r is None else [r, n + 1 - r])))
    found = dict(zip(ranks, at_ranks(h.ranked(), ranks), strict=True))
    mid = (found[middle[0]] + found[middle[1]]) / 2 * scale
    interval = None if r is None else Interval(found[r] * scale, found[n + 1 - r] * scale)
    return _estimate(mid, interval, n)


def _latency(raw: PairSums) -> tuple[Estimate, Estimate, int]:
    """The median ratio and difference, copy against primary, over the pairs both timed."""
    if raw.binned:
        return (
            _binned_median(raw.latency_ratio),
            _binned_median(raw.latency_diff),
            raw.counts["latency_streams"],
        )
    triples = raw.latency
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


def _ratio(raw: PairSums, kind: str) -> Estimate:
    sums = raw.ratio_sums(kind)
    if sums.n <= BOOTSTRAP_MAX_PAIRS:
        flat = raw.pairs[kind]
        pairs = list(zip(flat[::2], flat[1::2], strict=True))
        found = ratio_of_sums(pairs)
    else:
        found = ratio_from_sums(sums)
    return NO_ESTIMATE if found is None else _estimate(found[0], found[1], sums.n)


def pair_stats(raw: PairSums, scores: list[tuple[float, int, int]]) -> PairStats:
    c = raw.counts
    pairs = c["pairs"]
    h = raw.histograms
    sims = sorted(s for s, _, _ in scores)
    ratio_ms, diff_ms, streams = _latency(raw)
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
        ttfb_diff_ms=_percentiles(h["ttfb_diff"]),
        ttft_diff_ms=_percentiles(h["ttft_diff"]),
        total_diff_ms=_percentiles(h["total_diff"]),
        primary_ttft_ms=_percentiles(h["p_ttft"]),
        other_ttft_ms=_percentiles(h["s_ttft"]),
        primary_total_ms=_percentiles(h["p_total"]),
        other_total_ms=_percentiles(h["s_total"]),
        latency_ratio=ratio_ms,
        latency_diff_ms=diff_ms,
        latency_streams=streams,
        usage_pairs=c["usage_pairs"],
        primary_tokens=(c["p_prompt"], c["p_completion"], c["p_tokens"]),
        other_tokens=(c["s_prompt"], c["s_completion"], c["s_tokens"]),
        primary_cached=c["p_cached"],
        other_cached=c["s_cached"],
        token_ratio=_ratio(raw, "token"),
        priced_pairs=c["priced_pairs"],
        primary_cost=raw.costs["p_cost"],
        other_cost=raw.costs["s_cost"],
        cost_ratio=_ratio(raw, "cost"),
    )
