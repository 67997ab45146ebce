"""The `Behaviour` knobs the report's statistical tests turn, each seen through the openai SDK:
random latency, a late first token, tool arguments that are not JSON, refused tools, the
embeddings' length, worse answers, streams without usage, and errors forced or mid-stream."""

from __future__ import annotations

import random
import time
from typing import Any

import openai
import orjson
import pytest

from proxy.fakes.answers import WORSE
from proxy.fakes.provider import Behaviour
from tests.fakes.conftest import Connect, Start

CHAT = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


async def test_latency_jitter_is_drawn_from_the_seeded_rng(start: Start, connect: Connect) -> None:
    jitter, seed = 0.08, 5
    fake = await start(behaviour=Behaviour(latency_jitter=jitter), seed=seed)
    client = connect(fake)
    draws = random.Random(seed)
    for _ in range(6):
        expected = draws.random() * jitter
        began = time.monotonic()
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
        took = time.monotonic() - began
        # Never sooner than its draw; later only by what a loaded machine adds.
        assert expected - 0.002 <= took < expected + 0.15


async def test_first_token_delay_holds_back_the_first_content_chunk_only(
    start: Start, connect: Connect
) -> None:
    delay = 0.5  # long enough that a loaded machine's hiccups do not pass for it
    fake = await start(behaviour=Behaviour(first_token_delay=delay))
    client = connect(fake)
    began = time.monotonic()
    await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert time.monotonic() - began < delay  # plain answers are not delayed
    stream = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    arrived = [(time.monotonic(), chunk) async for chunk in stream]
    role_at, content_at = arrived[0][0], arrived[1][0]
    assert arrived[0][1].choices[0].delta.role == "assistant"  # the role chunk comes at once
    assert arrived[1][1].choices[0].delta.content
    # The client stamps the role chunk when it gets round to it, which may be late.
    assert content_at - role_at >= delay - 0.05
    assert arrived[-1][0] - content_at < delay  # later chunks are not delayed


async def test_broken_tool_json_is_not_json_plain_or_streamed(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(tool_json="broken"))
    client = connect(fake)
    plain = await client.chat.completions.create(model=CHAT, messages=MESSAGES, tools=[TOOL])
    (call,) = plain.choices[0].message.tool_calls or []
    stream = await client.chat.completions.create(
        model=CHAT, messages=MESSAGES, tools=[TOOL], stream=True
    )
    deltas = [c.choices[0].delta async for c in stream if c.choices]
    streamed = "".join(
        piece.function.arguments or ""
        for d in deltas
        for piece in d.tool_calls or []
        if piece.function
    )
    assert call.function.arguments == streamed
    for arguments in (call.function.arguments, streamed):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(arguments)
    response = await client.responses.create(
        model=CHAT, input="Weather?", tools=[{"type": "function", **TOOL["function"]}]
    )
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.output[0].arguments)


async def test_refuse_tools_answers_400_to_a_request_with_tools(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(refuse_tools=True))
    client = connect(fake)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=CHAT, messages=MESSAGES, tools=[TOOL])
    assert caught.value.body == {
        "message": "Function calling is not supported yet",
        "type": "invalid_request_error",
        "param": "tools",
        "code": None,
    }
    with pytest.raises(openai.BadRequestError, match="Function calling"):
        await client.responses.create(
            model=CHAT, input="hi", tools=[{"type": "function", **TOOL["function"]}]
        )
    answer = await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content  # no tools offered: answered as ever


async def test_embedding_dims_sets_the_length_unless_the_request_names_one(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(embedding_dims=1536))
    client = connect(fake)
    model = "text-embedding-3-small"
    wide = await client.embeddings.create(model=model, input="one")
    narrow = await client.embeddings.create(model=model, input="one", dimensions=16)
    assert len(wide.data[0].embedding) == 1536 and len(narrow.data[0].embedding) == 16


async def test_worse_quality_answers_off_topic_and_the_same_each_time(
    start: Start, connect: Connect
) -> None:
    good = await start(name="good")
    worse = await start(name="worse", behaviour=Behaviour(quality="worse"))
    asked: dict[str, Any] = {"model": CHAT, "messages": MESSAGES}
    texts = [
        (await connect(f).chat.completions.create(**asked)).choices[0].message.content
        for f in (good, worse, worse)
    ]
    assert texts[0] and "capital of France" in texts[0]
    assert texts[1] == texts[2] == WORSE
    stream = await connect(worse).chat.completions.create(**asked, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == WORSE
    as_json = await connect(worse).chat.completions.create(
        **asked, response_format={"type": "json_object"}
    )
    assert orjson.loads(as_json.choices[0].message.content or "")  # JSON modes stay JSON


async def test_usage_off_leaves_streams_without_a_usage_chunk(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(usage=False))
    stream = await connect(fake).chat.completions.create(
        model=CHAT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.usage is None and c.choices for c in chunks)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, openai.InternalServerError),
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
    ],
)
async def test_fail_error_answers_every_request_with_the_error_status(
    start: Start, connect: Connect, status: int, error: type[openai.APIStatusError]
) -> None:
    fake = await start(behaviour=Behaviour(fail="error", error_status=status))
    for _ in range(3):
        with pytest.raises(error):
            await connect(fake).chat.completions.create(model=CHAT, messages=MESSAGES)


async def test_stream_error_breaks_a_stream_off_with_openai_s_error_event(
    start: Start, connect: Connect
) -> None:
    fake = await start(behaviour=Behaviour(fail="stream_error", error_status=500))
    client = connect(fake)
    stream = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for chunk in stream:
            got.append(chunk)
    assert got and got[0].choices[0].delta.role == "assistant"
    with pytest.raises(openai.InternalServerError):  # a plain request gets the status
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)


def test_new_knobs_reject_impossible_settings() -> None:
    bad: list[dict[str, Any]] = [
        {"latency_jitter": -0.1},
        {"first_token_delay": -1.0},
        {"tool_json": "mangled"},
        {"quality": "best"},
        {"embedding_dims": 0},
        {"embedding_dims": 5000},
        {"fail": "explode"},
    ]
    for settings in bad:
        with pytest.raises(ValueError):
            Behaviour(**settings)
