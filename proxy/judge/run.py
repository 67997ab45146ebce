"""A judge run: the chosen pairs sent to the judge, each in the orders it still needs, a few at
a time, every answer written as it comes; stopped between pairs by a signal, the budget, or a
judge that refuses every call.

The judge is called through `serve.originate`, as an app's call would be: the judge upstream's
key, model map, adapter, deadlines and error kinds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiosqlite
import orjson

from proxy.errors import ErrorAnswer
from proxy.judge import store
from proxy.judge.cost import prompt_tokens, usd
from proxy.judge.outcome import Order, Outcome, combine, shown
from proxy.judge.pairs import Pair
from proxy.judge.prompt import (
    MAX_VERDICT_TOKENS,
    NotAVerdict,
    Winner,
    judge_request,
    user_message,
    verdict_of,
)
from proxy.record.answers import usage_of
from proxy.record.schema import StoreError
from proxy.report.thresholds import Price
from proxy.serve.originate import Answer, attempt, send
from proxy.serve.upstream import UpstreamClient

# Pairs in flight, two calls each: a judge account's rate limit is rarely generous, and a
# run of a few hundred pairs is minutes at this pace, not hours.
CONCURRENCY: Final = 4
# A judge that refuses this many calls in a row (a 4xx other than 429: a wrong model name,
# a parameter it does not take) would refuse them all: the run stops.
REFUSALS_TO_STOP: Final = 3


@dataclass(frozen=True, slots=True)
class Judge:
    """Who judges, and what a run may spend."""

    upstream: UpstreamClient
    model: str
    price: Price | None
    budget_usd: float


@dataclass(slots=True)
class Progress:
    """What a run has done so far; the command prints it as it goes and at the end."""

    pairs: int  # chosen for this run
    tried: int = 0  # sent, whatever came back
    finished: int = 0  # pairs with a verdict in both orders now
    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)  # (role, outcome)
    calls: int = 0  # sent to the judge
    answers: int = 0  # came back, and were paid for: each is a row
    not_verdicts: Counter[str] = field(default_factory=Counter)  # answers, by what was wrong
    errors: Counter[str] = field(default_factory=Counter)  # calls with no answer, by kind
    first_error: str | None = None  # the first failure's reason, to show
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused_in_a_row: int = 0
    stopped: str | None = None  # why the run stopped before its last pair

    def spent(self, price: Price | None) -> float | None:
        return usd(price, self.prompt_tokens, self.completion_tokens, self.answers)


def _error_text(answer: Answer) -> str:
    """A failed call in a line: the error kind and, for an HTTP error, its message (the
    upstream's key scrubbed from it, as for any answer)."""
    kind = answer.meter.error_kind or "error"
    if answer.error:
        return f"{kind}: {answer.error}"
    message = ""
    try:
        error = orjson.loads(answer.body).get("error")
        message = str(error.get("message") if isinstance(error, dict) else error or "")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"HTTP {answer.status}" + (f": {message[:200]}" if message else "")


class _Run:
    def __init__(
        self, judge: Judge, db: aiosqlite.Connection, progress: Progress, stop: asyncio.Event
    ) -> None:
        self.judge = judge
        self.db = db
        self.progress = progress
        self.stop = stop
        self.write = asyncio.Lock()
        self.json_mode = judge.upstream.api == "openai"
        self.on_pair: Callable[[Progress], None] | None = None

    def halt(self, why: str) -> None:
        if self.progress.stopped is None:
            self.progress.stopped = why
        self.stop.set()

    async def order(self, pair: Pair, order: Order) -> Winner | None:
        """One call; its answer written before this returns. None: no verdict."""
        j, p = self.judge, self.progress
        a, b = shown(order, pair.primary, pair.other)
        body = judge_request(
            j.model, user_message(pair.conversation, a, b), json_mode=self.json_mode
        )
        p.calls += 1
        answer = await send(attempt(j.upstream, "POST", "/chat/completions", body))
        if answer.meter.error_kind is not None or answer.status is None:
            p.errors[answer.meter.error_kind or "error"] += 1
            p.first_error = p.first_error or _error_text(answer)
            refused = answer.meter.error_kind == "http_4xx"
            p.refused_in_a_row = p.refused_in_a_row + 1 if refused else 0
            if p.refused_in_a_row >= REFUSALS_TO_STOP:
                self.halt(f"the judge refused {REFUSALS_TO_STOP} calls in a row")
            return None
        p.refused_in_a_row = 0
        winner: Winner | None = None
        reason: str | None = None
        error: str | None = None
        try:
            winner, reason = verdict_of(answer.body)
        except NotAVerdict as e:
            error = str(e)
            p.not_verdicts[error] += 1
            p.first_error = p.first_error or error
        try:
            usage = usage_of(orjson.loads(answer.body))
        except orjson.JSONDecodeError:
            usage = usage_of(None)
        c = pair.candidate
        row = store.Judgment(
            c.exchange_id, c.role, j.model, order, j.upstream.name, c.upstream, time.time(),
            winner, reason, error, usage.prompt, usage.completion,
        )  # fmt: skip
        async with self.write:
            await store.add(self.db, row)
        p.answers += 1
        # Without usage from the judge, the estimate stands in, so the budget still holds.
        p.prompt_tokens += usage.prompt if usage.prompt is not None else prompt_tokens(pair)
        p.completion_tokens += (
            usage.completion if usage.completion is not None else MAX_VERDICT_TOKENS
        )
        spent = p.spent(j.price)
        if spent is not None and spent >= j.budget_usd:
            self.halt(f"the run reached budget_usd (${j.budget_usd:g})")
        return winner

    async def pair(self, pair: Pair) -> None:
        c = pair.candidate
        got = await asyncio.gather(*(self.order(pair, o) for o in c.todo))
        verdicts = dict(c.known)
        verdicts.update((o, w) for o, w in zip(c.todo, got, strict=True) if w is not None)
        if "primary" in verdicts and "candidate" in verdicts:
            self.progress.finished += 1
            outcome = combine(verdicts["primary"], verdicts["candidate"])
            self.progress.outcomes[(c.role, outcome)] += 1
        self.progress.tried += 1
        if self.on_pair is not None:
            self.on_pair(self.progress)

    async def worker(self, queue: Iterator[Pair]) -> None:
        for pair in queue:
            if self.stop.is_set():
                return
            await self.pair(pair)


async def judge_pairs(
    judge: Judge,
    db: aiosqlite.Connection,
    pairs: Sequence[Pair],
    stop: asyncio.Event,
    on_pair: Callable[[Progress], None] | None = None,
) -> Progress:
    """Judge `pairs` in the orders each still needs, until done or `stop` is set: the pairs in
    flight then are finished and written, and none is started after. Raises `ErrorAnswer`
    when the judge's upstream cannot take the call at all (before sending it)."""
    progress = Progress(len(pairs))
    run = _Run(judge, db, progress, stop)
    run.on_pair = on_pair
    queue = iter(pairs)  # shared: each worker takes the next pair
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(CONCURRENCY):
                tg.create_task(run.worker(queue))
    except* ErrorAnswer as group:
        raise group.exceptions[0] from None
    except* sqlite3.Error as group:
        # The answers not written are lost, and sent again by the next run.
        raise StoreError(f"cannot write to the recording: {group.exceptions[0]}") from None
    if stop.is_set() and progress.stopped is None and progress.finished < len(pairs):
        progress.stopped = "interrupted"
    return progress
