"""The app's planned traffic, without a network: reproducible, and dealt in the stated mix."""

from __future__ import annotations

from collections import Counter

from proxy.demo.traffic import KINDS, plan


def test_a_seed_plans_the_same_calls_and_another_seed_others() -> None:
    assert plan(50, seed=3) == plan(50, seed=3)
    assert plan(50, seed=3) != plan(50, seed=4)


def test_every_hundred_calls_hold_the_mix_exactly() -> None:
    calls = plan(300, seed=3)
    for start in (0, 100, 200):
        mix = Counter(c.kind for c in calls[start : start + 100])
        assert [mix[k] for k in KINDS] == [22, 22, 20, 20, 16]
