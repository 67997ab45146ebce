"""One report over several recordings, the binned figures against the exact ones, and the
files and patterns refused by name. Recordings are made by the real recorder."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.record.schema import MIGRATIONS, StoreError
from proxy.report.bins import RELATIVE_ERROR
from proxy.report.build import ReportFilter, build_report
from proxy.report.data import Percentiles, Report
from proxy.report.text import render_json, render_text
from tests.report.fleet import record
from tests.report.test_build import SETTINGS


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """Two pods' recordings, and one recording of both pods' rows together."""
    import asyncio

    root = tmp_path_factory.mktemp("fleet")
    a, b, both = (str(root / name) for name in ("pod-a.db", "pod-b.db", "both.db"))

    async def make() -> None:
        await record(a, "a", 3_000, seed=1)
        await record(b, "b", 2_000, seed=2)
        await record(both, "a", 3_000, seed=1)
        await record(both, "b", 2_000, seed=2)

    asyncio.run(make())
    return a, b, both


def _rounded(value: Any) -> Any:
    """Floats to 10 significant digits: dollars summed file by file differ in the last bits."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _same_except_where_from(pooled: Report, single: Report) -> None:
    a, b = (_rounded(orjson.loads(render_json(r))) for r in (pooled, single))
    for part in ("traffic", "upstreams", "pairs", "verdicts", "verdict", "timeline"):
        assert a[part] == b[part], part


def test_two_pods_recordings_report_as_one_with_counts_summed_and_pairs_pooled(
    pods: tuple[str, str, str],
) -> None:
    a, b, both = pods
    one, two = (build_report(p, ReportFilter(), SETTINGS) for p in (a, b))
    pooled = build_report([a, b], ReportFilter(), SETTINGS)
    assert pooled.traffic.exchanges == one.traffic.exchanges + two.traffic.exchanges == 5_000
    shadow = {p.role: p.pairs for p in pooled.pairs}["shadow"]
    assert shadow == sum(p.pairs for r in (one, two) for p in r.pairs if p.role == "shadow")
    # the verdicts are those of the pairs pooled, exactly as if one sidecar had recorded all
    _same_except_where_from(pooled, build_report(both, ReportFilter(), SETTINGS))
    assert [(r.path, r.exchanges) for r in pooled.recordings] == [(a, 3_000), (b, 2_000)]
    text = render_text(pooled)
    assert "2 recordings, pooled as one:" in text
    assert f"{b}: 2,000 exchanges, 2023-11-14" in text
    assert b'"recordings"' in render_json(pooled)


def test_filters_apply_to_every_recording(pods: tuple[str, str, str]) -> None:
    a, b, both = pods
    flt = ReportFilter(since=1_700_000_050.0, until=1_700_000_120.0)
    _same_except_where_from(build_report([a, b], flt, SETTINGS), build_report(both, flt, SETTINGS))


def _close(binned: Percentiles, exact: Percentiles) -> None:
    assert binned.n == exact.n
    for got, want in ((binned.p50, exact.p50), (binned.p90, exact.p90), (binned.p99, exact.p99)):
        assert got is not None and want is not None
        assert abs(got - want) <= RELATIVE_ERROR * abs(want) + 1e-9


def test_the_binned_figures_agree_with_the_exact_ones_within_their_precision(
    pods: tuple[str, str, str],
) -> None:
    a, _, _ = pods
    exact = build_report(a, ReportFilter(), SETTINGS)
    binned = build_report(a, ReportFilter(), SETTINGS, exact_limit=0)
    assert (exact.binned, binned.binned) == (False, True)
    assert binned.traffic == exact.traffic
    for got, want in zip(binned.upstreams, exact.upstreams, strict=True):
        assert (got.responses, got.succeeded, got.total_tokens) == (
            want.responses, want.succeeded, want.total_tokens,
        )  # fmt: skip
        assert got.cost == pytest.approx(want.cost)
        for name in ("ttfb_ms", "total_ms"):
            _close(getattr(got, name), getattr(want, name))
    for got_p, want_p in zip(binned.pairs, exact.pairs, strict=True):
        assert (got_p.pairs, got_p.status, got_p.text) == (want_p.pairs, want_p.status, want_p.text)
        _close(got_p.total_diff_ms, want_p.total_diff_ms)
        assert got_p.token_ratio == want_p.token_ratio
        r, w = got_p.latency_ratio, want_p.latency_ratio
        assert r.n == w.n and r.value == pytest.approx(w.value, rel=RELATIVE_ERROR)
        assert r.low == pytest.approx(w.low, rel=RELATIVE_ERROR)
        assert r.high == pytest.approx(w.high, rel=RELATIVE_ERROR)
    assert [v.status for v in binned.verdicts] == [v.status for v in exact.verdicts]
    assert "log bins" in render_text(binned)


def test_an_older_schema_is_read_as_if_migrated(tmp_path: Path) -> None:
    old = tmp_path / "v2.db"
    con = sqlite3.connect(old)
    for migration in MIGRATIONS[:2]:
        for statement in migration:
            con.execute(statement)
    con.execute("PRAGMA user_version = 2")
    con.execute(
        "INSERT INTO exchanges VALUES ('x1', 1.0, 'chat', 'POST', '/v1/chat/completions', "
        "'m', 0, 'r1', NULL, NULL, NULL)"
    )
    con.commit()
    con.close()
    report = build_report(str(old), ReportFilter(), SETTINGS)
    assert report.traffic.exchanges == 1
    assert report.recordings[0].schema == 2


def test_files_that_are_not_recordings_are_refused_by_name(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, but long enough to be read as a header " * 20)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version = 999")
    con.close()
    for path, why in (
        (text, "is not a recording"),
        (empty, "is not a recording"),
        (newer, "newer"),
    ):
        with pytest.raises(StoreError, match=why) as caught:
            build_report([str(path)], ReportFilter(), SETTINGS)
        assert str(path) in str(caught.value)


def test_the_cli_reads_a_glob_and_refuses_a_pattern_matching_nothing(
    pods: tuple[str, str, str], tmp_path: Path
) -> None:
    a = pods[0]
    pattern = str(Path(a).parent / "pod-*.db")
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--db", pattern, "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert '"exchanges": 5000' in ok.stdout
    nothing = str(tmp_path / "none-*.db")
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--db", a, "--db", nothing],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"--db {nothing}: no file matches the pattern" in out.stderr
