"""The report's quality section as plain tables of text cells, which the text and HTML
renderers draw as they draw every other table."""

from __future__ import annotations

from typing import Final, NamedTuple

from proxy.judge.tally import Judged, Quality

QUALITY_HELP: Final = (
    "An LLM judge (python -m proxy judge) compared each sampled copy's answer with the "
    "primary's for the same request, blind, twice: once with each answer shown first. A win "
    "or loss counts only when both orders agree; otherwise it is a tie, since judges prefer "
    "whichever answer they see first. The noise rows judge the primary against itself: how "
    "often it 'loses' is the floor the quality check subtracts. 95% intervals are Wilson's."
)


class Rows(NamedTuple):
    """A table: the fields of `report.text.Table`, in its order."""

    caption: str
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: str


def _share(k: int, n: int, low: float, high: float) -> str:
    if not n:
        return "-"
    return f"{k / n * 100:.1f}% ({low * 100:.0f}-{high * 100:.0f})"


def _figures(j: Judged) -> tuple[str, str, str, str]:
    return (
        f"{j.pairs:,}",
        _share(j.wins, j.pairs, j.win_low, j.win_high),
        _share(j.ties, j.pairs, j.tie_low, j.tie_high),
        _share(j.losses, j.pairs, j.loss_low, j.loss_high),
    )


def _label(j: Judged) -> str:
    return f"{j.upstream} ({j.role})"


def quality_tables(quality: Quality) -> tuple[Rows, ...]:
    """Win / tie / loss of each copy against the primary, in all and per route and model."""
    if not quality.totals:
        return ()
    totals = Rows(
        "the copy's answer against the primary's: share (95% interval); flipped: order changed it",
        ("copies", "judge", "pairs", "win", "tie", "loss", "flipped", "no verdict"),
        tuple(
            (
                _label(j),
                j.judge,
                *_figures(j),
                f"{j.swapped:,}",
                f"{j.failed:,}",
            )
            for j in quality.totals
        ),
        "llrrrrrr",
    )
    by_route = Rows(
        "judged pairs per route and model",
        ("copies", "judge", "route", "model", "pairs", "win", "tie", "loss"),
        tuple(
            (_label(j), j.judge, j.route or "-", j.model or "(none)", *_figures(j))
            for j in quality.by_route
        ),
        "llllrrrr",
    )
    return (totals, by_route)
