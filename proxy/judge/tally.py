"""What the judgments say, for the report: each copy's wins, ties and losses against the
primary, with Wilson's 95% intervals, in all and per route and model, for the shadow
upstreams and for the noise pairs (how often the primary "beats" itself).

`read` runs the one query over the report's snapshot, `tally` is pure.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.judge.outcome import Outcome, combine, for_candidate
from proxy.judge.prompt import Winner
from proxy.report.stats import wilson

_FAILED: Final = "!"  # an answer that was not a verdict
_WINNERS: Final[dict[str, Winner]] = {"A": "A", "B": "B", "tie": "tie"}


@dataclass(frozen=True, slots=True)
class Judged:
    """One copy's pairs as one judge saw them, each judged in both orders."""

    role: str  # "shadow", or "noise": the primary judged against itself
    upstream: str  # the copy's
    judge: str  # the judge model
    route: str | None  # None: every route and model together
    model: str | None
    pairs: int  # with a verdict in both orders
    wins: int
    ties: int
    losses: int
    # Wilson's 95% interval of each share of `pairs`.
    win_low: float
    win_high: float
    tie_low: float
    tie_high: float
    loss_low: float
    loss_high: float
    swapped: int  # pairs whose two verdicts differ once read for the copy: the order decided
    failed: int  # pairs with a judge answer that was not a verdict: not graded


@dataclass(frozen=True, slots=True)
class Quality:
    totals: tuple[Judged, ...]  # per role, copy upstream and judge
    by_route: tuple[Judged, ...]  # ... and per route and model

    def judge_of(self, upstream: str, role: str = "shadow") -> Judged | None:
        """The copy upstream's totals (its shadow or replay copies) by the judge that judged
        most of its pairs."""
        mine = [j for j in self.totals if (j.role, j.upstream) == (role, upstream)]
        return max(mine, key=lambda j: (j.pairs, j.judge), default=None)

    def floor(self, judge: str) -> tuple[int, int]:
        """Noise pairs judged by `judge` and how many the copy lost: pooled, as the primary's
        floor is the primary's whichever upstream it was."""
        noise = [j for j in self.totals if j.role == "noise" and j.judge == judge]
        return sum(j.pairs for j in noise), sum(j.losses for j in noise)


NO_QUALITY: Final = Quality((), ())

_READ: Final = """
SELECT j.role, j.candidate, j.judge_model, e.route, e.model,
  max(CASE WHEN j.shown_first = 'primary' THEN coalesce(j.winner, '!') END),
  max(CASE WHEN j.shown_first = 'candidate' THEN coalesce(j.winner, '!') END)
FROM judgments j CROSS JOIN exchanges e ON e.id = j.exchange_id
WHERE 1 = 1{where}
GROUP BY j.exchange_id, j.role, j.judge_model"""


def read(con: sqlite3.Connection, where: str, params: dict[str, Any]) -> Quality:
    """The judgments of the exchanges the report's filter (`where`, on `e`) keeps."""
    return tally(rows(con, where, params))


def rows(con: sqlite3.Connection, where: str, params: dict[str, Any]) -> list[Any]:
    """`tally`'s rows from one recording: several recordings' rows, concatenated, pool."""
    return con.execute(_READ.format(where=where), params).fetchall()


# role, copy upstream, judge, route, model
_Key = tuple[str, str, str, str | None, str | None]


class _Counts:
    __slots__ = ("failed", "outcomes", "swapped")

    def __init__(self) -> None:
        self.outcomes: dict[Outcome, int] = {"win": 0, "tie": 0, "loss": 0}
        self.swapped = 0
        self.failed = 0


def _judged(key: _Key, c: _Counts) -> Judged:
    role, upstream, judge, route, model = key
    wins, ties, losses = c.outcomes["win"], c.outcomes["tie"], c.outcomes["loss"]
    n = wins + ties + losses
    win, tie, loss = wilson(wins, n), wilson(ties, n), wilson(losses, n)
    return Judged(
        role, upstream, judge, route, model, n, wins, ties, losses,
        win.low, win.high, tie.low, tie.high, loss.low, loss.high, c.swapped, c.failed,
    )  # fmt: skip


def tally(rows: Iterable[Sequence[Any]]) -> Quality:
    """Rows of (role, copy upstream, judge, route, model, verdict with the primary shown
    first, verdict with the copy shown first); a verdict is "A", "B", "tie", "!" for an
    answer that was not one, or None while that order is still to be judged."""
    totals: dict[_Key, _Counts] = defaultdict(_Counts)
    by_route: dict[_Key, _Counts] = defaultdict(_Counts)
    for role, upstream, judge, route, model, primary_first, copy_first in rows:
        if primary_first is None or copy_first is None:
            continue  # half judged: the next run finishes it
        counts = (
            totals[(role, upstream, judge, None, None)],
            by_route[(role, upstream, judge, route, model)],
        )
        if _FAILED in (primary_first, copy_first):
            for c in counts:
                c.failed += 1
            continue
        first, second = _WINNERS[primary_first], _WINNERS[copy_first]
        outcome = combine(first, second)
        swapped = for_candidate("primary", first) != for_candidate("candidate", second)
        for c in counts:
            c.outcomes[outcome] += 1
            c.swapped += swapped
    return Quality(
        tuple(_judged(k, totals[k]) for k in sorted(totals, key=_place)),
        tuple(_judged(k, by_route[k]) for k in sorted(by_route, key=_place)),
    )


def _place(key: _Key) -> tuple[int, str, str, str, str]:
    """Shadow copies first, then replays, then the noise floor; by upstream, judge, route and
    model."""
    role, upstream, judge, route, model = key
    rank = {"shadow": 0, "replay": 1}.get(role, 2)
    return (rank, upstream, judge, route or "", model or "")
