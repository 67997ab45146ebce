"""The quality check of the report's verdict, graded as every other check is.

The figure is the share of judged shadow pairs the new gateway lost (a worse answer in both
orders), less the share of noise pairs the primary lost to itself by the same judge: that
much the judge and the primary's own variety account for. Wins do not offset losses: a user
given a worse answer is not consoled by another given a better one. Newcombe's interval for
the difference (Wilson's for the share alone, said so, without judged noise pairs), graded
against `report.thresholds.quality` by the rules of `report/verdict.py`: pass only with the
whole interval below `warn`, fail with it all at or beyond `fail`, inconclusive while it
spans a band edge or rests on fewer than `min_pairs` pairs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from proxy.judge.tally import Judged, Quality
from proxy.report.data import Check, Verdict
from proxy.report.stats import Grade, Interval, grade, newcombe, pairs_to_settle, wilson
from proxy.report.thresholds import Band
from proxy.report.verdict import worst

NAME: Final = "quality"
NOT_JUDGED: Final = "no judged pairs: run `python -m proxy judge` (see docs/judge.md)"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _evidence(j: Judged, floor: tuple[int, int]) -> str:
    said = (
        f"{j.losses:,} of {j.pairs:,} pairs lost to the primary, {j.ties:,} tied, {j.wins:,} "
        f"won, judged blind by {j.judge} in both orders"
    )
    n, lost = floor
    if n:
        said += f"; less the noise floor: the primary lost to itself in {lost:,} of {n:,} ({_pct(lost / n)})"
    return said


def _notes(j: Judged, floor: tuple[int, int], min_pairs: int, status: Grade) -> list[str]:
    notes = []
    if j.pairs < min_pairs and status != "fail":
        notes.append(f"fewer pairs than min_pairs ({j.pairs:,} < {min_pairs})")
    if not floor[0]:
        notes.append(
            "not discounted: no noise pairs judged by the same judge (set shadow.noise_sample, "
            "then run the judge again)"
        )
    if j.swapped:
        notes.append(
            f"the order of the answers changed the judge's verdict in {j.swapped:,} pairs "
            f"({_pct(j.swapped / j.pairs)}), counted as ties"
        )
    if j.failed:
        notes.append(f"{j.failed:,} pairs not graded: a judge answer was not a verdict")
    return notes


def quality_check(
    quality: Quality, upstream: str, band: Band, min_pairs: int, role: str = "shadow"
) -> Check:
    """The quality check of the shadow (or replayed) `upstream`; "n/a" until some of its
    pairs are judged."""
    j = quality.judge_of(upstream, role)
    if j is None or not j.pairs:
        evidence = NOT_JUDGED if j is None else f"no pair judged in both orders by {j.judge}"
        return Check(
            NAME, "n/a", None, None, None, "share", band.warn, band.fail, 0, "", evidence,
            None if j is None or not j.failed else f"{j.failed:,} pairs not graded: a judge "
            "answer was not a verdict", None,
        )  # fmt: skip
    floor = quality.floor(j.judge)
    bad, n = j.losses, j.pairs
    nn, nbad = floor

    def interval_at(g: float) -> Interval:
        return newcombe(bad * g, n * g, nbad * g, nn * g) if nn else wilson(bad * g, n * g)

    def grade_at(g: float) -> Grade:
        low, high = interval_at(g)
        return grade(Interval(low, high), band.warn, band.fail)

    value = bad / n - (nbad / nn if nn else 0.0)
    status: Grade = grade_at(1.0)
    notes = _notes(j, floor, min_pairs, status)
    if n < min_pairs and status != "fail":
        status = "inconclusive"
    more = None
    if status == "inconclusive":
        settle = pairs_to_settle(n, lambda g: grade_at(g) != "inconclusive")
        more = None if settle is None else max(settle, min_pairs - n, 0)
        if settle is None:
            notes.append("the estimate sits on a band edge: more pairs alone may not settle it")
    low, high = interval_at(1.0)
    return Check(
        NAME, status, value, low, high, "difference" if nn else "share", band.warn, band.fail,
        n, "Newcombe, less the noise floor" if nn else "Wilson", _evidence(j, floor),
        "; ".join(notes) or None, more,
    )  # fmt: skip


def with_quality(verdict: Verdict, quality: Quality, band: Band, min_pairs: int) -> Verdict:
    """The verdict with the quality check last, and its status the worst of them all again."""
    check = quality_check(quality, verdict.upstream, band, min_pairs, verdict.role)
    checks = (*verdict.checks, check)
    return replace(verdict, checks=checks, status=worst(c.status for c in checks))
