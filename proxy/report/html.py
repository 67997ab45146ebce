"""The migration report as one self-contained HTML file: tables, charts and example diffs.

Opens with no network: plotly's bundle is inlined once and the figures are plain JSON specs
drawn by a few lines of our own script. Everything read from the database is escaped.
"""

from __future__ import annotations

import difflib
import html
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.replay.compare import as_copy
from proxy.report.data import Example, Report, Side
from proxy.report.text import (
    VERDICT_HELP,
    Table,
    band_text,
    filter_text,
    interval_text,
    ms,
    recordings_text,
    sections,
    settle_text,
    value_text,
    when,
)

INSTALL = "pip install 'llm-sidecar[report]'"


def _plotly_js() -> str:
    """plotly is the `report` extra, left out of the sidecar's image: imported only here."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as e:
        raise ImportError(f"the HTML report needs plotly, which is not installed: {INSTALL}") from e
    return str(get_plotlyjs())


_COLORS = {"primary": "#1f77b4", "shadow": "#ff7f0e", "noise": "#7f7f7f", "replay": "#2ca02c"}
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.2em}caption{text-align:left;color:#555;padding:.2em 0}
td,th{border-bottom:1px solid #eee;padding:.25em .7em;vertical-align:top}th{text-align:left}
td.r{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.meta{color:#555}
.status{font-weight:bold;padding:.1em .5em;border-radius:3px;color:#fff}
.pass{background:#2e8b57}.warn{background:#d98c00}.fail{background:#c0392b}.n\\/a{background:#999}
.inconclusive{background:#5b6f8a}
.note{color:#555;font-size:.92em}.chart{height:420px;margin-bottom:1em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.pair pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.6em;margin:0}
del{background:#fdd;text-decoration:none}ins{background:#dfd;text-decoration:none}
"""


def write_html(report: Report, out_path: str) -> None:
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{out.parent} is a file, not a directory") from None
    out.write_text(render_html(report), encoding="utf-8")


def render_html(report: Report) -> str:
    figures = _figures(report) if report.traffic.exchanges else []
    body = [_header(report)]
    if figures:
        body += [_verdict(report), _charts(figures)]
        for section in sections(report):
            body.append(f"<h2>{_e(section.title)}</h2>")
            body += [_table(t) for t in section.tables]
            body += [f'<p class="note">{_e(p)}</p>' for p in section.text]
        body.append(_examples(report.examples))
    if report.notes:
        body.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>"
        )
    # "<" is escaped inside the JSON so no string from the db can close the script element.
    specs = orjson.dumps(figures).decode().replace("<", "\\u003c")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Migration report: {_e(report.db_path)}</title><style>{_STYLE}</style>"
        f"<script>{_plotly_js()}</script></head><body>{''.join(body)}"
        f'<script type="application/json" id="figures">{specs}</script>'
        "<script>for (const f of JSON.parse(document.getElementById('figures').textContent))"
        " Plotly.newPlot(f.id, f.data, f.layout, {responsive: true, displaylogo: false});"
        "</script></body></html>"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status(status: str) -> str:
    return f'<span class="status {_e(status)}">{_e(status.upper())}</span>'


def _header(report: Report) -> str:
    t = report.traffic
    window = (
        f"{when(t.first_ts)} .. {when(t.last_ts)}: {t.exchanges:,} exchanges, {t.streams:,} streams"
        if t.exchanges
        else "no exchanges"
    )
    return (
        f'<h1>Migration report</h1><p class="meta">{_e(report.db_path)}, generated '
        f"{_e(when(report.generated_at))}<br>"
        + "".join(f"{_e(line)}<br>" for line in recordings_text(report))
        + f"Filter: {_e(filter_text(report.filter))}<br>"
        f"Window: {_e(window)}</p>"
    )


def _verdict(report: Report) -> str:
    out = [f"<h2>Verdict {_status(report.verdict)}</h2>"]
    if not report.verdicts:
        out.append("<p>No shadow or replay pairs: nothing was compared.</p>")
    for v in report.verdicts:
        rows = "".join(
            f"<tr><td>{_e(c.name)}</td><td>{_status(c.status)}</td>"
            f'<td class="r">{_e(value_text(c))}</td><td>{_e(interval_text(c))}'
            + (f"<br>{_e(settle)}" if (settle := settle_text(c)) else "")
            + f"</td><td>{_e(band_text(c))}</td><td>{_e(c.evidence)}"
            + (f'<br><span class="note">{_e(c.note)}</span>' if c.note else "")
            + "</td></tr>"
            for c in v.checks
        )
        out.append(
            f"<table><caption>{_e(v.upstream)} {_e(as_copy(v.role))}: {_status(v.status)}</caption>"
            "<tr><th>check</th><th>status</th><th>estimate</th><th>95% interval</th>"
            f"<th>bands</th><th>evidence</th></tr>{rows}</table>"
        )
    out.append(f'<p class="note">{_e(VERDICT_HELP.format(min_pairs=report.min_pairs))}</p>')
    return "".join(out)


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.head)
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="r">{_e(c)}</td>' if a == "r" else f"<td>{_e(c)}</td>"
            for c, a in zip(row, table.align, strict=True)
        )
        + "</tr>"
        for row in table.rows
    )
    return f"<table><caption>{_e(table.caption)}</caption><tr>{head}</tr>{rows}</table>"


def _charts(figures: list[dict[str, Any]]) -> str:
    return "<h2>Charts</h2>" + "".join(
        f'<div class="chart" id="{_e(f["id"])}"></div>' for f in figures
    )


# --- figures, as plain plotly specs ---------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "margin": {"t": 50, "r": 20}, **extra}


def _figures(report: Report) -> list[dict[str, Any]]:
    figures = []
    for key, title in (
        ("total_sketch", "Total time of successful responses, ms"),
        ("ttft_sketch", "Time to first token of successful streams, ms"),
    ):
        traces = [
            {
                "type": "violin",
                "name": f"{s.upstream} ({s.role})",
                "y": getattr(s, key),
                "line": {"color": _COLORS.get(s.role, "#333")},
                "box": {"visible": True},
                "meanline": {"visible": True},
                "points": False,
                "spanmode": "hard",
            }
            for s in report.upstreams
            if getattr(s, key)
        ]
        if traces:
            layout = _layout(
                title, yaxis={"type": "log", "title": {"text": "ms"}}, showlegend=False
            )
            figures.append({"id": f"fig-{key}", "data": traces, "layout": layout})
    figures.append(_errors_over_time(report))
    figures.append(_tokens(report))
    return figures


def _errors_over_time(report: Report) -> dict[str, Any]:
    tl = report.timeline
    traces = []
    for s in tl.series:
        if s.role == "noise":
            continue
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{s.upstream} ({s.role})",
                "x": [_iso(tl.start + i * tl.bucket_seconds) for i in range(len(s.requests))],
                "y": [
                    100 * e / n if n else None for e, n in zip(s.errors, s.requests, strict=True)
                ],
                "line": {"dash": "dot"} if s.role == "shadow" else {},
                "customdata": list(s.requests),
                "hovertemplate": "%{y:.2f}% of %{customdata} requests",
            }
        )
    shapes, notes = [], []
    first = report.traffic.first_ts
    last = report.traffic.last_ts
    for r in report.traffic.revisions:
        if r.started is None or first is None or last is None or not first <= r.started <= last:
            continue
        color = "#c0392b" if r.rollback else "#888"
        x = _iso(r.started)
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": x,
                "x1": x,
                "y0": 0,
                "y1": 1,
                "line": {
                    "color": color,
                    "width": 2 if r.rollback else 1,
                    "dash": "solid" if r.rollback else "dot",
                },
            }
        )
        notes.append(
            {
                "x": x,
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "text": r.revision + (" rollback" if r.rollback else ""),
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "top",
                "font": {"color": color},
            }
        )
    title = f"Upstream errors over time, % of requests per {tl.bucket_seconds / 60:g} min"
    layout = _layout(
        title,
        yaxis={"title": {"text": "%"}, "rangemode": "tozero"},
        shapes=shapes,
        annotations=notes,
    )
    return {"id": "fig-errors", "data": traces, "layout": layout}


def _tokens(report: Report) -> dict[str, Any]:
    ups = [s for s in report.upstreams if s.with_usage]
    names = [f"{s.upstream} ({s.role})" for s in ups]
    traces = [
        {
            "type": "bar",
            "name": label,
            "x": names,
            "y": [getattr(s, field) / s.with_usage for s in ups],
            "customdata": [getattr(s, field) for s in ups],
            "hovertemplate": "%{y:.0f} per answer, %{customdata:,} in all",
        }
        for label, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"))
    ]
    layout = _layout(
        "Tokens per answer with usage", barmode="group", yaxis={"title": {"text": "tokens"}}
    )
    return {"id": "fig-tokens", "data": traces, "layout": layout}


# --- examples ---------------------------------------------------------------------------------

_WORDS = re.compile(r"\s+|\S+")


def diff_words(a: str, b: str) -> tuple[str, str]:
    """Both texts as escaped HTML, words only in `a` in <del>, words only in `b` in <ins>."""
    left, right = _WORDS.findall(a), _WORDS.findall(b)
    out_a: list[str] = []
    out_b: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, left, right, autojunk=False
    ).get_opcodes():
        x, y = _e("".join(left[i1:i2])), _e("".join(right[j1:j2]))
        if op == "equal":
            out_a.append(x)
            out_b.append(y)
            continue
        if x:
            out_a.append(f"<del>{x}</del>")
        if y:
            out_b.append(f"<ins>{y}</ins>")
    return "".join(out_a), "".join(out_b)


def _side(label: str, side: Side, text: str | None) -> str:
    status = "no response" if side.status is None else str(side.status)
    extra = " ".join(x for x in (side.error_kind, side.error, side.finish_reason) if x)
    body = f"<pre>{text}</pre>" if text is not None else '<p class="note">no body recorded</p>'
    return (
        f"<div><b>{_e(label)} {_e(side.upstream)}</b>: {_e(status)} {_e(extra)}, "
        f"{_e(ms(side.total_ms))}{body}</div>"
    )


def _examples(examples: tuple[Example, ...]) -> str:
    if not examples:
        return ""
    out = ["<h2>Examples to look at</h2>"]
    for e in examples:
        a, b = e.primary.text, e.other.text
        if a is not None and b is not None:
            a, b = diff_words(a, b)
        else:
            a = None if a is None else _e(a)
            b = None if b is None else _e(b)
        sim = f", similarity {e.similarity:.2f}" if e.similarity is not None else ""
        paths = (
            '<ul class="paths">'
            + "".join(f"<li><code>{_e(p)}</code></li>" for p in e.paths)
            + "</ul>"
            if e.paths
            else ""
        )
        out.append(
            f'<h3>{_e(e.reason)}: {_e(e.exchange_id)}</h3><p class="meta">{_e(when(e.ts))}, '
            f"{_e(e.route)}, {_e(e.model or '(no model)')}{'' if not e.stream else ', stream'}{_e(sim)}</p>"
            f'{paths}<div class="pair">{_side("primary", e.primary, a)}{_side("copy", e.other, b)}</div>'
        )
    return "".join(out)
