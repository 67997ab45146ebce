"""The report's side: the judgments tallied, the quality check graded, the tables. No sockets."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.judge.grade import NOT_JUDGED, quality_check, with_quality
from proxy.judge.section import quality_tables
from proxy.judge.tally import NO_QUALITY, read, tally
from proxy.report.data import Verdict
from proxy.report.thresholds import Band
from tests.judge.recordings import T0, exchange, pair, write

BAND = Band(warn=0.05, fail=0.15)


def rows(role: str, upstream: str, verdicts: list[tuple[str | None, str | None]], route: str = "r"):  # type: ignore[no-untyped-def]
    return [(role, upstream, "judge-1", route, "m", p, c) for p, c in verdicts]


def test_only_a_preference_in_both_orders_counts_and_half_judged_pairs_wait() -> None:
    q = tally(
        rows("shadow", "new", [("B", "A"), ("A", "B"), ("A", "A"), ("tie", "B"), ("A", None)])
        + rows("shadow", "new", [("!", "A")])
    )
    (t,) = q.totals
    assert (t.pairs, t.wins, t.ties, t.losses) == (4, 1, 2, 1)
    assert t.swapped == 2  # ("A", "A") and ("tie", "B"): the order changed the verdict
    assert t.failed == 1
    assert 0 < t.win_low < 0.25 < t.win_high < 1


def test_totals_and_routes_keep_shadow_first_then_the_noise_floor() -> None:
    q = tally(
        rows("noise", "old", [("A", "A")])
        + rows("shadow", "new", [("A", "B")], route="b")
        + rows("shadow", "new", [("B", "A")], route="a")
    )
    assert [(j.role, j.route) for j in q.totals] == [("shadow", None), ("noise", None)]
    assert [(j.role, j.route) for j in q.by_route] == [
        ("shadow", "a"),
        ("shadow", "b"),
        ("noise", "r"),
    ]
    assert q.floor("judge-1") == (1, 0) and q.floor("judge-2") == (0, 0)


def worse(losses: int, n: int, noise_losses: int = 0, noise: int = 0) -> list[tuple]:  # type: ignore[type-arg]
    verdicts = [("A", "B")] * losses + [("A", "A")] * (n - losses)
    floor = [("A", "B")] * noise_losses + [("A", "A")] * (noise - noise_losses)
    return rows("shadow", "new", verdicts) + rows("noise", "old", floor)  # type: ignore[arg-type]


def test_a_gateway_losing_every_pair_fails_and_one_losing_none_passes() -> None:
    lost = quality_check(tally(worse(60, 60, 0, 30)), "new", BAND, 30)
    assert lost.status == "fail" and lost.value == pytest.approx(1.0)
    assert lost.unit == "difference" and lost.method == "Newcombe, less the noise floor"
    assert "60 of 60 pairs lost" in lost.evidence and "lost to itself in 0 of 30" in lost.evidence
    kept = quality_check(tally(worse(0, 200, 0, 60)), "new", BAND, 30)
    assert kept.status == "pass" and kept.value == 0.0
    assert kept.note is not None and "changed the judge's verdict in 200 pairs" in kept.note


def test_the_noise_floor_is_subtracted_and_few_pairs_are_inconclusive() -> None:
    floored = quality_check(tally(worse(20, 100, 20, 100)), "new", BAND, 30)
    assert floored.value == pytest.approx(0.0)
    few = quality_check(tally(worse(0, 10)), "new", BAND, 30)
    assert few.status == "inconclusive" and few.unit == "share"
    assert few.note is not None and "fewer pairs than min_pairs (10 < 30)" in few.note
    assert "not discounted" in few.note
    assert few.more is not None and few.more >= 20


def test_without_judgments_the_check_is_n_a_and_says_how_to_get_them() -> None:
    check = quality_check(NO_QUALITY, "new", BAND, 30)
    assert check.status == "n/a" and check.evidence == NOT_JUDGED
    verdict = with_quality(Verdict("new", "pass", ()), tally(worse(30, 30)), BAND, 30)
    assert verdict.status == "fail" and verdict.checks[-1].name == "quality"


def test_the_tables_show_win_tie_loss_with_intervals_beside_the_noise_rows() -> None:
    totals, by_route = quality_tables(tally(worse(1, 4, 0, 2)))
    assert totals.head[:6] == ("copies", "judge", "pairs", "win", "tie", "loss")
    assert totals.rows[0][:3] == ("new (shadow)", "judge-1", "4")
    assert totals.rows[0][5].startswith("25.0% (")  # with its interval
    assert totals.rows[1][0] == "old (noise)"
    assert len(by_route.rows) == 2 and all(len(r) == len(by_route.align) for r in by_route.rows)
    assert quality_tables(NO_QUALITY) == ()


def test_the_report_s_filter_applies_to_the_judgments(tmp_path: Path) -> None:
    early, early_rows = pair("x1", ts=T0)
    late, late_rows = pair("x2", ts=T0 + 100)
    db = write(tmp_path / "rec.db", [early, late, exchange("x3")], [*early_rows, *late_rows])
    con = sqlite3.connect(db)
    try:
        for xid in ("x1", "x2"):
            for order, winner in (("primary", "A"), ("candidate", "B")):
                con.execute(
                    "INSERT INTO judgments VALUES (?, 'shadow', 'judge-1', ?, 'j', 'new', 0, ?, "
                    "'', NULL, 1, 1)",
                    (xid, order, winner),
                )
        everything = read(con, "", {})
        recent = read(con, " AND e.ts >= :since", {"since": T0 + 50})
    finally:
        con.close()
    assert everything.totals[0].losses == 2
    assert recent.totals[0].losses == 1
