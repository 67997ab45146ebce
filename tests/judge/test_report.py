"""The judge's verdicts in the report: the quality check, and win / tie / loss per copy and per
route and model beside the noise floor, in text, JSON and HTML."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from proxy.report.build import ReportFilter, build_report, load_json
from proxy.report.data import Report
from proxy.report.html import render_html
from proxy.report.text import render_json, render_text
from proxy.report.thresholds import ReportSettings
from tests.judge.recordings import T0, pair, write


def judged_recording(path: Path, shadow_lost: int, shadow: int, noise: int) -> Path:
    """Pairs on two routes; the shadow loses the first `shadow_lost` in both orders, ties the
    rest; the primary ties itself in every noise pair."""
    exchanges, responses, judgments = [], [], []
    for i in range(shadow + noise):
        role = "shadow" if i < shadow else "noise"
        x, rows = pair(f"x{i:03d}", role, ts=T0 + i, route="chat" if i % 2 else "support")
        exchanges.append(x)
        responses += rows
        lost = i < shadow_lost
        candidate = "new" if role == "shadow" else "old"
        for order, winner in (("primary", "A"), ("candidate", "B" if lost else "A")):
            judgments.append(
                (x.id, role, "judge-1", order, "j", candidate, T0, winner, "", None, 1, 1)
            )
    write(path, exchanges, responses)
    con = sqlite3.connect(path)
    with con:
        con.executemany(f"INSERT INTO judgments VALUES ({','.join('?' * 12)})", judgments)
    con.close()
    return path


def quality_of(report: Report) -> str:
    (verdict,) = report.verdicts
    return next(c.status for c in verdict.checks if c.name == "quality")


def test_a_gateway_the_judge_finds_worse_fails_the_quality_check(tmp_path: Path) -> None:
    db = judged_recording(tmp_path / "rec.db", shadow_lost=20, shadow=40, noise=20)
    report = build_report(str(db), ReportFilter(), ReportSettings())
    assert quality_of(report) == "fail" and report.verdict == "fail"
    text = render_text(report)
    assert "QUALITY, JUDGED" in text
    row = r"new \(shadow\)\s+judge-1\s+40\s+0\.0% \(0-9\)\s+50\.0% \(35-65\)\s+50\.0% \(35-65\)"
    assert re.search(row, text), text
    assert "old (noise)" in text and "judged pairs per route and model" in text
    assert "lost to itself in 0 of 20" in text


def test_a_gateway_that_only_ties_passes_and_the_figures_survive_json_and_html(
    tmp_path: Path,
) -> None:
    db = judged_recording(tmp_path / "rec.db", shadow_lost=0, shadow=120, noise=60)
    report = build_report(str(db), ReportFilter(), ReportSettings())
    assert quality_of(report) == "pass"
    assert load_json(render_json(report)) == report
    html = render_html(report)
    assert "the copy&#x27;s answer against the primary&#x27;s: share (95% interval)" in html
    assert "quality" in html


def test_the_report_s_filter_keeps_the_judgments_of_its_window_only(tmp_path: Path) -> None:
    db = judged_recording(tmp_path / "rec.db", shadow_lost=10, shadow=40, noise=0)
    late = build_report(str(db), ReportFilter(since=T0 + 10), ReportSettings())
    (shadow,) = late.quality.totals
    assert (shadow.pairs, shadow.losses) == (30, 0)
    routed = build_report(str(db), ReportFilter(route="chat"), ReportSettings())
    assert {j.route for j in routed.quality.by_route} == {"chat"}
