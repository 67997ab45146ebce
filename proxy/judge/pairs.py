"""Which recorded pairs a run judges: the shadow pairs (the new gateway's answer against the
primary's) and the noise pairs (the primary against itself, the floor), those that can be
judged, spread over routes and models, each in the orders not yet judged.

`found` reads what the recording holds; `select` and `spread` are pure; `prepared` reads the
chosen pairs' bodies and builds what the judge is shown.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite

from proxy.judge.outcome import ORDERS, Order
from proxy.judge.prompt import Winner, conversation, render_answer, said_of

# Calls whose answer is text or tool calls. Embeddings, images, audio, files and the rest
# have nothing a judge could read.
JUDGED_PATHS: Final = ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages")
# At most this share of a run's sample goes to the noise pairs: enough for the floor's
# interval, the rest to the pairs the verdict is about.
NOISE_SHARE: Final = 0.25

# Why a pair is not judged, as the run says it.
FAILED: Final = "an answer was an error (the errors check counts those)"
NOT_TEXT: Final = "not a chat, completions, responses or messages call"
NO_REQUEST: Final = "request body not kept (record.bodies.request is not full)"
NO_ANSWER: Final = "answer body not kept (record.bodies.response is not full, or over 32 MiB)"
UNREADABLE: Final = "request or answer not readable as a conversation"

_WINNERS: Final[dict[str, Winner]] = {"A": "A", "B": "B", "tie": "tie"}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pair that can be judged, and the orders it still needs."""

    exchange_id: str
    role: str  # the candidate's: "shadow" or "noise"
    upstream: str  # the candidate's
    route: str
    model: str | None
    todo: tuple[Order, ...]  # orders not judged yet
    known: tuple[tuple[Order, Winner], ...] = ()  # verdicts of the orders judged before


@dataclass(frozen=True, slots=True)
class Found:
    candidates: tuple[Candidate, ...]
    judged: int  # pairs this judge model already judged in both orders
    skipped: dict[str, int]  # pairs that cannot be judged, by why


@dataclass(frozen=True, slots=True)
class Pair:
    """A chosen pair as the judge will see it: the conversation and both answers, rendered."""

    candidate: Candidate
    conversation: str
    primary: str
    other: str


_FOUND: Final = f"""
SELECT c.exchange_id, c.role, c.upstream, e.route, e.model,
  p.error_kind IS NULL AND c.error_kind IS NULL
    AND p.status BETWEEN 200 AND 299 AND c.status BETWEEN 200 AND 299,
  e.method = 'POST' AND e.path IN ({", ".join("?" * len(JUDGED_PATHS))}),
  e.request_body IS NOT NULL,
  p.response_body IS NOT NULL AND c.response_body IS NOT NULL,
  (SELECT group_concat(j.shown_first || ':' || coalesce(j.winner, '')) FROM judgments j
   WHERE j.exchange_id = c.exchange_id AND j.role = c.role AND j.judge_model = ?
     AND (j.winner IS NOT NULL OR NOT ?))
FROM responses c
JOIN exchanges e ON e.id = c.exchange_id
JOIN responses p ON p.exchange_id = c.exchange_id AND p.role = 'primary'
WHERE c.role IN ('shadow', 'noise', 'replay') AND e.ts >= ?"""


def _classify(row: Sequence[Any]) -> Candidate | str:
    """The candidate a row is, or why it cannot be judged ("" when judged already)."""
    exchange_id, role, upstream, route, model, ok, text, request, answers, done = row
    seen: dict[str, str] = {}
    for d in done.split(",") if done else ():
        order, _, winner = d.partition(":")
        seen[order] = winner
    todo = tuple(o for o in ORDERS if o not in seen)
    if not todo:
        return ""
    if not ok:
        return FAILED
    if not text:
        return NOT_TEXT
    if not request:
        return NO_REQUEST
    if not answers:
        return NO_ANSWER
    known = tuple((o, _WINNERS[w]) for o in ORDERS if (w := seen.get(o)) in _WINNERS)
    return Candidate(str(exchange_id), str(role), str(upstream), str(route), model, todo, known)


async def found(
    db: aiosqlite.Connection, judge_model: str, since: float | None, retry_failed: bool
) -> Found:
    """Every shadow and noise pair since `since`, sorted into candidates and skips.
    `retry_failed`: answers that were not a verdict count as not judged."""
    params = (*JUDGED_PATHS, judge_model, retry_failed, -1e300 if since is None else since)
    async with db.execute(_FOUND, params) as cursor:
        rows = await cursor.fetchall()
    candidates: list[Candidate] = []
    skipped: Counter[str] = Counter()
    judged = 0
    for row in rows:
        kind = _classify(row)
        if isinstance(kind, Candidate):
            candidates.append(kind)
        elif kind:
            skipped[kind] += 1
        else:
            judged += 1
    return Found(tuple(candidates), judged, dict(skipped))


# --- choosing ------------------------------------------------------------------------------


def _place(c: Candidate) -> bytes:
    """A fixed pseudo-random place in its group: the same whatever has been judged, so the
    pairs an interrupted run had chosen come first again in the next."""
    return hashlib.sha256(f"{c.exchange_id}\0{c.role}".encode()).digest()


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """Up to `k` candidates taken in turn from each (upstream, route, model), so a small route
    or a rare model is judged too; within a group, in their fixed pseudo-random places."""
    groups: dict[tuple[str, str, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[(c.upstream, c.route, c.model or "")].append(c)
    queues = [sorted(groups[key], key=_place) for key in sorted(groups)]
    chosen: list[Candidate] = []
    depth = 0
    while len(chosen) < k and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < k:
                chosen.append(q[depth])
        depth += 1
    return chosen


def select(candidates: Sequence[Candidate], sample: int) -> list[Candidate]:
    """At most `sample` pairs: shadow pairs, and noise pairs for up to `NOISE_SHARE` of them;
    either role takes the places the other cannot fill."""
    shadow = [c for c in candidates if c.role != "noise"]  # and replays: the verdict's
    noise = [c for c in candidates if c.role == "noise"]
    n_noise = min(len(noise), int(sample * NOISE_SHARE))
    n_shadow = min(len(shadow), sample - n_noise)
    n_noise = min(len(noise), sample - n_shadow)
    return spread(shadow, n_shadow) + spread(noise, n_noise)


# --- reading the chosen ones ---------------------------------------------------------------

_BODIES: Final = """
SELECT e.request_body, p.response_body, c.response_body
FROM exchanges e
JOIN responses p ON p.exchange_id = e.id AND p.role = 'primary'
JOIN responses c ON c.exchange_id = e.id AND c.role = ?
WHERE e.id = ?"""


def pair_of(candidate: Candidate, request: bytes, primary: bytes, other: bytes) -> Pair | None:
    """What the judge is shown for a pair; None when a body is not readable."""
    talk = conversation(request)
    p, o = said_of(primary), said_of(other)
    if talk is None or p is None or o is None:
        return None
    return Pair(candidate, talk, render_answer(p), render_answer(o))


def _blob(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def prepared(db: aiosqlite.Connection, chosen: Sequence[Candidate]) -> tuple[list[Pair], int]:
    """The chosen pairs ready to be judged, and how many could not be read."""
    pairs: list[Pair] = []
    unreadable = 0
    for c in chosen:
        async with db.execute(_BODIES, (c.role, c.exchange_id)) as cursor:
            row = await cursor.fetchone()
        pair = None if row is None else pair_of(c, *map(_blob, row))
        if pair is None:
            unreadable += 1
        else:
            pairs.append(pair)
    return pairs, unreadable
