"""Two verdicts, one in each order, combined into the candidate's win, tie or loss.

LLM judges prefer the answer shown first, and the more alike the answers the more the order
decides (Zheng et al. 2023; Wang et al. 2024; Shi et al. 2024): a verdict asked once measures
that bias as much as the answers. So each pair is shown twice, the answers swapped, and only
a preference that survives the swap counts: a win or loss in both orders is a win or loss,
anything else a tie (the conservative rule Zheng et al. 2023 propose for MT-Bench).
"""

from __future__ import annotations

from typing import Final, Literal

from proxy.judge.prompt import Winner

# Whose answer the judge saw as answer A.
Order = Literal["primary", "candidate"]
ORDERS: Final[tuple[Order, ...]] = ("primary", "candidate")

Outcome = Literal["win", "tie", "loss"]  # for the candidate (the shadow or noise answer)


def shown(order: Order, primary: str, candidate: str) -> tuple[str, str]:
    """Answers A and B in this order."""
    return (primary, candidate) if order == "primary" else (candidate, primary)


def for_candidate(order: Order, winner: Winner) -> Outcome:
    """One verdict read for the candidate."""
    if winner == "tie":
        return "tie"
    candidate_letter = "A" if order == "candidate" else "B"
    return "win" if winner == candidate_letter else "loss"


def combine(primary_first: Winner, candidate_first: Winner) -> Outcome:
    """The candidate's outcome from the verdict with the primary's answer shown first and the
    one with the candidate's shown first: what both say, else a tie."""
    a = for_candidate("primary", primary_first)
    b = for_candidate("candidate", candidate_first)
    return a if a == b else "tie"
