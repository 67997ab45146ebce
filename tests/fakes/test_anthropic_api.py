"""The Anthropic-shaped fake, driven by the official anthropic SDK and, for the wire, aiohttp."""

from __future__ import annotations

from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from proxy.fakes.provider import Behaviour, FakeProvider
from tests.fakes.conftest import KEY, ConnectAnthropic, Start

MODEL = "claude-sonnet-4-5"
ASK: Any = {
    "model": MODEL,
    "max_tokens": 200,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture
async def claude(start: Start) -> FakeProvider:
    return await start(api="anthropic")


async def raw(fake: FakeProvider, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/messages", json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


def event_names(body: bytes) -> list[str]:
    return [line[7:] for line in body.decode().split("\n") if line.startswith("event: ")]


async def test_a_message_answers_text_with_anthropic_usage(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    message = await connect_anthropic(claude).messages.create(**ASK)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    block = message.content[0]
    assert block.type == "text" and "What is the capital of France?" in block.text
    usage = message.usage
    assert usage.input_tokens == round(8 / 0.75)  # the system prompt and the question
    assert usage.output_tokens > 0
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0


async def test_the_stream_helper_joins_into_the_plain_text(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    whole = await client.messages.create(**ASK)
    async with client.messages.stream(**ASK) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


async def test_a_raw_stream_has_anthropic_s_events_in_order(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    events = [e async for e in await connect_anthropic(claude).messages.create(**ASK, stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens > 0
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0
    _, body = await raw(claude, {**ASK, "stream": True}, {"x-api-key": KEY, **VERSION})
    names = event_names(body)
    assert names[:3] == ["message_start", "content_block_start", "ping"]  # the SDK hides pings
    assert b"[DONE]" not in body


async def test_offered_tools_get_a_tool_use_block_filling_the_schema(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    message = await client.messages.create(**ASK, tools=[WEATHER])
    async with client.messages.stream(**ASK, tools=[WEATHER]) as stream:
        streamed = await stream.get_final_message()
    for got in (message, streamed):
        assert got.stop_reason == "tool_use"
        block = got.content[0]
        assert block.type == "tool_use" and block.id.startswith("toolu_")
        assert block.name == "get_weather"
        assert block.input == {"city": "What is the capital of France?", "unit": "celsius"}


async def test_a_streamed_tool_call_sends_input_json_deltas(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    events = [e async for e in await client.messages.create(**ASK, tools=[WEATHER], stream=True)]
    opened = events[1]
    assert opened.type == "content_block_start" and opened.content_block.type == "tool_use"
    parts = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert len(parts) > 1
    assert orjson.loads("".join(parts)) == {
        "city": ASK["messages"][0]["content"],
        "unit": "celsius",
    }


async def test_tool_choice_none_answers_in_text(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    message = await connect_anthropic(claude).messages.create(
        **ASK, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"


async def test_max_tokens_and_stop_sequences_end_the_text_early(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    short = await client.messages.create(**{**ASK, "max_tokens": 5})
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens <= 5
    assert short.content[0].text
    stopped = await client.messages.create(**ASK, stop_sequences=["capital"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "capital"
    assert stopped.content[0].text.endswith("the ")


async def test_tokens_are_counted_and_models_listed(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    counted = await client.messages.count_tokens(model=MODEL, messages=ASK["messages"])
    assert counted.input_tokens == round(6 / 0.75)
    assert [m.id async for m in client.models.list()] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_the_variant_and_quality_knobs_reword_the_answer(
    start: Start, connect_anthropic: ConnectAnthropic
) -> None:
    fakes = [
        await start(api="anthropic", name="a"),
        await start(api="anthropic", name="b", behaviour=Behaviour(variant=1)),
        await start(api="anthropic", name="c", behaviour=Behaviour(quality="worse")),
    ]
    texts = [(await connect_anthropic(f).messages.create(**ASK)).content[0].text for f in fakes]
    assert texts[0] != texts[1] and "capital of France" in texts[1]
    assert "France" not in texts[2]


# --- errors ---


async def test_a_wrong_or_missing_key_is_an_authentication_error(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await connect_anthropic(claude, "sk-wrong").messages.create(**ASK)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    status, body = await raw(claude, ASK, VERSION)
    assert status == 401 and b"x-api-key header is required" in body
    status, _ = await raw(claude, ASK, {"x-api-key": KEY, **VERSION})
    assert status == 200  # the header Anthropic documents; the SDK sends a bearer token


async def test_a_request_without_anthropic_version_is_a_400(claude: FakeProvider) -> None:
    status, body = await raw(claude, ASK, {"x-api-key": KEY})
    assert status == 400
    assert orjson.loads(body)["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


async def test_bad_requests_and_unknown_models_raise_the_sdk_s_errors(
    claude: FakeProvider, connect_anthropic: ConnectAnthropic
) -> None:
    client = connect_anthropic(claude)
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(**{**ASK, "model": "claude-nope"})
    assert missing.value.type == "not_found_error"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await client.messages.create(**{**ASK, "max_tokens": 0})
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        await client.messages.create(**{**ASK, "messages": []})


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
async def test_forced_errors_raise_the_sdk_s_typed_errors(
    start: Start,
    connect_anthropic: ConnectAnthropic,
    status: int,
    error: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    fake = await start(api="anthropic", behaviour=Behaviour(fail="error", error_status=status))
    with pytest.raises(error) as caught:
        await connect_anthropic(fake).messages.create(**ASK)
    assert caught.value.type == kind
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"


async def test_a_stream_that_fails_midway_ends_with_an_error_event(
    start: Start, connect_anthropic: ConnectAnthropic
) -> None:
    fake = await start(api="anthropic", behaviour=Behaviour(fail="stream_error", error_status=529))
    seen = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for e in await connect_anthropic(fake).messages.create(**ASK, stream=True):
            seen.append(e.type)
    assert seen[0] == "message_start" and "message_stop" not in seen
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    status, body = await raw(fake, {**ASK, "stream": True}, {"x-api-key": KEY, **VERSION})
    assert status == 200 and event_names(body)[-1] == "error"


async def test_refused_tools_and_broken_tool_json_in_anthropic_s_shape(
    start: Start, connect_anthropic: ConnectAnthropic
) -> None:
    refusing = await start(api="anthropic", behaviour=Behaviour(refuse_tools=True))
    with pytest.raises(anthropic.BadRequestError, match="Function calling is not supported yet"):
        await connect_anthropic(refusing).messages.create(**ASK, tools=[WEATHER])
    broken = await start(api="anthropic", behaviour=Behaviour(tool_json="broken"))
    client = connect_anthropic(broken)
    events = [e async for e in await client.messages.create(**ASK, tools=[WEATHER], stream=True)]
    streamed = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(streamed)
    plain = (await client.messages.create(**ASK, tools=[WEATHER])).content[0]
    assert plain.type == "tool_use" and plain.input == {"INVALID_JSON": streamed}
