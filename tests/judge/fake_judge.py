"""A fake judge on 127.0.0.1 with the bias real LLM judges have.

OpenAI-shaped `POST /v1/chat/completions`, answering `{"winner", "reason"}` as the message
text. It reads the prompt the way a model would, by its headings: the user's last question,
answer A and answer B. An answer that shares more words with the question is really better,
and wins wherever it is shown. When it cannot tell them apart (identical or near-identical
answers), it prefers the one shown first, as LLM judges do. A test can make it fail (an HTTP
500, a text that is not JSON) and hold its answers until released.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Literal

import orjson
from aiohttp import web

from proxy.judge.prompt import ANSWER_A, ANSWER_B, CONVERSATION, END, TOOLS
from proxy.record.answers import similarity

Fault = Literal["500", "not_json", "no_winner"]
KEY = "sk-test-judge-key-2222"
_WORD = re.compile(r"[a-z]{4,}")


def _between(text: str, start: str, ends: tuple[str, ...]) -> str:
    after = text.split(start, 1)[1]
    cut = min((after.index(e) for e in ends if e in after), default=len(after))
    return after[:cut].strip()


def read_prompt(text: str) -> tuple[str, str, str]:
    """The last user turn, answer A and answer B."""
    talk = _between(text, CONVERSATION, (TOOLS, ANSWER_A))
    question = talk.rsplit("[user]", 1)[-1]
    return question, _between(text, ANSWER_A, (ANSWER_B,)), _between(text, ANSWER_B, (END,))


def prefer(question: str, a: str, b: str) -> str:
    """Which is better, "A" or "B": the answer on the question, or the first shown when it cannot tell."""
    if similarity(a, b) >= 0.8:
        return "A"  # the position bias
    asked = set(_WORD.findall(question.lower()))
    score_a = len(asked & set(_WORD.findall(a.lower())))
    score_b = len(asked & set(_WORD.findall(b.lower())))
    if score_a == score_b:
        return "A"
    return "A" if score_a > score_b else "B"


class FakeJudge:
    def __init__(self, fault: Callable[[int], Fault | None] | None = None) -> None:
        self.fault = fault or (lambda n: None)
        self.received: list[dict[str, Any]] = []  # request bodies, in order
        self.hold_from: int | None = None  # requests from this number on wait for `release`
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self.url

    async def close(self) -> None:
        self.release.set()
        await self._runner.cleanup()

    async def wait_for(self, n: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= n), 20)

    def prompts(self) -> list[str]:
        return [body["messages"][-1]["content"] for body in self.received]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        n = len(self.received)
        async with self.arrived:
            self.received.append(body)
            self.arrived.notify_all()
        if self.hold_from is not None and n >= self.hold_from:
            await self.release.wait()
        fault = self.fault(n)
        if fault == "500":
            return web.json_response({"error": {"message": "judge overloaded"}}, status=500)
        question, a, b = read_prompt(body["messages"][-1]["content"])
        winner = prefer(question, a, b)
        text = orjson.dumps({"winner": winner, "reason": f"{winner} is on the question"}).decode()
        if fault == "not_json":
            text = f"I would say {winner} is better."
        elif fault == "no_winner":
            text = '{"verdict": "A"}'
        return web.json_response(
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 500, "completion_tokens": 20, "total_tokens": 520},
            }
        )
