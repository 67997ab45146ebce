"""The app's side: a reproducible mix of requests, sent through the official `openai` SDK by a
few concurrent workers, and what the app saw of each."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import openai
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)

from proxy.demo.providers import CHAT_MODEL, EMBEDDING_MODEL
from proxy.demo.together import all_of

# The app's own key: the sidecar drops it and sends each provider's key instead.
APP_KEY: Final = "sk-demo-no-key-needed"
CONCURRENCY: Final = 8

Kind = Literal["chat", "stream", "tools", "json", "embeddings"]
KINDS: Final[tuple[Kind, ...]] = ("chat", "stream", "tools", "json", "embeddings")
# Per 100 calls. Enough tool calls and JSON-mode answers that the default run clears the
# report's min_pairs (30) for those checks too, rather than capping them at "warn".
_KIND_WEIGHTS: Final = (22, 22, 20, 20, 16)

_ASKS: Final = (
    "Explain",
    "Write a short note on",
    "Tell me about",
    "In two sentences, describe",
    "Give three tips on",
    "Summarise",
)
_TOPICS: Final = (
    "our refund policy for parcels that arrive damaged",
    "rotating an API key without downtime",
    "why the sky is blue",
    "cooking rice without a rice cooker",
    "the difference between TCP and UDP",
    "a polite reply to a late invoice",
    "this week's sales numbers for the Berlin store",
    "the plot of Hamlet",
    "a SQL query for monthly active users",
    "training for a first marathon",
    "choosing a name for a coffee shop",
    "what changed in the last release",
)
_CITIES: Final = ("Lisbon", "Osaka", "Nairobi", "Toronto", "Berlin", "Lima", "Perth")
_SYSTEM: Final = "You are the helpful assistant of a small online shop."

_TOOLS: Final[list[ChatCompletionFunctionToolParam]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "A customer's most recent orders.",
            "parameters": {
                "type": "object",
                "properties": {
                    "customer_id": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1},
                },
                "required": ["customer_id"],
            },
        },
    },
]


@dataclass(frozen=True, slots=True)
class Call:
    """One request the app will make."""

    kind: Kind
    prompt: str
    user: str
    stream: bool  # tools: stream the tool call; stream: ask for usage
    named_tool: bool  # tools: force `search_orders` rather than let the model pick


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the app saw: who served it (the `x-sidecar-upstream` header) and any error."""

    kind: Kind
    upstream: str  # "?" when the answer named none (the sidecar unreachable, say)
    error: str | None


def plan(n: int, seed: int) -> list[Call]:
    """A realistic, reproducible mix: plain and streamed chat, tool calls, JSON mode, embeddings."""
    rng = random.Random(seed)
    calls = []
    deck: list[Kind] = []
    for i in range(n):
        if not deck:  # dealt from a shuffled deck, so every 100 calls hold the mix exactly
            deck = [kind for kind, w in zip(KINDS, _KIND_WEIGHTS, strict=True) for _ in range(w)]
            rng.shuffle(deck)
        kind = deck.pop()
        user = f"user-{rng.randrange(1, 41):03d}"
        named = rng.random() < 0.4
        if kind == "tools":
            prompt = (
                f"Show the last orders of customer C-{rng.randrange(1000, 9999)}"
                if named
                else f"What's the weather in {rng.choice(_CITIES)} right now?"
            )
        elif kind == "json":
            prompt = f"As JSON: {rng.choice(_ASKS).lower()} {rng.choice(_TOPICS)} (ticket {i})"
        else:
            prompt = f"{rng.choice(_ASKS)} {rng.choice(_TOPICS)} (ticket {i})"
        calls.append(Call(kind, prompt, user, rng.random() < 0.5, named))
    return calls


def _messages(call: Call) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": call.prompt}]


class _RawResponse(Protocol):
    """What the SDK's `with_raw_response` gives back, whichever overload of `create` answered."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def parse(self) -> object: ...


def _served_by(headers: Mapping[str, str]) -> str:
    return headers.get("x-sidecar-upstream", "?")


async def send(client: openai.AsyncOpenAI, call: Call) -> Outcome:
    """One request as an app makes it; the SDK's errors are outcomes, not failures of the demo."""
    upstream = "?"
    try:
        if call.kind == "embeddings":
            text = call.prompt
            raw_e = await client.embeddings.with_raw_response.create(
                model=EMBEDDING_MODEL,
                input=[text, text.upper()] if call.stream else text,
                user=call.user,
            )
            upstream = _served_by(raw_e.headers)
            raw_e.parse()
            return Outcome(call.kind, upstream, None)
        chat = client.chat.completions.with_raw_response
        raw: _RawResponse
        if call.kind == "chat":
            raw = await chat.create(
                model=CHAT_MODEL, messages=_messages(call), user=call.user, temperature=0.3
            )
        elif call.kind == "json":
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                response_format={"type": "json_object"},
            )
        elif call.kind == "stream":
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                stream=True,
                stream_options={"include_usage": call.stream},
            )
        else:
            choice: ChatCompletionToolChoiceOptionParam = (
                {"type": "function", "function": {"name": "search_orders"}}
                if call.named_tool
                else "auto"
            )
            raw = await chat.create(
                model=CHAT_MODEL,
                messages=_messages(call),
                user=call.user,
                tools=_TOOLS,
                tool_choice=choice,
                stream=call.stream,
            )
        upstream = _served_by(raw.headers)
        parsed = raw.parse()
        if isinstance(parsed, openai.AsyncStream):
            async with parsed as chunks:
                async for _ in chunks:
                    pass
        return Outcome(call.kind, upstream, None)
    except openai.APIStatusError as e:
        return Outcome(call.kind, _served_by(e.response.headers), f"HTTP {e.status_code}")
    except openai.APIError as e:
        # Connection failures, and errors that arrive inside a stream after it started.
        return Outcome(call.kind, upstream, type(e).__name__)


class Traffic:
    """Sends calls with a fixed number of concurrent workers, like a small app would."""

    def __init__(self, client: openai.AsyncOpenAI, concurrency: int) -> None:
        self.client = client
        self.concurrency = concurrency
        self.in_flight = 0

    async def run(self, calls: Sequence[Call], handed_out: asyncio.Event) -> list[Outcome]:
        """All outcomes; `handed_out` is set once the last call has started."""
        outcomes: list[Outcome] = []
        pending = iter(calls)

        async def worker() -> None:
            for call in pending:
                self.in_flight += 1
                try:
                    outcomes.append(await send(self.client, call))
                finally:
                    self.in_flight -= 1
            handed_out.set()

        await all_of([worker() for _ in range(self.concurrency)])
        handed_out.set()
        return outcomes
