"""The migration report, built from a recording (`build_report`) or its saved JSON (`load_json`)."""

from __future__ import annotations

import math
import re
import sqlite3
import time
import types
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final, get_args, get_origin, get_type_hints

import orjson

from proxy.record.answers import answer_of, similarity
from proxy.record.schema import open_readonly
from proxy.report.data import (
    Count,
    Example,
    PairStats,
    Reason,
    Report,
    ReportFilter,
    RevisionSeen,
    Series,
    Share,
    Side,
    Timeline,
    Traffic,
    UpstreamStats,
)
from proxy.report.figures import PairSums, ints, pair_stats, upstream_stats
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

SIMILARITY_SAMPLE: Final = 2_000  # pairs: similarity runs in Python, ~1 ms a pair
EXAMPLES_PER_REASON: Final = 5
EXAMPLE_CHARS: Final = 1_500
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
        window = _window(traffic_rows)
        order = {"primary": 0, "shadow": 1, "noise": 2}  # no other role is ours to judge
        groups = sorted(
            (g for g in self.groups() if g[1] in order), key=lambda g: (order[g[1]], g[0])
        )
        upstreams, series, served = self.answers(groups, window)
        revisions = self.revisions(window.first, window.last, served)
        traffic = _traffic(traffic_rows, window, upstreams, revisions)
        raws = self.pair_raws(groups)
        scores = {id(raw): self.similarities(raw) for raw in raws}
        pairs = tuple(pair_stats(raw, scores[id(raw)]) for raw in raws)
        noise_stats = next((p for p in pairs if p.role == "noise"), None)
        verdicts = tuple(
            judge(p, _find(upstreams, p.upstream, "shadow"), noise_stats, self.settings)
            for p in pairs
            if p.role == "shadow"
        )
        examples = tuple(
            e for raw in raws if raw.role == "shadow" for e in self.examples(raw, scores[id(raw)])
        )
        self.explain(traffic.exchanges, upstreams, pairs, noise_stats)
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
            timeline=Timeline(window.start, window.width, tuple(series)),
            notes=tuple(self.notes),
        )

    def answers(
        self, groups: list[tuple[str, str]], window: _Window
    ) -> tuple[list[UpstreamStats], list[Series], dict[str, Counter[str]]]:
        """Each (upstream, role)'s figures and timeline, and the answers served per revision."""
        upstreams: list[UpstreamStats] = []
        series: list[Series] = []
        served: dict[str, Counter[str]] = {}  # revision -> primary upstream -> answers
        for upstream, role in groups:
            params: dict[str, Any] = {
                "upstream": upstream,
                "role": role,
                "t0": window.start,
                "width": window.width,
            }
            price = price_sql(self.settings.pricing, "r", upstream, params)
            sql = upstream_sql(role, self.where + since_clause(self.flt, "r"), price)
            row = self.rows(sql, params)[0]
            if not row[0]:
                continue
            upstreams.append(upstream_stats(upstream, role, row))
            requests, errors = Counter(ints(row[17])), Counter(ints(row[18]))
            buckets = range(window.buckets)
            series.append(
                Series(
                    upstream,
                    role,
                    tuple(requests[b] for b in buckets),
                    tuple(errors[b] for b in buckets),
                )
            )
            for revision, count in Counter(row[19].split("\x1f") if row[19] else ()).items():
                served.setdefault(revision, Counter())[upstream] += count
        return upstreams, series, served

    def pair_raws(self, groups: list[tuple[str, str]]) -> list[PairSums]:
        """One sum per shadowed upstream, then the noise copies pooled, where there are pairs."""
        shadows = (self.pairs([g]) for g in groups if g[1] == "shadow")
        raws = [raw for raw in shadows if raw.counts[0]]
        noise_groups = [g for g in groups if g[1] == "noise"]
        if noise_groups and (noise := self.pairs(noise_groups)).counts[0]:
            raws.append(noise)  # pooled: the floor is the primary's, whichever upstream it was
        return raws

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

    def pairs(self, groups: list[tuple[str, str]]) -> PairSums:
        role = groups[0][1]
        raw = PairSums(role, "+".join(u for u, _ in groups))
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

    def similarities(self, raw: PairSums) -> list[tuple[float, int]]:
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

    def examples(self, raw: PairSums, scores: list[tuple[float, int]]) -> list[Example]:
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


@dataclass(frozen=True, slots=True)
class _Window:
    """When the matching exchanges were made, and the timeline's buckets over that time."""

    first: float | None
    last: float | None
    start: float  # of the first bucket
    width: float
    buckets: int


def _window(traffic_rows: Sequence[Sequence[Any]]) -> _Window:
    first = min((r[4] for r in traffic_rows), default=None)
    last = max((r[5] for r in traffic_rows), default=None)
    width = _bucket_seconds((last or 0.0) - (first or 0.0))
    start = math.floor((first or 0.0) / width) * width
    buckets = int(((last or 0.0) - start) // width) + 1 if first is not None else 0
    return _Window(first, last, start, width, buckets)


def _traffic(
    traffic_rows: Sequence[Sequence[Any]],
    window: _Window,
    upstreams: list[UpstreamStats],
    revisions: tuple[RevisionSeen, ...],
) -> Traffic:
    exchanges = sum(r[2] for r in traffic_rows)
    primary = {s.upstream: s.responses for s in upstreams if s.role == "primary"}
    return Traffic(
        exchanges=exchanges,
        streams=sum(int(r[3] or 0) for r in traffic_rows),
        first_ts=window.first,
        last_ts=window.last,
        by_upstream=_counts(primary.items(), sum(primary.values())),
        by_route=_counts(_sum_by(traffic_rows, 0), exchanges),
        by_model=_counts(_sum_by(traffic_rows, 1), exchanges),
        revisions=revisions,
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
