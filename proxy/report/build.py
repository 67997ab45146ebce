"""The migration report, built from a recording (`build_report`) or its saved JSON (`load_json`)."""

from __future__ import annotations

import math
import re
import time
import types
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields, is_dataclass, replace
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any, Final, NamedTuple, get_args, get_origin, get_type_hints

import orjson

from proxy.judge.grade import with_quality
from proxy.judge.tally import rows as quality_rows
from proxy.judge.tally import tally
from proxy.record.schema import ROLLUPS_SINCE, StoreError
from proxy.replay.compare import ANOTHER_TIME, COMPARED
from proxy.report import minutes
from proxy.report.data import (
    Example,
    PairStats,
    Recording,
    Report,
    ReportFilter,
    RouteDims,
    Series,
    Timeline,
    Traffic,
    UpstreamStats,
)
from proxy.report.examples import SIMILARITY_SAMPLE, examples, similarities
from proxy.report.figures import (
    PairSums,
    UpstreamSums,
    pair_stats,
    parsed_answers,
    parsed_pairs,
    upstream_stats,
)
from proxy.report.prices import cost_sql, price_sql, unpriced_notes
from proxy.report.recordings import Recordings
from proxy.report.sql import (
    ANSWER,
    REVISIONS,
    Many,
    Reading,
    copy_query,
    ratio_pairs_sql,
    since_clause,
    upstream_query,
)
from proxy.report.stats import BOOTSTRAP_MAX_PAIRS
from proxy.report.thresholds import ReportSettings
from proxy.report.traffic import (
    Seen,
    Window,
    embeddings,
    read_seen,
    revisions_rows,
    span,
    traffic,
    traffic_rows,
    window,
)
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


# --- reading ---------------------------------------------------------------------------------

# Up to this many responses in all, every latency is kept exactly; beyond, in bins of 0.5%
# (see bins.py). Either way memory is bounded by distinct values, not rows.
EXACT_LIMIT: Final = 100_000
CHUNK: Final = 1 << 17  # rowids per query: bounds a query's lists, and splits the work


def build_report(
    db_path: str | Sequence[str],
    flt: ReportFilter,
    settings: ReportSettings,
    *,
    exact_limit: int = EXACT_LIMIT,
    rollups: bool = True,
) -> Report:
    """Read the recording at `db_path`, or the recordings at several paths as one; raises
    `store.StoreError`, naming the file, if one isn't a recording this sidecar reads.
    `rollups=False` counts every row even where the recording's minutes would do."""
    paths = [db_path] if isinstance(db_path, str) else list(db_path)
    if not paths:
        raise StoreError("no recording named: give --db")
    files = Recordings(paths, flt)
    try:
        return _Reader(files, settings, exact_limit, rollups).report()
    finally:
        files.close()


class _Group(NamedTuple):
    source: int  # which recording
    upstream: str
    role: str
    last: int  # its recording's last responses rowid


class _Reader:
    def __init__(
        self, files: Recordings, settings: ReportSettings, exact_limit: int, rollups: bool
    ) -> None:
        self.files = files
        self.settings = settings
        self.notes: list[str] = []
        self.dbs = [files.primary(i) for i in range(len(files.paths))]
        self.db = Many(self.dbs)
        order = {"primary": 0, "shadow": 1, "noise": 2, "replay": 3}  # none other is ours
        self.groups: list[_Group] = []
        self.failovers = False
        for source, db in enumerate(self.dbs):
            last = int(
                db.con.execute("SELECT coalesce(max(rowid), 0) FROM responses").fetchone()[0]
            )
            for upstream, role in _groups(db):
                self.failovers |= role == "failover"
                if role in order:
                    self.groups.append(_Group(source, upstream, role, last))
        self.groups.sort(key=lambda g: (order[g.role], g.upstream, g.source))
        names = sorted({name for db in self.dbs for name in _revisions(db)})
        self.revision_names = tuple(names) if len(names) < REVISIONS else ()
        self.binned = (
            sum(g.last for g in {(g.source, g.last): g for g in self.groups}.values()) > exact_limit
        )
        # Recordings whose primaries and exchanges are read from their minutes
        # (proxy/record/rollups.py): binned, as the minutes keep latencies, and unfiltered.
        self.rolled = frozenset(
            i
            for i, version in enumerate(files.versions)
            if rollups and self.binned and not self.db.where and version >= ROLLUPS_SINCE
        )

    def _ranges(self) -> list[tuple[int, tuple[int, int]]]:
        """(recording, rowids) of every range of responses the report reads."""
        last = {g.source: g.last for g in self.groups}
        return [
            (i, (lo, lo + CHUNK)) for i, n in sorted(last.items()) for lo in range(0, n + 1, CHUNK)
        ]

    def _range(
        self, source: int, rows: tuple[int, int], win: Window, dbs: list[Reading]
    ) -> list[Any]:
        """Every query over one range of one recording's responses, one after another on one
        connection: each reads the pages of the range (and of its exchanges) that the one
        before read, from SQLite's cache rather than the file."""
        found = []
        for g in self.groups:
            if g.source != source or (g.role == "primary" and source in self.rolled):
                continue
            if g.role in (*COMPARED, "noise"):
                found += self._copies(g, rows, win, dbs)
            else:
                found.append(self._answers(g, rows, win, dbs))
        return found

    def report(self) -> Report:
        db = self.db
        win = window(*span(db))
        jobs: list[Any] = [partial(_seen, self.failovers, self.rolled)]
        jobs += [partial(self._minutes, source, win) for source in sorted(self.rolled)]
        jobs += [partial(self._range, source, r, win) for source, r in self._ranges()]
        results = self.files.each(jobs)
        seen: Seen = next(results)
        sums: dict[tuple[str, str], UpstreamSums] = {}
        raws: dict[tuple[str, str], PairSums] = {}
        # folded in as they come, recording by recording and range by range, so each
        # (upstream, role) sums its ranges in order, whatever the threads did
        for found in results:
            for kind, group, row in found:
                key = (group.upstream, group.role)
                if kind == "answers":
                    if key not in sums:
                        sums[key] = UpstreamSums(*key, binned=self.binned)
                    sums[key].add(row)
                else:
                    if key not in raws:
                        raws[key] = PairSums(group.role, group.upstream, binned=self.binned)
                    raws[key].add(row, group.source)
        order = list(dict.fromkeys((g.upstream, g.role) for g in self.groups))
        sums = {key: sums[key] for key in order if key in sums}
        pooled: dict[tuple[str, str], PairSums] = {}
        for raw in (raws[key] for key in order if key in raws):
            key = (raw.upstream, raw.role)
            if raw.role != "noise":
                pooled[key] = raw
            elif ("", "noise") not in pooled:
                pooled[("", "noise")] = raw
            else:
                pooled[("", "noise")].absorb(raw)
        return self._assemble(seen, win, sums, [r for r in pooled.values() if r.counts["pairs"]])

    def _assemble(
        self,
        seen: Seen,
        win: Window,
        sums: dict[tuple[str, str], UpstreamSums],
        raws: list[PairSums],
    ) -> Report:
        db = self.db
        kept = [s for s in sums.values() if s.counts["responses"]]
        upstreams = [upstream_stats(s) for s in kept]
        series = [_series(s, win) for s in kept]
        served: dict[str, Counter[str]] = {}  # revision -> primary upstream -> answers
        for s in kept:
            for revision, count in s.revisions.items():
                served.setdefault(revision, Counter())[s.upstream] += count
        traffic_seen = traffic(seen, db.flt, win, upstreams, served)
        self._few_ratio_pairs(raws)
        found = self.files.map([partial(_look, raw) for raw in raws])
        pairs = tuple(pair_stats(raw, scores) for raw, (scores, _) in zip(raws, found, strict=True))
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
        # The judge's verdicts (python -m proxy judge), pooled over the recordings, graded as
        # the quality check.
        quality = tally(seen.judged)
        t = self.settings.thresholds
        verdicts = tuple(with_quality(v, quality, t.quality, t.min_pairs) for v in verdicts)
        dims = embeddings(seen)
        examples_found = tuple(
            e for raw, (_, ex) in zip(raws, found, strict=True) if raw.role in COMPARED for e in ex
        )
        self.explain(traffic_seen, kept, upstreams, pairs, dims)
        return Report(
            db_path=self.files.paths[0]
            if len(self.files.paths) == 1
            else ", ".join(self.files.paths),
            generated_at=time.time(),
            filter=db.flt,
            min_pairs=self.settings.thresholds.min_pairs,
            traffic=traffic_seen,
            upstreams=tuple(upstreams),
            pairs=pairs,
            verdicts=verdicts,
            verdict=worst(v.status for v in verdicts),
            embeddings=dims,
            examples=examples_found,
            timeline=Timeline(win.start, win.width, tuple(series)),
            notes=tuple(self.notes),
            quality=quality,
            recordings=tuple(
                _recording(r, v, p)
                for r, v, p in zip(seen.spans, self.files.versions, self.files.paths, strict=True)
            ),
            binned=self.binned,
        )

    def _answers(
        self, group: _Group, rows: tuple[int, int], win: Window, dbs: list[Reading]
    ) -> Any:
        db = dbs[group.source]
        params = _range_params(group, rows, win)
        pricing = self.settings.pricing
        cost = cost_sql("r", price_sql(pricing, "r", group.upstream, params))
        names = self.revision_names if group.role == "primary" else ()
        params.update((f"rev{i}", name) for i, name in enumerate(names))
        query = upstream_query(
            group.role,
            db.where + since_clause(db.flt, "r"),
            cost,
            binned=self.binned,
            priced=bool(pricing),
            revisions=len(names),
        )
        row = parsed_answers(query.named(db.rows(query.sql, params)[0]))
        row["revision_names"] = names
        return "answers", group, row

    def _minutes(self, source: int, win: Window, dbs: list[Reading]) -> list[Any]:
        """A recording's primaries, read from its minutes."""
        groups = {g.upstream: g for g in self.groups if g.source == source and g.role == "primary"}
        found = minutes.answers(dbs[source], win, self.settings.pricing, set(groups))
        return [("answers", groups[upstream], row) for upstream, row in found.items()]

    def _pair_sql(self, group: _Group, params: dict[str, Any]) -> tuple[str, str, str]:
        pricing = self.settings.pricing
        p_cost = cost_sql("p", price_sql(pricing, "p", None, params))
        s_cost = cost_sql("s", price_sql(pricing, "s", group.upstream, params))
        return self.dbs[group.source].where + since_clause(self.db.flt, "s"), p_cost, s_cost

    def _copies(
        self, group: _Group, rows: tuple[int, int], win: Window, dbs: list[Reading]
    ) -> list[Any]:
        """One range of copies: their answers' figures, and their pairs' with the primaries."""
        db = dbs[group.source]
        params = {
            **_range_params(group, rows, win),
            # per mille of the pairs with bodies kept for the similarity sample: some 4 times
            # the sample from a group this size
            "keep": min(1000, 1 + 4000 * SIMILARITY_SAMPLE // max(group.last, 1)),
        }
        where, p_cost, s_cost = self._pair_sql(group, params)
        query = copy_query(
            group.role,
            where,
            p_cost,
            s_cost,
            binned=self.binned,
            priced=bool(self.settings.pricing),
        )
        row = query.named(db.rows(query.sql, params)[0])
        answers = {k[len(ANSWER) :]: row.pop(k) for k in list(row) if k.startswith(ANSWER)}
        return [
            ("answers", group, parsed_answers(answers)),
            ("pairs", group, parsed_pairs(row)),
        ]

    def _few_ratio_pairs(self, raws: list[PairSums]) -> None:
        """A binned read keeps sums, not pairs; a ratio over few pairs is bootstrapped from
        the pairs themselves, so they are read again, the few there are."""
        if not self.binned:
            return
        for raw in raws:
            for kind in ("token", "cost"):
                n = raw.ratio_sums(kind).n
                if not 0 < n <= BOOTSTRAP_MAX_PAIRS:
                    continue
                for group in self.groups:
                    if group.role != raw.role or group.upstream not in raw.upstream.split("+"):
                        continue
                    params: dict[str, Any] = {
                        "upstream": group.upstream,
                        "role": group.role,
                        "lo": 0,
                        "hi": group.last + 1,
                    }
                    where, p_cost, s_cost = self._pair_sql(group, params)
                    sql = ratio_pairs_sql(where, p_cost, s_cost, kind)
                    for p, s in self.dbs[group.source].rows(sql, params):
                        raw.pairs[kind] += (float(p), float(s))

    def explain(
        self,
        seen: Traffic,
        sums: list[UpstreamSums],
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
            rows = sorted(
                (row for s in sums for row in s.unpriced_rows()),
                key=lambda r: (r[0], r[1], r[2] or ""),
            )
            self.notes += unpriced_notes(rows, self.settings.pricing)


def _groups(db: Reading) -> list[tuple[str, str]]:
    """The distinct (upstream, role) pairs, by seeking through their index; not "-", the
    sidecar's own refusals, which no upstream answered."""
    found = []
    con = db.con
    row = con.execute(
        "SELECT upstream, role FROM responses ORDER BY upstream, role LIMIT 1"
    ).fetchone()
    while row is not None:
        if row[0] != "-":
            found.append((str(row[0]), str(row[1])))
        # Two plain seeks: SQLite walks the index for a row value's (upstream, role) > (?, ?).
        role = con.execute(
            "SELECT role FROM responses WHERE upstream = ? AND role > ? ORDER BY role LIMIT 1",
            row,
        ).fetchone()
        row = (
            (row[0], role[0])
            if role is not None
            else con.execute(
                "SELECT upstream, role FROM responses WHERE upstream > ? "
                "ORDER BY upstream, role LIMIT 1",
                row[:1],
            ).fetchone()
        )
    return found


def _revisions(db: Reading) -> list[str]:
    """The distinct revisions the exchanges were served under, by seeking through their
    index (a few seeks, where reading the column costs every row)."""
    found: list[str] = []
    con = db.con
    row = con.execute("SELECT min(revision) FROM exchanges").fetchone()
    while row is not None and row[0] is not None and len(found) < REVISIONS:
        found.append(str(row[0]))
        row = con.execute("SELECT min(revision) FROM exchanges WHERE revision > ?", row).fetchone()
    return found


def _seen(failovers: bool, rolled: frozenset[int], dbs: list[Reading]) -> Seen:
    """The exchange-side queries over every recording, and each one's span; the `rolled`
    recordings' counts of exchanges read from their minutes."""
    spans = [
        minutes.traffic_rows(db) if i in rolled else traffic_rows(Many([db]))
        for i, db in enumerate(dbs)
    ]
    revisions = [
        row
        for i, db in enumerate(dbs)
        for row in (minutes.revisions(db) if i in rolled else revisions_rows(Many([db])))
    ]
    seen = read_seen(Many(dbs), failovers, [row for rows in spans for row in rows], revisions)
    seen.spans.extend(spans)
    seen.judged.extend(row for db in dbs for row in quality_rows(db.con, db.where, db.params))
    return seen


def _look(raw: PairSums, dbs: list[Reading]) -> tuple[list[tuple[float, int, int]], list[Example]]:
    """The similarity sample and the examples of one pairing, read from their recordings."""
    scores = similarities(dbs, raw)
    return scores, (examples(dbs, raw, scores) if raw.role in COMPARED else [])


def _series(sums: UpstreamSums, win: Window) -> Series:
    buckets = range(win.buckets)
    return Series(
        sums.upstream,
        sums.role,
        tuple(sums.buckets[b] for b in buckets),
        tuple(sums.error_buckets[b] for b in buckets),
    )


def _recording(rows: list[Any], schema: int, path: str) -> Recording:
    return Recording(
        path=path,
        schema=schema,
        exchanges=sum(r[2] for r in rows),
        first_ts=min((r[4] for r in rows), default=None),
        last_ts=max((r[5] for r in rows), default=None),
    )


def _range_params(group: _Group, rows: tuple[int, int], win: Window) -> dict[str, Any]:
    """The parameters every query over one range of a group's rows takes."""
    return {
        "upstream": group.upstream,
        "role": group.role,
        "lo": rows[0],
        "hi": rows[1],
        "t0": win.start,
        "width": win.width,
    }


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
