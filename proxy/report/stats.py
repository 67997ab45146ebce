"""The verdict's statistics: 95% intervals for rates, rate differences, medians and ratios,
the grade an interval earns against a band, and how many more pairs would likely settle it.

Pure functions over counts and lists, stdlib only: every method here is a closed form or a
short loop, so none needs numpy. The bootstrap is seeded, so a report is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Final, Literal, NamedTuple

Z: Final = NormalDist().inv_cdf(0.975)  # 1.959963...: two-sided 95%
BOOTSTRAP_RESAMPLES: Final = 1_000
# Above this many pairs a ratio's interval comes from the delta method, which is as good there
# and costs one pass instead of a thousand.
BOOTSTRAP_MAX_PAIRS: Final = 1_000
SEED: Final = 20_240_501
# Exact binomial ranks for a median's interval up to this many values; the normal
# approximation beyond is off by less than one rank.
_EXACT_RANKS: Final = 5_000
MAX_GROWTH: Final = 100.0  # "more pairs" looks no further than 100 times the pairs there are

Grade = Literal["pass", "warn", "fail", "inconclusive"]


class Interval(NamedTuple):
    low: float
    high: float


def wilson(k: float, n: float) -> Interval:
    """Wilson's score interval for k successes in n trials (Wilson 1927; Newcombe 1998's
    method 3). Unlike the textbook p ± z·se it is never empty at 0 or n: 0 in 30 gives
    [0, 0.114], not [0, 0]."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = k / n
    z2 = Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return Interval(max(centre - half, 0.0), min(centre + half, 1.0))


def newcombe(k1: float, n1: float, k2: float, n2: float) -> Interval:
    """p1 - p2 for two independent samples: Newcombe's hybrid score interval (1998, method
    10), built from each rate's Wilson interval."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return Interval(
        max(d - math.hypot(p1 - l1, u2 - p2), -1.0),
        min(d + math.hypot(u1 - p1, p2 - l2), 1.0),
    )


def newcombe_paired(both: float, first: float, second: float, n: float) -> Interval:
    """p1 - p2 for two rates measured on the same n items: Newcombe's square-and-add interval
    for paired data (1998, method 10). `both` items had the event on both sides, `first` on
    the first side only, `second` on the second only. The correlation phi is Newcombe's,
    with his continuity correction."""
    k1, k2 = both + first, both + second
    p1, p2 = k1 / n, k2 / n
    l1, u1 = wilson(k1, n)
    l2, u2 = wilson(k2, n)
    neither = n - both - first - second
    margins = k1 * (n - k1) * k2 * (n - k2)
    phi = 0.0
    if margins > 0:
        cross = both * neither - first * second
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    d = p1 - p2
    below = (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
    above = (u1 - p1) ** 2 + (p2 - l2) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
    return Interval(
        max(d - math.sqrt(max(below, 0.0)), -1.0), min(d + math.sqrt(max(above, 0.0)), 1.0)
    )


def median_ranks(n: int) -> int | None:
    """The 1-based rank r such that [x(r), x(n + 1 - r)] of n sorted values covers their
    population median with at least 95% probability, whatever their distribution (the sign
    test inverted); None below 6 values, where no such interval exists."""
    if n < 6:
        return None
    if n > _EXACT_RANKS:
        return max(int((n - Z * math.sqrt(n)) / 2), 1)
    # The largest r with P(Binomial(n, 1/2) <= r - 1) <= 0.025, in exact integers:
    # `below` is 2^n P(X <= r - 1) and `term` is C(n, r).
    limit = 2**n
    r = below = 0
    term = 1
    while 40 * (below + term) <= limit:
        below += term
        r += 1
        term = term * (n - r + 1) // r
    return r


def median_interval(values: Sequence[float]) -> tuple[float, Interval | None]:
    """The median of `values` (sorted) and its distribution-free 95% interval (None: too few)."""
    n = len(values)
    mid = values[(n - 1) // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    r = median_ranks(n)
    return mid, None if r is None else Interval(values[r - 1], values[n - r])


def ratio_of_sums(pairs: Sequence[tuple[float, float]]) -> tuple[float, Interval] | None:
    """sum(second) / sum(first) over pairs measured on the same items, and its 95% interval:
    a percentile bootstrap that resamples whole pairs (seeded: the same pairs always give the
    same interval), or beyond `BOOTSTRAP_MAX_PAIRS` the delta method. None if sum(first) is 0.
    """
    n = len(pairs)
    first = [p for p, _ in pairs]
    second = [s for _, s in pairs]
    total = sum(first)
    if n == 0 or total <= 0:
        return None
    estimate = sum(second) / total
    if n == 1:
        return estimate, Interval(estimate, estimate)
    if n > BOOTSTRAP_MAX_PAIRS:
        residuals = sum((s - estimate * p) ** 2 for p, s in pairs)
        return estimate, _delta(estimate, residuals, total, n)
    rng = random.Random(SEED + n)
    take_first, take_second = first.__getitem__, second.__getitem__
    everyone = range(n)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.choices(everyone, k=n)
        below = sum(map(take_first, pick))
        if below > 0:
            ratios.append(sum(map(take_second, pick)) / below)
    ratios.sort()
    if not ratios:
        return None
    last = len(ratios) - 1
    return estimate, Interval(ratios[round(0.025 * last)], ratios[round(0.975 * last)])


def _delta(estimate: float, residuals: float, total: float, n: int) -> Interval:
    se = math.sqrt(max(residuals, 0.0) / (n * (n - 1))) / (total / n)
    return Interval(max(estimate - Z * se, 0.0), estimate + Z * se)


class Sums(NamedTuple):
    """What the delta method needs of pairs (p, s), summed where they are stored."""

    n: int
    p: float
    s: float
    pp: float
    ss: float
    ps: float


def ratio_from_sums(sums: Sums) -> tuple[float, Interval] | None:
    """`ratio_of_sums` by the delta method from the pairs' sums, for more than
    `BOOTSTRAP_MAX_PAIRS` pairs, without holding them: sum((s - r p)^2) expands to
    ss - 2 r ps + r^2 pp (identical sides give exactly 0)."""
    if sums.n == 0 or sums.p <= 0:
        return None
    estimate = sums.s / sums.p
    residuals = sums.ss - 2 * estimate * sums.ps + estimate * estimate * sums.pp
    return estimate, _delta(estimate, residuals, sums.p, sums.n)


# --- grading -------------------------------------------------------------------------------


def grade(interval: Interval, warn: float, fail: float) -> Grade:
    """Smaller is better. Pass only when the whole interval is below `warn`, fail when it is
    all at or beyond `fail`, warn when it lies between them; an interval that still spans a
    band edge is inconclusive."""
    low, high = interval
    if high < warn:
        return "pass"
    if low >= fail:
        return "fail"
    if low >= warn and high < fail:
        return "warn"
    return "inconclusive"


def narrowed(estimate: float, interval: Interval, growth: float) -> Interval:
    """The interval `growth` times as many pairs would likely give if the estimate held: its
    arms shrink with the square root of the pairs, the usual rate for a mean or median."""
    shrink = 1 / math.sqrt(growth)
    return Interval(
        estimate - (estimate - interval.low) * shrink,
        estimate + (interval.high - estimate) * shrink,
    )


def pairs_to_settle(n: int, settled: Callable[[float], bool]) -> int | None:
    """How many more than `n` pairs would likely make a check conclusive, given
    `settled(growth)` (is the check conclusive with `growth` times the pairs, the estimate
    unchanged?); None if not within `MAX_GROWTH` times as many: the estimate sits on a band
    edge, and only a change in it would settle the check."""
    if n <= 0 or not settled(MAX_GROWTH):
        return None
    low, high = 1.0, MAX_GROWTH
    while high * n - low * n > 1:  # bisect on the count, to the pair
        mid = (low + high) / 2
        if settled(mid):
            high = mid
        else:
            low = mid
    return max(math.ceil(high * n) - n, 1)
