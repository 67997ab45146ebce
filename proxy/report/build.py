"""The migration report, built from a recording (`build_report`) or its saved JSON (`load_json`)."""

from __future__ import annotations

import math
import re
import sqlite3
import time
import types
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final, get_args, get_origin, get_type_hints

import orjson

from proxy.record.measure import answer_of, similarity
from proxy.record.rows import ErrorKind
from proxy.record.schema import open_readonly
from proxy.report.data import (
    Agreement,
    Count,
    Example,
    PairStats,
    Percentiles,
    Reason,
    Report,
    ReportFilter,
    RevisionSeen,
    Series,
    Share,
    Side,
    Similarity,
    Timeline,
    Traffic,
    UpstreamStats,
    ratio,
)
from proxy.report.sql import (
    PAIR_ROWS,
    pair_sql,
    price_sql,
    since_clause,
    tool_signature,
    tool_valid,
    upstream_sql,
    where_clause,
)
from proxy.report.thresholds import ReportSettings
from proxy.report.verdict import judge, worst

__all__ = ["Report", "ReportFilter", "build_report", "load_json", "parse_time"]

ERROR_KINDS: Final[tuple[str, ...]] = get_args(ErrorKind)
SIMILARITY_SAMPLE: Final = 2_000  # pairs: similarity runs in Python, ~1 ms a pair
EXAMPLES_PER_REASON: Final = 5
EXAMPLE_CHARS: Final = 1_500
SKETCH_POINTS: Final = 400  # evenly ranked values kept per latency distribution, for charts
MAX_BUCKETS: Final = 100
_BUCKET_SECONDS: Final = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400)


# --- times ---------------------------------------------------------------------------------

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_time(s: str, *, now: float | None = None) -> float:
    """Unix seconds from ISO-8601 (a date or date-time; naive means UTC), unix seconds, or an
    age ago: "90s", "15m", "2h", "3d", "1w"."""
    text = s.strip()
    if m := _AGO.fullmatch(text.lower()):
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_SECONDS[m[2]]
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{s!r} is not a time: give an ISO-8601 date or date-time (2024-05-01, "
            "2024-05-01T12:00Z), unix seconds, or an age such as 15m, 2h or 3d"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- numbers -------------------------------------------------------------------------------


def _ints(joined: str | None) -> list[int]:
    """A group_concat of integers as a list; orjson parses it three times faster than int()."""
    return orjson.loads(f"[{joined}]") if joined else []


def _sorted(joined: str | None) -> list[int]:
    values = _ints(joined)
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


# --- reading -------------------------------------------------------------------------------


def build_report(db_path: str, flt: ReportFilter, settings: ReportSettings) -> Report:
    """Read the recording at `db_path`; raises `store.StoreError` if it isn't one."""
    con = open_readonly(db_path)
    try:
        # Read through the OS page cache instead of copying pages into SQLite's own: the join
        # revisits index pages far more often than a bounded page cache keeps them (a quarter
        # less CPU on a million exchanges). Mapping is safe here: the recorder never shrinks
        # the file, and no checkpoint truncates it under our open read transaction.
        con.execute("PRAGMA mmap_size = 4294967296")
        con.create_function("tool_sig", 1, tool_signature, deterministic=True)
        con.create_function("tool_valid", 1, tool_valid, deterministic=True)
        # One read transaction: every figure comes from the same snapshot of a live db.
        con.execute("BEGIN")
        return _Reader(con, db_path, flt, settings).report()
    finally:
        con.close()


class _PairRaw:
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
            self.values[i] += _ints(row[19 + i])
        for i, reason in enumerate(("status", "shape", "tool_calls")):
            self.examples[reason] += _ints(row[26 + i])
        self.bodies += _ints(row[29])


class _Reader:
    def __init__(
        self, con: sqlite3.Connection, db_path: str, flt: ReportFilter, settings: ReportSettings
    ) -> None:
        self.con = con
        self.db_path = db_path
        self.flt = flt
        self.settings = settings
        self.where, self.params = where_clause(flt)
        self.notes: list[str] = []

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return self.con.execute(sql, {**self.params, **(params or {})}).fetchall()

    def report(self) -> Report:
        traffic_rows = self.rows(
            "SELECT route, model, count(*), sum(stream), min(ts), max(ts) FROM exchanges e "
            f"WHERE 1{self.where} GROUP BY route, model"
        )
        exchanges = sum(r[2] for r in traffic_rows)
        first = min((r[4] for r in traffic_rows), default=None)
        last = max((r[5] for r in traffic_rows), default=None)
        width = _bucket_seconds((last or 0.0) - (first or 0.0))
        t0 = math.floor((first or 0.0) / width) * width
        n_buckets = int(((last or 0.0) - t0) // width) + 1 if first is not None else 0

        order = {"primary": 0, "shadow": 1, "noise": 2}  # no other role is ours to judge
        groups = sorted(
            (g for g in self.groups() if g[1] in order), key=lambda g: (order[g[1]], g[0])
        )
        upstreams: list[UpstreamStats] = []
        series: list[Series] = []
        served: dict[str, Counter[str]] = {}  # revision -> primary upstream -> answers
        for upstream, role in groups:
            params: dict[str, Any] = {"upstream": upstream, "role": role, "t0": t0, "width": width}
            price = price_sql(self.settings.pricing, "r", upstream, params)
            sql = upstream_sql(role, self.where + since_clause(self.flt, "r"), price)
            row = self.rows(sql, params)[0]
            if not row[0]:
                continue
            upstreams.append(_upstream_stats(upstream, role, row))
            requests, errors = Counter(_ints(row[17])), Counter(_ints(row[18]))
            series.append(
                Series(
                    upstream,
                    role,
                    tuple(requests[b] for b in range(n_buckets)),
                    tuple(errors[b] for b in range(n_buckets)),
                )
            )
            for revision, count in Counter(row[19].split("\x1f") if row[19] else ()).items():
                served.setdefault(revision, Counter())[upstream] += count

        primary = {s.upstream: s.responses for s in upstreams if s.role == "primary"}
        total_primary = sum(primary.values())
        traffic = Traffic(
            exchanges=exchanges,
            streams=sum(int(r[3] or 0) for r in traffic_rows),
            first_ts=first,
            last_ts=last,
            by_upstream=_counts(primary.items(), total_primary),
            by_route=_counts(_sum_by(traffic_rows, 0), exchanges),
            by_model=_counts(_sum_by(traffic_rows, 1), exchanges),
            revisions=self.revisions(first, last, served),
        )

        shadows = (self.pairs([g]) for g in groups if g[1] == "shadow")
        raws = [raw for raw in shadows if raw.counts[0]]
        noise_groups = [g for g in groups if g[1] == "noise"]
        if noise_groups and (noise := self.pairs(noise_groups)).counts[0]:
            raws.append(noise)  # pooled: the floor is the primary's, whichever upstream it was
        scores = {id(raw): self.similarities(raw) for raw in raws}
        pairs = tuple(_pair_stats(raw, scores[id(raw)]) for raw in raws)
        noise_stats = next((p for p in pairs if p.role == "noise"), None)

        verdicts = tuple(
            judge(p, _find(upstreams, p.upstream, "shadow"), noise_stats, self.settings)
            for p in pairs
            if p.role == "shadow"
        )
        examples = tuple(
            e for raw in raws if raw.role == "shadow" for e in self.examples(raw, scores[id(raw)])
        )
        self.explain(exchanges, upstreams, pairs, noise_stats)
        return Report(
            db_path=self.db_path,
            generated_at=time.time(),
            filter=self.flt,
            min_pairs=self.settings.thresholds.min_pairs,
            traffic=traffic,
            upstreams=tuple(upstreams),
            pairs=pairs,
            verdicts=verdicts,
            verdict=worst(v.status for v in verdicts),
            examples=examples,
            timeline=Timeline(t0, width, tuple(series)),
            notes=tuple(self.notes),
        )

    def groups(self) -> list[tuple[str, str]]:
        """The distinct (upstream, role) pairs, by seeking through their index."""
        found = []
        row = self.con.execute(
            "SELECT upstream, role FROM responses ORDER BY upstream, role LIMIT 1"
        ).fetchone()
        while row is not None:
            found.append((str(row[0]), str(row[1])))
            row = self.con.execute(
                "SELECT upstream, role FROM responses WHERE (upstream, role) > (?, ?) "
                "ORDER BY upstream, role LIMIT 1",
                row,
            ).fetchone()
        return found

    def revisions(
        self, first: float | None, last: float | None, served: dict[str, Counter[str]]
    ) -> tuple[RevisionSeen, ...]:
        seen = {
            r[0]: r
            for r in self.rows(
                "SELECT revision, count(*), min(ts), max(ts) FROM exchanges e "
                f"WHERE 1{self.where} GROUP BY revision"
            )
        }
        known = {
            r[0]: r for r in self.con.execute("SELECT revision, ts, rollback, split FROM revisions")
        }
        start = self.flt.since if self.flt.since is not None else first
        end = self.flt.until if self.flt.until is not None else last
        names = set(seen)
        if start is not None and end is not None and self.flt.revision is None:
            names |= {name for name, r in known.items() if start <= r[1] <= end}
        out = []
        for name in names:
            k = known.get(name)
            s = seen.get(name)
            counts = served.get(name, Counter())
            total = sum(counts.values())
            out.append(
                RevisionSeen(
                    revision=name,
                    started=k[1] if k else None,
                    rollback=bool(k[2]) if k else False,
                    split=_split(k[3]) if k else (),
                    first_seen=s[2] if s else None,
                    last_seen=s[3] if s else None,
                    requests=s[1] if s else 0,
                    served=tuple(Share(u, c / total) for u, c in sorted(counts.items())),
                )
            )
        return tuple(sorted(out, key=lambda r: (r.started or r.first_seen or 0.0, r.revision)))

    def pairs(self, groups: list[tuple[str, str]]) -> _PairRaw:
        role = groups[0][1]
        raw = _PairRaw(role, "+".join(u for u, _ in groups))
        for upstream, _ in groups:
            params: dict[str, Any] = {"upstream": upstream, "role": role}
            p_price = price_sql(self.settings.pricing, "p", None, params)
            s_price = price_sql(self.settings.pricing, "s", upstream, params)
            sql = pair_sql(self.where + since_clause(self.flt, "s"), p_price, s_price)
            raw.add(self.rows(sql, params)[0])
        return raw

    def pair_rows(self, rowids: Iterable[int]) -> list[Any]:
        return self.con.execute(
            PAIR_ROWS, {"rowids": orjson.dumps(list(rowids)).decode()}
        ).fetchall()

    def similarities(self, raw: _PairRaw) -> list[tuple[float, int]]:
        """(score, rowid) over an evenly spread sample of the pairs with both bodies."""
        eligible = raw.bodies
        step = max(len(eligible) / SIMILARITY_SAMPLE, 1.0)
        sample = [eligible[int(i * step)] for i in range(min(len(eligible), SIMILARITY_SAMPLE))]
        scores = []
        for row in self.pair_rows(sample):
            a, b = _answer_text(row[13], row[5]), _answer_text(row[20], row[5])
            if a is None or b is None:
                continue
            scores.append((1.0 if row[6] else similarity(a, b), row[0]))
        return scores

    def examples(self, raw: _PairRaw, scores: list[tuple[float, int]]) -> list[Example]:
        wanted: list[tuple[Reason, int, float | None]] = []
        reasons: tuple[Reason, ...] = ("status", "shape", "tool_calls")
        for reason in reasons:
            # rowids grow with insertion, so the last ones are the most recent
            wanted += [(reason, i, None) for i in raw.examples[reason][-EXAMPLES_PER_REASON:]]
        lowest = sorted(s for s in scores if s[0] < 1.0)[:EXAMPLES_PER_REASON]
        wanted += [("similarity", rowid, score) for score, rowid in lowest]
        rows = {row[0]: row for row in self.pair_rows({w[1] for w in wanted})}
        out = []
        for reason, rowid, score in wanted:
            row = rows.get(rowid)
            if row is None:
                continue
            out.append(
                Example(
                    reason=reason,
                    exchange_id=row[1],
                    ts=row[2],
                    route=row[3],
                    model=row[4],
                    stream=bool(row[5]),
                    similarity=score,
                    primary=_side(row[7:14], bool(row[5])),
                    other=_side(row[14:21], bool(row[5])),
                )
            )
        return out

    def explain(
        self,
        exchanges: int,
        upstreams: list[UpstreamStats],
        pairs: tuple[PairStats, ...],
        noise: PairStats | None,
    ) -> None:
        filtered = self.where != ""
        if not exchanges:
            self.notes.append(
                "No data: no exchanges match the filter."
                if filtered
                else "No data: the recording holds no exchanges yet."
            )
            return
        if not any(p.role == "shadow" for p in pairs):
            self.notes.append(
                "No shadow pairs: nothing to compare, so there is no verdict. Configure "
                "`shadow` to copy requests to the new upstream."
            )
        elif noise is None:
            self.notes.append(
                "No noise pairs: the output comparison is not discounted by how much the primary "
                "disagrees with itself. Set `shadow.noise_sample` (e.g. 0.05) to measure it."
            )
        no_usage = sum(s.no_usage for s in upstreams)
        if no_usage:
            self.notes.append(
                f"{no_usage:,} responses carried no token usage; they are counted apart, never as zero."
            )
        unpriced = [
            f"{s.upstream} ({s.role})"
            for s in upstreams
            if s.with_usage and s.priced < s.with_usage
        ]
        if unpriced:
            self.notes.append(
                "Some responses have no price in `report.pricing`: " + ", ".join(unpriced) + "."
            )


def _upstream_stats(upstream: str, role: str, row: Sequence[Any]) -> UpstreamStats:
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


def _pair_stats(raw: _PairRaw, scores: list[tuple[float, int]]) -> PairStats:
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


def _answer_text(body: bytes | str | None, stream: int) -> str | None:
    if body is None:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if stream:  # the recorder's reassembled {"text", "tool_calls", "finish_reason"}
        text = parsed.get("text") if isinstance(parsed, dict) else None
        return text if isinstance(text, str) else None
    return answer_of(parsed).text


def _side(row: Sequence[Any], stream: bool) -> Side:
    text = _answer_text(row[6], int(stream))
    if text is not None and len(text) > EXAMPLE_CHARS:
        text = text[:EXAMPLE_CHARS] + " [...]"
    return Side(row[0], row[1], row[2], row[3], row[4], row[5], text)


def _split(split_json: str) -> tuple[Share, ...]:
    try:
        split = orjson.loads(split_json)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(split, dict):
        return ()
    return tuple(Share(str(k), float(v)) for k, v in split.items() if isinstance(v, int | float))


def _sum_by(rows: Iterable[Sequence[Any]], key: int) -> Iterable[tuple[str | None, int]]:
    totals: Counter[str | None] = Counter()
    for row in rows:
        totals[row[key]] += row[2]
    return totals.items()


def _counts(items: Iterable[tuple[str | None, int]], whole: int) -> tuple[Count, ...]:
    ranked = sorted(items, key=lambda kv: (-kv[1], kv[0] or ""))
    return tuple(Count(name, n, n / whole if whole else 0.0) for name, n in ranked)


def _bucket_seconds(span: float) -> float:
    for width in _BUCKET_SECONDS:
        if span / width < MAX_BUCKETS:
            return float(width)
    return float(math.ceil(span / MAX_BUCKETS / 86_400) * 86_400)


def _find(stats: list[UpstreamStats], upstream: str, role: str) -> UpstreamStats | None:
    return next((s for s in stats if (s.upstream, s.role) == (upstream, role)), None)


# --- JSON ----------------------------------------------------------------------------------


def load_json(data: bytes | str) -> Report:
    """The inverse of `report_text.render_json`, e.g. to draw the HTML from a saved report."""
    return _decode(Report, orjson.loads(data))  # type: ignore[no-any-return]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    if is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        return tp(**{f.name: _decode(hints[f.name], value[f.name]) for f in fields(tp)})
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is types.UnionType:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _decode(inner[0], value)
    if tp is float:
        return float(value)
    return value
