"""Two verdicts, one per order, into the candidate's win, tie or loss. No sockets."""

from __future__ import annotations

import pytest

from proxy.judge.outcome import combine, for_candidate, shown


def test_each_order_shows_the_other_answer_first() -> None:
    assert shown("primary", "p", "c") == ("p", "c")
    assert shown("candidate", "p", "c") == ("c", "p")


def test_a_judge_that_always_picks_the_first_answer_yields_a_tie() -> None:
    assert for_candidate("primary", "A") == "loss"
    assert for_candidate("candidate", "A") == "win"
    assert combine("A", "A") == "tie"
    assert combine("B", "B") == "tie"  # and one that always picks the second


def test_a_preference_that_survives_the_swap_is_a_win_or_a_loss() -> None:
    assert combine("B", "A") == "win"  # the candidate, whichever side it was on
    assert combine("A", "B") == "loss"


@pytest.mark.parametrize(("first", "second"), [("tie", "A"), ("B", "tie"), ("tie", "B")])
def test_a_preference_in_one_order_only_is_a_tie(first: str, second: str) -> None:
    assert combine(first, second) == "tie"  # type: ignore[arg-type]
    assert combine("tie", "tie") == "tie"
