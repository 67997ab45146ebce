"""The verdict's statistics against published values, and the grade each interval earns."""

from __future__ import annotations

import random

import pytest

from proxy.report import stats
from proxy.report.stats import Interval, grade, newcombe, newcombe_paired, wilson


def approx(low: float, high: float) -> Interval:
    return pytest.approx((low, high), abs=5e-5)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_worked_examples(k: int, n: int, low: float, high: float) -> None:
    assert wilson(k, n) == approx(low, high)


def test_no_failures_in_30_is_not_a_pass_at_a_1_point_band_and_in_400_it_is() -> None:
    assert wilson(0, 30).high == pytest.approx(0.1135, abs=5e-5)
    assert grade(wilson(0, 30), 0.01, 0.05) == "inconclusive"
    assert wilson(0, 400).high < 0.01
    assert grade(wilson(0, 400), 0.01, 0.05) == "pass"


def test_every_failure_in_29_fails_without_waiting_for_more_pairs() -> None:
    assert grade(wilson(29, 29), 0.01, 0.05) == "fail"


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "low", "high"),
    [
        # Newcombe (1998), "Interval estimation for the difference between independent
        # proportions", method 10; and Fagerland et al.'s Perondi (2004) example
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (7, 34, 1, 34, 0.0189, 0.3404),
    ],
)
def test_newcombe_hybrid_score_matches_published_intervals(
    k1: int, n1: int, k2: int, n2: int, low: float, high: float
) -> None:
    assert newcombe(k1, n1, k2, n2) == approx(low, high)


def test_newcombe_paired_matches_the_cavo_2012_example() -> None:
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8:
    # 59 on both sides, 6 on the first only, 16 on the second only, 80 on neither.
    assert newcombe_paired(59, 6, 16, 161) == approx(-0.1186, -0.0046)


def test_newcombe_paired_with_no_events_is_symmetric_and_shrinks_with_n() -> None:
    at_300, at_400 = newcombe_paired(0, 0, 0, 300), newcombe_paired(0, 0, 0, 400)
    assert at_300.low == -at_300.high
    assert at_300.high == pytest.approx(wilson(0, 300).high)
    assert grade(at_300, 0.01, 0.05) == "inconclusive"
    assert grade(at_400, 0.01, 0.05) == "pass"


@pytest.mark.parametrize(("n", "rank"), [(5, None), (6, 1), (10, 2), (20, 6), (100, 40)])
def test_median_ranks_are_the_sign_tests(n: int, rank: int | None) -> None:
    # Conover, "Practical Nonparametric Statistics", Table A3 (two-sided 95%)
    assert stats.median_ranks(n) == rank


def test_median_interval_covers_the_middle_values() -> None:
    values = [float(v) for v in range(1, 21)]
    mid, interval = stats.median_interval(values)
    assert (mid, interval) == (10.5, Interval(6.0, 15.0))
    assert stats.median_interval([1.0, 2.0, 3.0]) == (2.0, None)


def test_large_samples_use_the_normal_rank_within_one_of_the_exact() -> None:
    exact = stats.median_ranks(5000)
    assert exact is not None
    assert abs((stats.median_ranks(5001) or 0) - exact) <= 1


def test_ratio_of_sums_is_reproducible_and_covers_a_known_ratio() -> None:
    rng = random.Random(3)
    pairs = [(p := rng.randint(100, 900), p * 1.2 + rng.gauss(0, 40)) for _ in range(400)]
    first = stats.ratio_of_sums(pairs)
    assert first == stats.ratio_of_sums(pairs)  # seeded
    assert first is not None
    estimate, interval = first
    assert interval.low < 1.2 < interval.high
    assert interval.low < estimate < interval.high
    assert interval.high - interval.low < 0.05


def test_ratio_of_sums_of_identical_sides_is_exactly_one() -> None:
    assert stats.ratio_of_sums([(10.0, 10.0), (30.0, 30.0), (7.0, 7.0)]) == (
        1.0,
        Interval(1.0, 1.0),
    )
    assert stats.ratio_of_sums([]) is None
    assert stats.ratio_of_sums([(0.0, 5.0)]) is None


def test_ratio_of_sums_beyond_the_bootstrap_agrees_with_it() -> None:
    rng = random.Random(5)
    pairs = [(p := rng.randint(100, 900), p * 0.9 + rng.gauss(0, 30)) for _ in range(1000)]
    boot = stats.ratio_of_sums(pairs)
    delta = stats.ratio_of_sums([*pairs, pairs[0]])  # one more: the delta method
    assert boot is not None and delta is not None
    assert delta[1].low == pytest.approx(boot[1].low, abs=0.003)
    assert delta[1].high == pytest.approx(boot[1].high, abs=0.003)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (Interval(0.0, 0.009), "pass"),
        (Interval(0.0, 0.01), "inconclusive"),  # touches warn: not shown to be below it
        (Interval(0.01, 0.049), "warn"),
        (Interval(0.02, 0.06), "inconclusive"),
        (Interval(0.05, 0.2), "fail"),
        (Interval(-0.01, 0.2), "inconclusive"),
    ],
)
def test_grade_needs_the_whole_interval_on_one_side_of_an_edge(
    interval: Interval, expected: str
) -> None:
    assert grade(interval, 0.01, 0.05) == expected


def test_pairs_to_settle_zero_in_30_against_a_1_point_band() -> None:
    # 0 in n passes once 3.84 / (n + 3.84) < 0.01: from 381 pairs on.
    def settled(growth: float) -> bool:
        return grade(wilson(0, 30 * growth), 0.01, 0.05) != "inconclusive"

    assert stats.pairs_to_settle(30, settled) == 381 - 30


def test_pairs_to_settle_is_none_when_the_estimate_sits_on_an_edge() -> None:
    def settled(growth: float) -> bool:
        return grade(wilson(3 * growth, 300 * growth), 0.01, 0.05) != "inconclusive"

    assert stats.pairs_to_settle(300, settled) is None


def test_narrowed_shrinks_each_arm_by_the_square_root() -> None:
    assert stats.narrowed(1.0, Interval(0.8, 1.4), 4.0) == Interval(0.9, 1.2)
