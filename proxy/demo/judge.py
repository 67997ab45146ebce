"""The demo's judge: a small fake LLM judge in this process, and the judge run on the recording
once the sidecar has flushed it, so the report has a quality row.

The fake judges as a model would, and with a model's flaw: the answer that shares more words
with the question is better wherever it is shown, and when it cannot tell two answers apart
it picks the one shown first. The new gateway's answers are the old one's reworded, so each
order alone would crown whichever came first; both orders together make them ties.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web

from proxy import config as config_mod
from proxy.judge import store
from proxy.judge.command import plan
from proxy.judge.cost import estimate, price_of
from proxy.judge.prompt import ANSWER_A, ANSWER_B, CONVERSATION, END, TOOLS
from proxy.judge.run import Judge, judge_pairs
from proxy.record.answers import similarity
from proxy.serve.runtime import Live

JUDGE_MODEL: Final = "judge-mini"
JUDGE_KEY: Final = "sk-local-judge"
_WORD: Final = re.compile(r"[a-z]{4,}")


def _between(text: str, start: str, ends: tuple[str, ...]) -> str:
    after = text.partition(start)[2]
    cut = min((after.index(e) for e in ends if e in after), default=len(after))
    return after[:cut]


def prefer(prompt: str) -> str:
    """Which answer wins, "A" or "B": the one on the question, else the first shown."""
    question = _between(prompt, CONVERSATION, (TOOLS, ANSWER_A)).rpartition("[user]")[2]
    a = _between(prompt, ANSWER_A, (ANSWER_B,))
    b = _between(prompt, ANSWER_B, (END,))
    if similarity(a, b) >= 0.8:
        return "A"
    asked = set(_WORD.findall(question.lower()))
    on_a = len(asked & set(_WORD.findall(a.lower())))
    on_b = len(asked & set(_WORD.findall(b.lower())))
    return "B" if on_b > on_a else "A"


async def _answer(request: web.Request) -> web.Response:
    body = await request.json()
    winner = prefer(str(body["messages"][-1]["content"]))
    text = orjson.dumps({"winner": winner, "reason": "closer to the question"}).decode()
    message = {"role": "assistant", "content": text}
    return web.json_response(
        {
            "id": "chatcmpl-judge",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 400, "completion_tokens": 16, "total_tokens": 416},
        }
    )


class DemoJudge:
    """The fake judge on 127.0.0.1, OpenAI-shaped (`POST /v1/chat/completions`)."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _answer)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        # Said as the root, never with /v1: the demo lists its processes by their /v1 URLs.
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return f"{self.url}/v1"

    async def close(self) -> None:
        await self._runner.cleanup()


async def judge_recording(config_path: Path, say: Callable[[str], None]) -> None:
    """What `python -m proxy judge --yes` does, told in a few lines."""
    text = await asyncio.to_thread(config_path.read_bytes)
    cfg = config_mod.parse(text, str(config_path))
    jc = cfg.judge
    if jc is None:
        return
    chosen = await plan(cfg.record.path, jc, None, False)
    price, key = price_of(cfg.report.pricing, jc.upstream, jc.model)
    est = estimate(chosen.pairs, price)
    cost = "unknown" if est.usd is None else f"${est.usd:.2f} at {key}"
    say(
        f"\nJudging (python -m proxy judge): {est.pairs} pairs, each in both orders, blind; "
        f"estimated cost {cost} (budget ${jc.budget_usd:g})"
    )
    live = Live(cfg, config_mod.digest(text), str(config_path))
    db = await store.open_recording(cfg.record.path)
    try:
        judge = Judge(live.current.upstreams[jc.upstream], jc.model, price, jc.budget_usd)
        done = await judge_pairs(judge, db, chosen.pairs, asyncio.Event())
    finally:
        await live.close()
        await store.close(db)
    for role in ("shadow", "noise"):
        n = {o: done.outcomes[(role, o)] for o in ("win", "tie", "loss")}
        if sum(n.values()):
            say(f"  {role}: {n['win']} won, {n['tie']} tied, {n['loss']} lost")
    if done.errors or done.not_verdicts:
        say(f"  judge failures: {sum(done.errors.values()) + sum(done.not_verdicts.values())}")
