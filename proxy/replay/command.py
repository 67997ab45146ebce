"""`python -m proxy replay`: say what a run would send and cost, ask, then send.

Two steps, each its own event loop: the plan (read the recording, choose, estimate), then,
once the user said yes in a terminal or passed `--yes`, the run. Nothing is sent before.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass

import orjson

from proxy import config as config_mod
from proxy.config import Config
from proxy.consent import confirm
from proxy.interrupt import stop_on_signals
from proxy.judge import store as recording
from proxy.replay import store
from proxy.replay.run import Costs, Progress, Replayer, parse_rate, replay
from proxy.replay.select import Found, Selection, found
from proxy.report.build import parse_time
from proxy.serve.upstream import UpstreamClient


class UsageError(Exception):
    """The command line asks for what cannot be: exit 2."""


@dataclass(frozen=True, slots=True)
class Options:
    upstream: str
    db: str
    run: str
    selection: Selection
    per_second: float | None
    concurrency: int
    budget_usd: float | None


def _say(text: str) -> None:
    print(text, flush=True)


def options(args: argparse.Namespace, cfg: Config) -> Options:
    if args.upstream not in cfg.upstreams:
        raise UsageError(f"--upstream: {args.upstream!r} is not one of {sorted(cfg.upstreams)}")
    try:
        since = parse_time(args.since) if args.since else None
        per_second = parse_rate(args.rate) if args.rate else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--concurrency and --limit must be at least 1")
    if args.budget_usd is not None and args.budget_usd <= 0:
        raise UsageError("--budget-usd must be above 0")
    run = args.run or "replay-" + time.strftime(
        "%Y%m%d-%H%M%S", time.gmtime()
    ) + "-" + secrets.token_hex(2)
    selection = Selection(since, args.route, args.model, args.limit)
    db = args.db or cfg.record.path
    return Options(args.upstream, db, run, selection, per_second, args.concurrency, args.budget_usd)


async def plan(cfg: Config, o: Options) -> Found:
    up = UpstreamClient(o.upstream, cfg.upstreams[o.upstream])
    db = await recording.open_recording(o.db)
    try:
        async with db.execute("SELECT upstream FROM replay_runs WHERE run = ?", (o.run,)) as c:
            row = await c.fetchone()
        if row is not None and row[0] != o.upstream:
            raise UsageError(f"--run: {o.run} replayed to {row[0]}, not {o.upstream}")
        return await found(db, o.selection, up)
    finally:
        await recording.close(db)
        await up.close()


def _show(f: Found, o: Options, costs: Costs) -> None:
    _say(f"Replay to upstream {o.upstream}, run {o.run}; recording {o.db}.")
    _say(f"Recorded exchanges in the window: {f.seen:,}; to replay: {len(f.candidates):,}.")
    if f.skipped:
        _say(f"Not replayed: {sum(f.skipped.values()):,}:")
        for why, n in sorted(f.skipped.items(), key=lambda kv: -kv[1]):
            _say(f"  {n:>7,}  {why}")
    if not f.candidates:
        return
    pace = "as fast as allowed" if o.per_second is None else f"{o.per_second:g} a second"
    took = "" if o.per_second is None else f", at least {len(f.candidates) / o.per_second:,.0f} s"
    _say(f"This run: {len(f.candidates):,} calls, {o.concurrency} at a time, {pace}{took}.")
    estimates = [costs.estimate(c) for c in f.candidates]
    priced = [e for e in estimates if e is not None]
    unpriced = len(estimates) - len(priced)
    key = f"report.pricing.{o.upstream}"
    line = f"Estimated cost: ${sum(priced):.4f} at {key}, from the recorded sizes"
    if unpriced:
        line += f"; {unpriced:,} calls have no price there, and cannot be counted"
    budget = "none" if o.budget_usd is None else f"${o.budget_usd:g}"
    _say(f"{line}; budget {budget}.")
    if o.budget_usd is not None and sum(priced) > o.budget_usd:
        _say("The estimate is over the budget: the run stops before a call that could pass it.")


def _confirm(n: int, yes: bool) -> int | None:
    """None to go on, else the exit code."""
    return confirm(f"Replay these {n:,} exchanges to the candidate?", "send", yes)


async def run_replay(
    cfg: Config, o: Options, f: Found, caught: list[int], stop: asyncio.Event | None = None
) -> Progress:
    """The run, stopped between calls by the first SIGINT or SIGTERM; a second one cancels the
    calls in flight (their answers, if paid for, are lost: the next run sends them)."""
    stop = stop or asyncio.Event()
    up = UpstreamClient(o.upstream, cfg.upstreams[o.upstream])
    db = await recording.open_recording(o.db)
    costs = Costs(cfg.report.pricing.get(o.upstream, {}))
    r = Replayer(
        up, o.run, cfg.record.bodies.response, costs, o.budget_usd, o.per_second, o.concurrency
    )
    step = max(len(f.candidates) // 10, 1)

    def on_call(p: Progress) -> None:
        if p.tried % step == 0 or p.tried == p.chosen:
            print(f"  {p.tried:,} of {p.chosen:,} sent", file=sys.stderr, flush=True)

    try:
        with stop_on_signals(stop, caught, "calls"):
            selection = orjson.dumps(asdict(o.selection)).decode()
            await store.begin(db, store.Run(o.run, time.time(), o.upstream, selection))
            return await replay(r, db, f.candidates, stop, on_call)
    finally:
        await up.close()
        await recording.close(db)


def _summary(p: Progress, o: Options, config_path: str) -> None:
    errors = ", ".join(f"{k} {n:,}" for k, n in p.errors.items())
    _say(
        f"Replayed {p.written:,} of {p.chosen:,} to {o.upstream} in run {o.run}"
        + (f" ({sum(p.errors.values()):,} errors: {errors})" if p.errors else "")
        + f"; about ${p.spent:.4f}"
        + (f", {p.unpriced:,} calls unpriced" if p.unpriced else "")
        + "."
    )
    for why, n in p.skipped.items():
        _say(f"  not sent: {n:,}  {why}")
    if p.stopped:
        _say(
            f"Stopped early: {p.stopped}. Run again with --run {o.run} to replay the rest; nothing is sent twice."
        )
    _say(f"Compare: python -m proxy report --config {config_path} --replay {o.run}")


def main(args: argparse.Namespace) -> int:
    cfg, _ = config_mod.load(args.config)
    try:
        o = options(args, cfg)
        f = asyncio.run(plan(cfg, o))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    costs = Costs(cfg.report.pricing.get(o.upstream, {}))
    _show(f, o, costs)
    if not f.candidates:
        _say("Nothing to replay.")
        return 0
    code = _confirm(len(f.candidates), args.yes)
    if code is not None:
        return code
    caught: list[int] = []
    try:
        progress = asyncio.run(run_replay(cfg, o, f, caught))
    except asyncio.CancelledError:
        print(
            f"stopped at once: the answers written so far are kept; run again with --run {o.run}",
            file=sys.stderr,
        )
        return 128 + (caught[0] if caught else signal.SIGINT)
    _summary(progress, o, args.config)
    if caught:
        return 128 + caught[0]
    return 1 if progress.stopped else 0
