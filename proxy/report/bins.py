"""Distributions the report reads percentiles and medians from, in memory that does not grow
with the rows: exact values while a recording is small, log-spaced bins beyond.

A value's bin is `round(ln|v| * BINS_PER_E)` (v in milliseconds, or a ratio), signed, and the
bin stands for `e^(bin / BINS_PER_E)`: within `RELATIVE_ERROR` (0.5%) of every value in it. A
nearest-rank percentile read from bins is the right rank's bin, so it is off by at most that.
Magnitudes below `FLOOR` count as `FLOOR` (1 microsecond); 0 stays 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

BINS_PER_E: Final = 100
RELATIVE_ERROR: Final = math.expm1(0.5 / BINS_PER_E)  # 0.501%
FLOOR: Final = 0.001
# Bin keys are shifted away from 0 (which is 0 itself) and signed with the value:
# ln(FLOOR) * BINS_PER_E is -691, so every non-zero value's key is at least 1309 in magnitude.
_SHIFT: Final = 2000


def bin_sql(expr: str) -> str:
    """SQL for the bin key of a value in milliseconds (or a ratio); NULL stays NULL. `expr`
    should be a column (it is read up to five times). One ln() and a CAST per value: the
    cast truncates a positive number, so adding 0.5 rounds it (half up, where Python's
    round() goes half to even: the two differ only on exact ties)."""
    floor = _SHIFT + round(math.log(FLOOR) * BINS_PER_E)
    return (
        f"(CASE WHEN {expr} >= {FLOOR} THEN CAST(ln({expr}) * {BINS_PER_E} + {_SHIFT + 0.5} "
        f"AS INTEGER) WHEN {expr} > 0 THEN {floor} WHEN {expr} = 0 THEN 0 "
        f"WHEN {expr} > -{FLOOR} THEN -{floor} "
        f"ELSE -CAST(ln(-{expr}) * {BINS_PER_E} + {_SHIFT + 0.5} AS INTEGER) END)"
    )


def bin_of(value: float) -> int:
    """The bin key `bin_sql` gives `value`."""
    if value == 0:
        return 0
    mag = round(math.log(max(abs(value), FLOOR)) * BINS_PER_E)
    return _SHIFT + mag if value > 0 else -_SHIFT - mag


def value_of(key: int) -> float:
    """The value a bin key stands for."""
    if key == 0:
        return 0.0
    mag = math.exp((abs(key) - _SHIFT) / BINS_PER_E)
    return mag if key > 0 else -mag


class Histogram:
    """How many times each value was seen: exact values (`scale` is their unit in the values
    the report shows, 1/1000 for microseconds) until `binned` is set, bin keys after."""

    __slots__ = ("binned", "counts", "scale")

    def __init__(self, *, binned: bool = False, scale: float = 1.0) -> None:
        self.counts: Counter[int | float] = Counter()
        self.binned = binned
        self.scale = scale

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def add_values(self, values: Iterable[int | float]) -> None:
        self.counts.update(values)

    def merge(self, other: Histogram) -> None:
        """Pools another histogram into this one; an exact one is binned to pool with bins."""
        if other.binned and not self.binned:
            self._bin()
        if self.binned and not other.binned:
            for value, count in other.counts.items():
                self.counts[bin_of(value * other.scale)] += count
            return
        self.counts.update(other.counts)

    def _bin(self) -> None:
        exact, self.counts = self.counts, Counter()
        for value, count in exact.items():
            self.counts[bin_of(value * self.scale)] += count
        self.binned = True

    def ranked(self) -> list[tuple[float, int]]:
        """(value as the report shows it, count), smallest first."""
        if self.binned:
            return sorted((value_of(int(k)), c) for k, c in self.counts.items())
        return sorted((k * self.scale, c) for k, c in self.counts.items())


def at_ranks(ranked: Sequence[tuple[float, int]], ranks: Sequence[int]) -> list[float]:
    """The values at 1-based `ranks` (ascending) of the distribution `ranked`."""
    out: list[float] = []
    seen = 0
    i = 0
    for value, count in ranked:
        seen += count
        while i < len(ranks) and ranks[i] <= seen:
            out.append(value)
            i += 1
        if i == len(ranks):
            break
    return out
