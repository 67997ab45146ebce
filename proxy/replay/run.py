"""A replay run: the chosen exchanges sent to the candidate at the given rate and concurrency,
each answer written as it comes; stopped between calls by a signal, or by the budget before
a call that could pass it.

The candidate is called through `serve.originate`, as an app's call would be: its key, model
map, adapter, deadlines and error kinds; a stream is read as a stream, to its end.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiosqlite

from proxy.config import BodyPolicy
from proxy.judge.cost import usd
from proxy.record.rows import Response
from proxy.record.schema import StoreError
from proxy.replay import store
from proxy.replay.select import Candidate, attempt_for
from proxy.report.thresholds import Price
from proxy.serve.originate import send
from proxy.serve.upstream import UpstreamClient


def parse_rate(text: str) -> float:
    """Calls a second from "5/s", "300/m", "1000/h" or a bare number (a second)."""
    count, _, unit = text.strip().partition("/")
    seconds = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        n = float(count)
    except ValueError:
        n = -1.0
    if seconds is None or not 0 < n < float("inf"):
        raise ValueError(
            f"{text!r} is not a rate: give calls per second, minute or hour (5/s, 300/m)"
        )
    return n / seconds


class Pacer:
    """Spaces the starts of calls `1 / rate` apart, however many workers ask."""

    def __init__(self, per_second: float | None) -> None:
        self.gap = 0.0 if per_second is None else 1.0 / per_second
        self.next = 0.0

    async def wait(self) -> None:
        if not self.gap:
            return
        now = asyncio.get_running_loop().time()
        at = max(now, self.next)
        self.next = at + self.gap  # taken before the sleep: the next worker waits its turn
        if at > now:
            await asyncio.sleep(at - now)


def call_usd(price: Price | None, prompt: int, completion: int, images: int) -> float | None:
    """One call's price by `report.pricing`; None when the price says nothing of it."""
    if price is None:
        return None
    total = usd(price, prompt, completion, 1)
    if price.image is not None and images:
        total = (total or 0.0) + images * price.image
    return total


@dataclass(frozen=True, slots=True)
class Costs:
    """The candidate's prices per requested model (an exact name wins over "*")."""

    table: dict[str, Price]

    def price(self, model: str | None) -> Price | None:
        return self.table.get(model or "", self.table.get("*"))

    def estimate(self, c: Candidate) -> float | None:
        return call_usd(self.price(c.model), c.prompt_tokens, c.completion_tokens, c.images)

    def actual(self, c: Candidate, r: Response) -> float | None:
        """What the answer cost; the estimate stands in for what it did not report."""
        prompt = r.prompt_tokens if r.prompt_tokens is not None else c.prompt_tokens
        completion = r.completion_tokens if r.completion_tokens is not None else c.completion_tokens
        if r.error_kind is not None and r.prompt_tokens is None:
            return 0.0  # failed answers cost nothing, as the report prices them
        return call_usd(self.price(c.model), prompt, completion, r.images or 0)


@dataclass(frozen=True, slots=True)
class Replayer:
    """Who is replayed to, where it is written, and at what pace and cost."""

    upstream: UpstreamClient
    run: str
    policy: BodyPolicy  # record.bodies.response
    costs: Costs
    budget_usd: float | None
    per_second: float | None
    concurrency: int


@dataclass(slots=True)
class Progress:
    chosen: int
    tried: int = 0  # taken from the queue, sent or not
    sent: int = 0
    written: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # written answers, by error kind
    skipped: Counter[str] = field(default_factory=Counter)  # found unsendable at their turn
    spent: float = 0.0  # US dollars, by the answers' usage (the estimate where none)
    unpriced: int = 0  # calls with no price
    stopped: str | None = None


class _Run:
    def __init__(
        self, r: Replayer, db: aiosqlite.Connection, progress: Progress, stop: asyncio.Event
    ) -> None:
        self.r = r
        self.db = db
        self.progress = progress
        self.stop = stop
        self.pacer = Pacer(r.per_second)
        self.reserved = 0.0  # estimates of the calls in flight
        self.full = False  # the budget takes no more calls; those under way go on
        self.write = asyncio.Lock()
        self.on_call: Callable[[Progress], None] | None = None

    def _affordable(self, estimate: float | None) -> bool:
        budget = self.r.budget_usd
        if budget is None or estimate is None:
            return True
        if self.progress.spent + self.reserved + estimate > budget:
            self.full = True
            self.progress.stopped = self.progress.stopped or (
                f"the next call could pass the budget (${budget:g})"
            )
            return False
        return True

    async def one(self, c: Candidate) -> None:
        p = self.progress
        estimate = self.r.costs.estimate(c)
        if not self._affordable(estimate):
            return
        self.reserved += estimate or 0.0
        try:
            await self.pacer.wait()
            if self.stop.is_set():
                return
            p.tried += 1
            at = await attempt_for(self.db, self.r.upstream, c.exchange_id)
            if isinstance(at, str):
                p.skipped[at] += 1
                return
            answer = await send(at)
            p.sent += 1
            row = answer.meter.record(c.exchange_id, self.r.policy)
            async with self.write:
                await store.add(self.db, self.r.run, row)
            p.written += 1
            if row.error_kind is not None:
                p.errors[row.error_kind] += 1
            cost = self.r.costs.actual(c, row)
            p.unpriced += cost is None
            p.spent += cost or 0.0
        finally:
            self.reserved -= estimate or 0.0
        if self.on_call is not None:
            self.on_call(p)

    async def worker(self, queue: Iterator[Candidate]) -> None:
        for c in queue:
            if self.stop.is_set() or self.full:
                return
            await self.one(c)


async def replay(
    r: Replayer,
    db: aiosqlite.Connection,
    chosen: Sequence[Candidate],
    stop: asyncio.Event,
    on_call: Callable[[Progress], None] | None = None,
) -> Progress:
    """Send `chosen` until done, or `stop` is set (the calls in flight are finished and
    written, none is started after), or the budget would be passed."""
    progress = Progress(len(chosen))
    run = _Run(r, db, progress, stop)
    run.on_call = on_call
    queue = iter(chosen)  # shared: each worker takes the next
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(r.concurrency, 1)):
                tg.create_task(run.worker(queue))
    except* sqlite3.Error as group:
        # The answers not written are lost, and sent again by the next run.
        raise StoreError(f"cannot write to the recording: {group.exceptions[0]}") from None
    if stop.is_set() and progress.stopped is None and progress.tried < len(chosen):
        progress.stopped = "interrupted"
    return progress
