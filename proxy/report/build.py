"""The migration report, built from a recording (`build_report`) or its saved JSON (`load_json`)."""

from __future__ import annotations

import math
import re
import time
import types
from collections import Counter
from dataclasses import fields, is_dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final, get_args, get_origin, get_type_hints

import orjson

from proxy.judge.grade import with_quality
from proxy.judge.tally import read as read_quality
from proxy.record.schema import open_readonly
from proxy.replay.compare import ANOTHER_TIME, COMPARED
from proxy.report.data import (
    PairStats,
    Report,
    ReportFilter,
    RouteDims,
    Series,
    Timeline,
    Traffic,
    UpstreamStats,
)
from proxy.report.examples import examples, similarities
from proxy.report.figures import PairSums, ints, pair_stats, upstream_stats
from proxy.report.prices import cost_sql, price_sql, unpriced_notes, unpriced_sql
from proxy.report.sql import (
    Reading,
    pair_query,
    since_clause,
    tool_signature,
    tool_valid,
    upstream_query,
)
from proxy.report.thresholds import ReportSettings
from proxy.report.traffic import Window, embeddings, traffic, traffic_rows, window
from proxy.report.verdict import judge, worst

__all__ = ["Report", "ReportFilter", "build_report", "load_json", "parse_time"]


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
        return _Reader(Reading(con, flt), db_path, settings).report()
    finally:
        con.close()


class _Reader:
    def __init__(self, db: Reading, db_path: str, settings: ReportSettings) -> None:
        self.db = db
        self.db_path = db_path
        self.settings = settings
        self.notes: list[str] = []

    def report(self) -> Report:
        db = self.db
        rows = traffic_rows(db)
        win = window(rows)
        order = {"primary": 0, "shadow": 1, "noise": 2, "replay": 3}  # none other is ours
        groups = sorted(
            (g for g in self.groups() if g[1] in order), key=lambda g: (order[g[1]], g[0])
        )
        upstreams, series, served = self.answers(groups, win)
        seen = traffic(db, rows, win, upstreams, served)
        raws = self.pair_raws(groups)
        scores = {id(raw): similarities(db, raw) for raw in raws}
        pairs = tuple(pair_stats(raw, scores[id(raw)]) for raw in raws)
        noise_stats = next((p for p in pairs if p.role == "noise"), None)
        noise_json = (
            sum(s.json_answers for s in upstreams if s.role == "noise"),
            sum(s.json_ok for s in upstreams if s.role == "noise"),
        )
        verdicts = tuple(
            replace(
                judge(
                    p, _find(upstreams, p.upstream, p.role), noise_stats, noise_json, self.settings
                ),
                role=p.role,
            )
            for p in pairs
            if p.role in COMPARED
        )
        # The judge's verdicts (python -m proxy judge), graded as the quality check.
        quality = read_quality(db.con, db.where, db.params)
        t = self.settings.thresholds
        verdicts = tuple(with_quality(v, quality, t.quality, t.min_pairs) for v in verdicts)
        dims = embeddings(db)
        found = tuple(
            e for raw in raws if raw.role in COMPARED for e in examples(db, raw, scores[id(raw)])
        )
        self.explain(seen, upstreams, pairs, dims)
        return Report(
            db_path=self.db_path,
            generated_at=time.time(),
            filter=db.flt,
            min_pairs=self.settings.thresholds.min_pairs,
            traffic=seen,
            upstreams=tuple(upstreams),
            pairs=pairs,
            verdicts=verdicts,
            verdict=worst(v.status for v in verdicts),
            embeddings=dims,
            examples=found,
            timeline=Timeline(win.start, win.width, tuple(series)),
            notes=tuple(self.notes),
            quality=quality,
        )

    def answers(
        self, groups: list[tuple[str, str]], win: Window
    ) -> tuple[list[UpstreamStats], list[Series], dict[str, Counter[str]]]:
        """Each (upstream, role)'s figures and timeline, and the answers served per revision."""
        upstreams: list[UpstreamStats] = []
        series: list[Series] = []
        served: dict[str, Counter[str]] = {}  # revision -> primary upstream -> answers
        db = self.db
        for upstream, role in groups:
            params: dict[str, Any] = {
                "upstream": upstream,
                "role": role,
                "t0": win.start,
                "width": win.width,
            }
            cost = cost_sql("r", price_sql(self.settings.pricing, "r", upstream, params))
            query = upstream_query(role, db.where + since_clause(db.flt, "r"), cost)
            row = query.named(db.rows(query.sql, params)[0])
            if not row["responses"]:
                continue
            upstreams.append(upstream_stats(upstream, role, row))
            requests, errors = Counter(ints(row["buckets"])), Counter(ints(row["error_buckets"]))
            buckets = range(win.buckets)
            series.append(
                Series(
                    upstream,
                    role,
                    tuple(requests[b] for b in buckets),
                    tuple(errors[b] for b in buckets),
                )
            )
            revisions = row["revisions"]
            for revision, count in Counter(revisions.split("\x1f") if revisions else ()).items():
                served.setdefault(revision, Counter())[upstream] += count
        return upstreams, series, served

    def pair_raws(self, groups: list[tuple[str, str]]) -> list[PairSums]:
        """One sum per shadowed upstream, then the noise copies pooled, where there are pairs."""
        shadows = (self.pairs([g]) for g in groups if g[1] in COMPARED)  # and replays
        raws = [raw for raw in shadows if raw.counts["pairs"]]
        noise_groups = [g for g in groups if g[1] == "noise"]
        if noise_groups and (noise := self.pairs(noise_groups)).counts["pairs"]:
            raws.append(noise)  # pooled: the floor is the primary's, whichever upstream it was
        return raws

    def groups(self) -> list[tuple[str, str]]:
        """The distinct (upstream, role) pairs, by seeking through their index; not "-", the
        sidecar's own refusals, which no upstream answered."""
        found = []
        con = self.db.con
        row = con.execute(
            "SELECT upstream, role FROM responses ORDER BY upstream, role LIMIT 1"
        ).fetchone()
        while row is not None:
            if row[0] != "-":
                found.append((str(row[0]), str(row[1])))
            row = con.execute(
                "SELECT upstream, role FROM responses WHERE (upstream, role) > (?, ?) "
                "ORDER BY upstream, role LIMIT 1",
                row,
            ).fetchone()
        return found

    def pairs(self, groups: list[tuple[str, str]]) -> PairSums:
        role = groups[0][1]
        raw = PairSums(role, "+".join(u for u, _ in groups))
        db = self.db
        for upstream, _ in groups:
            params: dict[str, Any] = {"upstream": upstream, "role": role}
            p_cost = cost_sql("p", price_sql(self.settings.pricing, "p", None, params))
            s_cost = cost_sql("s", price_sql(self.settings.pricing, "s", upstream, params))
            query = pair_query(db.where + since_clause(db.flt, "s"), p_cost, s_cost)
            raw.add(query.named(db.rows(query.sql, params)[0]))
        return raw

    def explain(
        self,
        seen: Traffic,
        upstreams: list[UpstreamStats],
        pairs: tuple[PairStats, ...],
        dims: tuple[RouteDims, ...],
    ) -> None:
        filtered = self.db.where != ""
        if not seen.exchanges:
            self.notes.append(
                "No data: no exchanges match the filter."
                if filtered
                else "No data: the recording holds no exchanges yet."
            )
            return
        if any(p.role == "replay" for p in pairs):
            self.notes.append(ANOTHER_TIME)
        if not any(p.role in COMPARED for p in pairs):
            self.notes.append(
                "No shadow pairs: nothing to compare, so there is no verdict. Configure "
                "`shadow` to copy requests to the new upstream."
            )
        elif not any(p.role == "noise" for p in pairs):
            self.notes.append(
                "No noise pairs: the output comparisons (shape, text, tool calls, JSON) are not "
                "discounted by how much the primary disagrees with itself, and text agreement "
                "can only pass. Set `shadow.noise_sample` (e.g. 0.05) to measure it."
            )
        for route in dims:
            if route.mixed:
                parts = ", ".join(f"{d.dims} from {d.upstream} ({d.role})" for d in route.seen)
                self.notes.append(
                    f"Route {route.route} mixes embedding dimensions: {parts}. Vectors of "
                    "different lengths can't share an index: keep one model per index."
                )
        no_usage = sum(s.no_usage for s in upstreams)
        if no_usage:
            self.notes.append(
                f"{no_usage:,} responses carried no token usage; they are counted apart, never as zero."
            )
        if any(s.priced < s.succeeded for s in upstreams):
            db = self.db
            params: dict[str, Any] = {}
            cost = cost_sql("r", price_sql(self.settings.pricing, "r", None, params))
            rows = db.rows(unpriced_sql(db.where + since_clause(db.flt, "r"), cost), params)
            self.notes += unpriced_notes(rows, self.settings.pricing)


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
        # A field the saved report lacks (it came from an older sidecar) takes its default.
        return tp(
            **{f.name: _decode(hints[f.name], value[f.name]) for f in fields(tp) if f.name in value}
        )
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
