"""The report as text: terminal tables, JSON, and the formatters the HTML report shares."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson

from proxy.judge.section import QUALITY_HELP, quality_tables
from proxy.record.schema import SCHEMA_VERSION
from proxy.replay.compare import pairs_of
from proxy.report.bins import RELATIVE_ERROR
from proxy.report.data import (
    Agreement,
    Check,
    PairStats,
    Percentiles,
    Report,
    ReportFilter,
    RevisionSeen,
    RouteDims,
    Traffic,
    UpstreamStats,
    ratio,
)

# Shared by the terminal, the HTML report and the verdict's evidence, so all say the same thing.


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} ms" if abs(x) >= 10 else f"{x:.1f} ms"


def times(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def money(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def _figure(unit: str, v: float) -> str:
    if unit == "ratio":
        return times(v)
    if unit == "difference":
        return f"{v * 100:+.2f} pts"
    return pct(v, 2)


def value_text(check: Check) -> str:
    return "-" if check.value is None else _figure(check.unit, check.value)


def interval_text(check: Check) -> str:
    """The 95% interval and how it was made, e.g. "95% interval x0.97 to x1.08 (bootstrap)"."""
    if check.value is None:
        return ""
    if check.low is None or check.high is None:
        return "no interval yet: too few pairs"
    low, high = check.low, check.high
    if check.unit == "difference":
        span = f"{low * 100:+.2f} to {high * 100:+.2f} pts"
    else:
        span = f"{_figure(check.unit, low)} to {_figure(check.unit, high)}"
    return f"95% interval {span} ({check.method})"


def settle_text(check: Check) -> str | None:
    if check.status != "inconclusive" or check.more is None:
        return None
    return f"about {check.more:,} more pairs would likely settle it"


def band_text(check: Check) -> str:
    if check.unit == "ratio":
        return f"warn from x{check.warn:g}, fail from x{check.fail:g}"
    unit = " pts" if check.unit == "difference" else "%"
    return f"warn from {check.warn * 100:g}{unit}, fail from {check.fail * 100:g}{unit}"


VERDICT_HELP: Final = (
    "Each check is an estimate with its 95% interval, smaller is better, graded against "
    "report.thresholds: pass only when the whole interval is below `warn`, fail when it is all "
    "at or beyond `fail`, warn when it lies between; inconclusive while it still spans a band "
    "edge, with about how many more pairs would settle it. Below min_pairs ({min_pairs}) a "
    "check is inconclusive unless it already fails. The verdict is the worst conclusive "
    "check, and inconclusive rather than pass while any check is."
)
NOISE_HELP: Final = (
    "Noise pairs send the same request to the primary upstream twice: how often the primary "
    "disagrees with itself is a floor no new gateway can beat. Every output check (shape, "
    "text, tool calls, JSON) subtracts it; read similarity against it too."
)


@dataclass(frozen=True, slots=True)
class Table:
    caption: str
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: str  # per column: "l" or "r"


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    tables: tuple[Table, ...]
    text: tuple[str, ...] = ()


def _name(x: str | None) -> str:
    return "(none)" if x is None else x


def _p3(p: Percentiles) -> str:
    if not p.n:
        return "-"
    return " / ".join(
        f"{v:,.0f}" if abs(v) >= 10 else f"{v:.1f}" for v in (p.p50, p.p90, p.p99) if v is not None
    )


def _of(a: Agreement) -> str:
    return f"{pct(a.rate)} of {a.compared:,}" if a.compared else "-"


def _label(p: PairStats) -> str:
    return f"{p.upstream} ({p.role})"


def sections(report: Report) -> tuple[Section, ...]:
    """The report's tables, in order, as text cells."""
    judged = tuple(Table(*rows) for rows in quality_tables(report.quality))
    return (
        Section("Traffic", _traffic(report.traffic)),
        Section("Reliability", _reliability(report.upstreams)),
        Section("Latency", _latency(report)),
        Section("Tokens and cost", _tokens(report)),
        Section("Compatibility", _compatibility(report), (NOISE_HELP,) if report.pairs else ()),
        *((Section("Quality, judged", judged, (QUALITY_HELP,)),) if judged else ()),
    )


def _traffic(t: Traffic) -> tuple[Table, ...]:
    shares = (
        Table(
            "primary answers per upstream: the share actually served",
            ("upstream", "answers", "share"),
            tuple((_name(c.name), f"{c.count:,}", pct(c.share)) for c in t.by_upstream),
            "lrr",
        ),
        *(
            Table(
                f"exchanges per {title}",
                (title, "exchanges", "share"),
                tuple((_name(c.name), f"{c.count:,}", pct(c.share)) for c in counts),
                "lrr",
            )
            for title, counts in (("route", t.by_route), ("model", t.by_model))
        ),
    )
    tables = (*shares, _revisions(t.revisions)) if t.revisions else shares
    if t.calls.retried:
        tables = (*tables, _retries(t))
    if t.failovers:
        tables = (*tables, _failovers(t))
    if t.trips:
        tables = (*tables, _trips(t))
    return (*tables, _refusals(t)) if t.refused else tables


def _failovers(t: Traffic) -> Table:
    return Table(
        "calls failed over: their upstream failed before the app had a byte, another answered",
        ("failed", "answered by", "calls"),
        tuple((f.failed, f.to, f"{f.calls:,}") for f in t.failovers),
        "llr",
    )


def _trips(t: Traffic) -> Table:
    return Table(
        "the guard took these out of rotation (until the config changed or a reset)",
        ("when", "upstream", "rule", "revision", "evidence"),
        tuple((when(g.ts), g.upstream, g.rule, g.revision, g.figures) for g in t.trips),
        "lllll",
    )


def _retries(t: Traffic) -> Table:
    c = t.calls
    return Table(
        "calls the SDKs retried: the attempts of one call (linked by its Idempotency-Key, or by its retry count and body) count once",
        ("calls", "retried", "their attempts", "most attempts", "failed on every attempt"),
        (
            (
                f"{c.calls:,}",
                f"{c.retried:,}",
                f"{c.attempts:,}",
                f"{c.max_attempts:,}",
                f"{c.failed:,}",
            ),
        ),
        "rrrrr",
    )


def _refusals(t: Traffic) -> Table:
    return Table(
        "requests the sidecar refused itself, sent to no upstream",
        ("status", "reason", "requests"),
        tuple(
            ("-" if r.status is None else str(r.status), r.reason or "-", f"{r.count:,}")
            for r in t.refused
        ),
        "rlr",
    )


def _revisions(revisions: tuple[RevisionSeen, ...]) -> Table:
    return Table(
        "config revisions: configured split against the share served under it",
        ("revision", "in force from", "requests", "split", "served"),
        tuple(
            (
                r.revision + (" (rollback)" if r.rollback else ""),
                when(r.started),
                f"{r.requests:,}",
                " ".join(f"{s.upstream}:{s.weight:g}" for s in r.split) or "-",
                " ".join(f"{s.upstream}:{s.weight * 100:.1f}%" for s in r.served) or "-",
            )
            for r in revisions
        ),
        "llrll",
    )


def _reliability(ups: tuple[UpstreamStats, ...]) -> tuple[Table, ...]:
    tables = (
        Table(
            "error rate: upstream errors only; the app leaving or the sidecar refusing is not one",
            ("upstream", "role", "responses", "ok", "error rate"),
            tuple(
                (
                    s.upstream,
                    s.role,
                    f"{s.responses:,}",
                    pct(s.succeeded / s.responses),
                    pct(s.error_rate, 2),
                )
                for s in ups
            ),
            "llrrr",
        ),
        Table(
            "errors by kind",
            ("upstream", "role", "kind", "responses", "share"),
            tuple(
                (s.upstream, s.role, _name(e.name), f"{e.count:,}", pct(e.share, 2))
                for s in ups
                for e in s.errors
            ),
            "lllrr",
        ),
    )
    return tuple(t for t in tables if t.rows)  # no errors: no table of them


def _latency(report: Report) -> tuple[Table, ...]:
    own = Table(
        "successful responses, ms, p50 / p90 / p99 (nearest rank)",
        ("upstream", "role", "ttfb", "ttft (streams)", "total"),
        tuple(
            (s.upstream, s.role, _p3(s.ttfb_ms), _p3(s.ttft_ms), _p3(s.total_ms))
            for s in report.upstreams
        ),
        "llrrr",
    )
    if not report.pairs:
        return (own,)
    paired = Table(
        "paired difference, copy minus primary on the same request, ms p50 / p90 / p99",
        ("copies", "pairs", "ttfb", "ttft", "total"),
        tuple(
            (
                _label(p),
                f"{p.pairs:,}",
                _p3(p.ttfb_diff_ms),
                _p3(p.ttft_diff_ms),
                _p3(p.total_diff_ms),
            )
            for p in report.pairs
        ),
        "lrrrr",
    )
    return (own, paired)


def _tokens(report: Report) -> tuple[Table, ...]:
    # Image answers carry no tokens: their count is the figure, shown when there are any.
    images = any(s.images for s in report.upstreams)
    own = Table(
        "responses without usage are counted apart, never as zero; cached: of the prompt",
        (
            "upstream",
            "role",
            "usage",
            "no usage",
            "prompt",
            "cached",
            "completion",
            *(("images",) if images else ()),
            "cost",
            "per 1k",
        ),
        tuple(
            (
                s.upstream,
                s.role,
                f"{s.with_usage:,}",
                f"{s.no_usage:,}",
                f"{s.prompt_tokens:,}",
                pct(ratio(s.cached_tokens, s.prompt_tokens)),
                f"{s.completion_tokens:,}",
                *((f"{s.images:,}",) if images else ()),
                money(s.cost),
                money(s.cost_per_1k),
            )
            for s in report.upstreams
        ),
        "llrrrrrrr" + ("r" if images else ""),
    )
    if not report.pairs:
        return (own,)
    paired = Table(
        "copy / primary over pairs with usage on both sides; cached prompt: copy vs primary",
        ("copies", "pairs", "prompt", "completion", "total", "cost", "cached prompt"),
        tuple(
            (
                _label(p),
                f"{p.usage_pairs:,}",
                *(
                    times(ratio(o, q))
                    for o, q in zip(p.other_tokens, p.primary_tokens, strict=True)
                ),
                times(ratio(p.other_cost, p.primary_cost)),
                f"{pct(ratio(p.other_cached, p.other_tokens[0]))} vs "
                f"{pct(ratio(p.primary_cached, p.primary_tokens[0]))}",
            )
            for p in report.pairs
        ),
        "lrrrrrr",
    )
    return (own, paired)


def _compatibility(report: Report) -> tuple[Table, ...]:
    tables = []
    if report.pairs:
        tables.append(_agreement(report.pairs))
    formed = [s for s in report.upstreams if s.streams or s.json_answers]
    if formed:
        tables.append(_well_formed(formed))
    if report.embeddings:
        tables.append(_embeddings(report.embeddings))
    return tuple(tables)


def _embeddings(routes: tuple[RouteDims, ...]) -> Table:
    return Table(
        "embedding dimensions per route: one index takes vectors of one length",
        ("route", "upstream", "role", "dimensions", "answers", ""),
        tuple(
            (r.route, d.upstream, d.role, str(d.dims), f"{d.answers:,}", "MIXED" if r.mixed else "")
            for r in routes
            for d in r.seen
        ),
        "lllrrl",
    )


def _agreement(pairs: tuple[PairStats, ...]) -> Table:
    rows = [
        ("same status class", *(_of(p.status) for p in pairs)),
        ("same status and shape", *(_of(p.status_shape) for p in pairs)),
        ("same tool calls", *(_of(p.tool_calls) for p in pairs)),
        ("same text (exact)", *(_of(p.text) for p in pairs)),
        (
            "similarity mean / p10",
            *(
                f"{p.similarity.mean:.2f} / {p.similarity.p10:.2f} of {p.similarity.sampled:,}"
                if p.similarity.mean is not None and p.similarity.p10 is not None
                else "-"
                for p in pairs
            ),
        ),
    ]
    return Table(
        "copy against primary on the same request",
        ("", *(_label(p) for p in pairs)),
        tuple(rows),
        "l" + "r" * len(pairs),
    )


def _well_formed(formed: list[UpstreamStats]) -> Table:
    return Table(
        "streams well formed ([DONE] and usage), JSON-mode answers that parse",
        ("upstream", "role", "streams ok", "JSON ok"),
        tuple(
            (
                s.upstream,
                s.role,
                f"{pct(ratio(s.streams_ok, s.streams))} of {s.streams:,}" if s.streams else "-",
                f"{pct(ratio(s.json_ok, s.json_answers))} of {s.json_answers:,}"
                if s.json_answers
                else "-",
            )
            for s in formed
        ),
        "llrr",
    )


def _text_table(table: Table) -> list[str]:
    rows = [table.head, *table.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(table.head))]
    out = [f"  {table.caption}"]
    for r in rows:
        cells = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(r, widths, table.align, strict=True)
        ]
        out.append(("    " + "  ".join(cells)).rstrip())
    return out


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent) or [indent]


def filter_text(f: ReportFilter) -> str:
    shown = [
        f"{k}={when(v) if k in ('since', 'until') else v}"
        for k in ("since", "until", "route", "model", "revision", "replay")
        if (v := getattr(f, k)) is not None
    ]
    return ", ".join(shown) if shown else "none"


def recordings_text(report: Report) -> list[str]:
    """The files read, when several were pooled, each with its span; and whether latencies
    came from bins."""
    out = []
    if len(report.recordings) > 1:
        out.append(f"{len(report.recordings)} recordings, pooled as one:")
        for r in report.recordings:
            span = f"{when(r.first_ts)} .. {when(r.last_ts)}" if r.exchanges else "no exchanges"
            old = f", schema {r.schema}" if r.schema != SCHEMA_VERSION else ""
            out.append(f"  {r.path}: {r.exchanges:,} exchanges, {span}{old}")
    if report.binned:
        out.append(
            "Latency percentiles and medians are read from log bins: each within "
            f"{RELATIVE_ERROR:.1%} of the exact value (docs/report.md)."
        )
    return out


def render_text(report: Report) -> str:
    """Terminal tables, readable in 100 columns."""
    t = report.traffic
    out = [
        f"Migration report, generated {when(report.generated_at)}",
        f"Recording: {report.db_path}",
        *recordings_text(report),
        f"Filter: {filter_text(report.filter)}",
    ]
    if not t.exchanges:
        return "\n".join([*out, "", *report.notes]) + "\n"
    out.append(
        f"Window: {when(t.first_ts)} .. {when(t.last_ts)}: {t.exchanges:,} exchanges, "
        f"{t.streams:,} of them streams"
    )
    out += ["", f"VERDICT: {report.verdict.upper()}"]
    if not report.verdicts:
        out.append("  no shadow or replay pairs: nothing was compared")
    for v in report.verdicts:
        pairs = next(p.pairs for p in report.pairs if (p.upstream, p.role) == (v.upstream, v.role))
        out.append(f"  {v.upstream}: {v.status.upper()} over {pairs:,} {pairs_of(v.role)}")
        for c in v.checks:
            status = f"[{c.status.upper()}]"
            out.append(f"    {status:14} {c.name:<14} {value_text(c):>11}   ({band_text(c)})")
            interval = "; ".join(x for x in (interval_text(c), settle_text(c)) if x)
            for line in (interval, c.evidence, f"note: {c.note}" if c.note else ""):
                if line:
                    out += _wrap(line, " " * 19)
    out += _wrap(VERDICT_HELP.format(min_pairs=report.min_pairs), "  ")
    for section in sections(report):
        out += ["", section.title.upper()]
        for table in section.tables:
            out += _text_table(table)
        for paragraph in section.text:
            out += _wrap(paragraph, "  ")
    if report.examples:
        out += ["", "EXAMPLES TO LOOK AT"]
        for e in report.examples:
            sim = f", similarity {e.similarity:.2f}" if e.similarity is not None else ""
            out.append(
                f"  {e.reason}: {e.exchange_id} at {when(e.ts)}, {e.route} {_name(e.model)}{sim}"
            )
            for path in e.paths:
                out += _wrap(path, "    ")
            for label, side in (("primary", e.primary), ("copy", e.other)):
                status = "no response" if side.status is None else str(side.status)
                kind = f" {side.error_kind}" if side.error_kind else ""
                out += _wrap(
                    f"{label} {side.upstream}: {status}{kind}, {ms(side.total_ms)}", "    "
                )
                if side.text is not None:
                    out += _wrap('"' + " ".join(side.text.split())[:300] + '"', "      ")
    if report.notes:
        out += ["", "NOTES"]
        for note in report.notes:
            out += _wrap(note, "  ")
    return "\n".join(out) + "\n"


def render_json(report: Report) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2)
