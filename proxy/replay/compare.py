"""What the report and the judge need to know of replays: that a replay answer is a copy to
compare with the primary's as a shadow copy is, how to keep one run, and what to say of it."""

from __future__ import annotations

from typing import Final

# The roles of copies graded against the primary's answers: each gets a verdict of its own.
COMPARED: Final = ("shadow", "replay")

# The report's filter to one run (`--replay RUN`), on the exchanges `e`.
RUN_CLAUSE: Final = "e.id IN (SELECT exchange_id FROM replays WHERE run = :replay)"

ANOTHER_TIME: Final = (
    "Replay pairs compare the candidate's answers now with the primary's answers recorded "
    "at another time: load, the provider's model versions and caches change in between, so a "
    "difference in latency, errors or text may be the time's as much as the provider's. "
    "Shadow pairs, sent within seconds of each other, do not have this gap."
)


def as_copy(role: str) -> str:
    """How a verdict names its copies."""
    return "replayed, against answers from another time" if role == "replay" else f"as the {role}"


def pairs_of(role: str) -> str:
    """What a verdict's pairs are, in its headline."""
    if role == "replay":
        return "replay pairs, against answers recorded at another time"
    return f"{role} pairs"
