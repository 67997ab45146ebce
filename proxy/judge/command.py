"""`python -m proxy judge`: say what a run would judge and cost, ask, then judge.

Two steps, each its own event loop: the plan (read the recording, choose, estimate), then,
once the user said yes in a terminal or passed `--yes`, the run. Nothing is sent before.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from dataclasses import dataclass

from proxy import config as config_mod
from proxy.config import Config, JudgeConfig
from proxy.consent import confirm
from proxy.errors import ErrorAnswer
from proxy.interrupt import stop_on_signals
from proxy.judge import store
from proxy.judge.cost import Estimate, estimate, price_of
from proxy.judge.pairs import UNREADABLE, Found, Pair, found, prepared, select
from proxy.judge.run import Judge, Progress, judge_pairs
from proxy.report.build import parse_time
from proxy.report.thresholds import Price
from proxy.serve.runtime import Live


@dataclass(frozen=True, slots=True)
class Plan:
    found: Found
    pairs: list[Pair]
    unreadable: int


async def plan(db_path: str, judge: JudgeConfig, since: float | None, retry: bool) -> Plan:
    db = await store.open_recording(db_path)
    try:
        seen = await found(db, judge.model, since, retry)
        pairs, unreadable = await prepared(db, select(seen.candidates, judge.sample))
    finally:
        await store.close(db)
    return Plan(seen, pairs, unreadable)


def _say(text: str) -> None:
    print(text, flush=True)


def _show_plan(chosen: Plan, judge: JudgeConfig, db_path: str) -> None:
    roles = Counter(c.role for c in chosen.found.candidates)
    _say(
        f"Judge: {judge.model} on upstream {judge.upstream}; each pair twice, in both orders, blind."
    )
    _say(f"Recording: {db_path}")
    _say(
        f"Pairs that can be judged: {roles['shadow']:,} shadow, {roles['noise']:,} noise"
        + (f", {roles['replay']:,} replay" if roles["replay"] else "")
        + "; "
        f"judged before by {judge.model}: {chosen.found.judged:,}."
    )
    skipped = dict(chosen.found.skipped)
    if chosen.unreadable:
        skipped[UNREADABLE] = chosen.unreadable
    if skipped:
        _say(f"Skipped {sum(skipped.values()):,} pairs that cannot be judged:")
        for why, n in sorted(skipped.items(), key=lambda kv: -kv[1]):
            _say(f"  {n:>7,}  {why}")


def _show_estimate(est: Estimate, price: Price | None, key: str, judge: JudgeConfig) -> None:
    tokens = (
        f"about {est.prompt_tokens:,} prompt tokens and at most {est.completion_tokens:,} "
        "completion tokens"
    )
    if est.usd is None:
        what = "no token price" if price is not None else "no price"
        _say(
            f"Estimated cost: unknown: {what} at {key}; {tokens}. budget_usd "
            f"(${judge.budget_usd:g}) cannot be checked."
        )
    else:
        _say(
            f"Estimated cost: ${est.usd:.4f} at {key} ({tokens}); budget_usd ${judge.budget_usd:g}."
        )


def _confirm(n: int, yes: bool) -> int | None:
    """None to go on, else the exit code."""
    return confirm(f"Judge these {n:,} pairs?", "judge", yes)


def main(args: argparse.Namespace) -> int:
    cfg, text = config_mod.load(args.config)
    if cfg.judge is None:
        print(
            f"error: {args.config} has no `judge:` section: give it the judge's upstream and "
            "model (see docs/judge.md)",
            file=sys.stderr,
        )
        return 2
    try:
        since = parse_time(args.since) if args.since else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    judge = cfg.judge
    db_path = args.db or cfg.record.path
    chosen = asyncio.run(plan(db_path, judge, since, args.retry_failed))
    _show_plan(chosen, judge, db_path)
    if not chosen.pairs:
        _say("Nothing to judge.")
        return 0
    price, key = price_of(cfg.report.pricing, judge.upstream, judge.model)
    est = estimate(chosen.pairs, price)
    shadow = sum(p.candidate.role != "noise" for p in chosen.pairs)  # shadow and replay
    places = len({(p.candidate.route, p.candidate.model) for p in chosen.pairs})
    _say(
        f"This run: {est.pairs:,} pairs ({shadow:,} shadow, {est.pairs - shadow:,} noise) over "
        f"{places:,} route and model pairings, {est.calls:,} calls to the judge."
    )
    _show_estimate(est, price, key, judge)
    if est.usd is not None and est.usd > judge.budget_usd:
        print(
            f"error: the estimate (${est.usd:.4f}) is over judge.budget_usd "
            f"(${judge.budget_usd:g}): nothing sent. Lower judge.sample, or raise the budget.",
            file=sys.stderr,
        )
        return 1
    code = _confirm(est.pairs, args.yes)
    if code is not None:
        return code
    caught: list[int] = []
    try:
        progress = asyncio.run(_judge(cfg, (args.config, text), db_path, chosen.pairs, caught))
    except asyncio.CancelledError:
        print(
            "stopped at once: the answers written so far are kept; run again for the rest",
            file=sys.stderr,
        )
        return 128 + (caught[0] if caught else signal.SIGINT)
    except ErrorAnswer as e:
        print(f"error: the judge cannot be asked: {e.message}", file=sys.stderr)
        return 2
    return _summary(progress, price, args.config, caught)


async def _judge(
    cfg: Config, source: tuple[str, bytes], db_path: str, pairs: list[Pair], caught: list[int]
) -> Progress:
    """The run, stopped between pairs by the first SIGINT or SIGTERM; a second one cancels
    the calls in flight (their answers, if paid for, are lost: the next run sends them)."""
    jc = cfg.judge
    if jc is None:  # `main` said so already; this is for the type
        raise ValueError("no judge configured")
    path, text = source
    live = Live(cfg, config_mod.digest(text), path)
    db = await store.open_recording(db_path)
    stop = asyncio.Event()
    judge = Judge(
        live.current.upstreams[jc.upstream],
        jc.model,
        price_of(cfg.report.pricing, jc.upstream, jc.model)[0],
        jc.budget_usd,
    )
    step = max(len(pairs) // 10, 1)

    def on_pair(p: Progress) -> None:
        if p.tried % step == 0 or p.tried == p.pairs:
            print(f"  {p.tried:,} of {p.pairs:,} pairs sent", file=sys.stderr, flush=True)

    try:
        with stop_on_signals(stop, caught, "pairs"):
            return await judge_pairs(judge, db, pairs, stop, on_pair)
    finally:
        await live.close()
        await store.close(db)


def _summary(p: Progress, price: Price | None, config_path: str, caught: list[int]) -> int:
    _say(f"Judged {p.finished:,} of {p.pairs:,} pairs in both orders ({p.calls:,} calls).")
    for role in ("shadow", "replay", "noise"):
        n = {o: p.outcomes[(role, o)] for o in ("win", "tie", "loss")}
        if sum(n.values()):
            _say(f"  {role:<6} {n['win']:,} won, {n['tie']:,} tied, {n['loss']:,} lost")
    if p.not_verdicts:
        whys = "; ".join(f"{why}: {n:,}" for why, n in p.not_verdicts.items())
        _say(
            f"Judge failures: {sum(p.not_verdicts.values()):,} answers were not a verdict "
            f"({whys}); kept, so not paid for again (--retry-failed sends them again)."
        )
    if p.errors:
        kinds = ", ".join(f"{k} {n:,}" for k, n in p.errors.items())
        _say(
            f"Judge errors: {sum(p.errors.values()):,} calls got no answer ({kinds}); "
            "not kept: the next run sends them again."
        )
    if p.first_error:
        _say(f"  first: {p.first_error}")
    spent = p.spent(price)
    cost = "" if spent is None else f", about ${spent:.4f}"
    _say(f"Used {p.prompt_tokens:,} prompt and {p.completion_tokens:,} completion tokens{cost}.")
    if p.stopped:
        _say(f"Stopped early: {p.stopped}. Run again to judge the rest; judged pairs are kept.")
    _say(f"The report shows the quality row: python -m proxy report --config {config_path}")
    if caught:
        return 128 + caught[0]
    return 1 if p.stopped else 0
