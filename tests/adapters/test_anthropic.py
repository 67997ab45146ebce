"""OpenAI chat completions to Anthropic's Messages API and back, as pure translations."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.adapters.anthropic import ChatToMessages
from proxy.adapters.base import AppCall, Unsupported
from proxy.sse import SSEDecoder
from proxy.tally import StreamTally

T = ChatToMessages()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def ask(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    provider = T.request(AppCall("POST", "/chat/completions", body, "claude-x", stream))
    assert (provider.method, provider.tail) == ("POST", "/messages")
    assert provider.headers["anthropic-version"] == "2023-06-01"
    out: dict[str, Any] = orjson.loads(provider.body)
    return out


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    out = ask(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    assert out["system"] == "Be brief.\n\nNo lists."
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert out["model"] == "claude-x" and out["max_tokens"] == 4096


def test_parameters_that_have_an_equivalent_cross() -> None:
    out = ask(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "user": "u-1",
            "seed": 7,
        }
    )
    assert out["max_tokens"] == 50 and out["temperature"] == 0.2 and out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"] and out["metadata"] == {"user_id": "u-1"}
    assert "seed" not in out


def test_images_cross_as_url_or_base64_sources() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    out = ask({"messages": [{"role": "user", "content": parts}]})
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.test/cat.png"},
    }
    assert blocks[2]["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}


def test_a_tool_conversation_crosses_with_its_calls_and_results() -> None:
    out = ask(
        {
            "messages": [
                {"role": "user", "content": "weather in Oslo and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
                {"role": "tool", "tool_call_id": "call_2", "content": "warm"},
            ],
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )  # fmt: skip
    assert out["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
            "description": "Weather in a city",
        }
    ]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assistant, results = out["messages"][1], out["messages"][2]
    assert [b["input"] for b in assistant["content"]] == [{"city": "Oslo"}, {"city": "Rome"}]
    # Both results in one user turn: Anthropic wants the roles to alternate.
    assert results["role"] == "user"
    assert [(b["tool_use_id"], b["content"]) for b in results["content"]] == [
        ("call_1", "cold"),
        ("call_2", "warm"),
    ]


@pytest.mark.parametrize(
    "extra",
    [{"n": 2}, {"logprobs": True}, {"response_format": {"type": "json_object"}}, {"functions": []}],
)
def test_what_has_no_equivalent_is_refused_naming_it(extra: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(Unsupported, match=next(iter(extra))):
        T.request(AppCall("POST", "/chat/completions", body, "claude-x", False))


def message(**over: Any) -> bytes:
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 4},
    }
    return orjson.dumps({**msg, **over})


def test_an_answer_becomes_a_chat_completion_with_usage() -> None:
    answer = T.answer(200, message(), {})
    out = orjson.loads(answer.body)
    assert out["object"] == "chat.completion" and out["model"] == "claude-x"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello there."}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 3,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_a_tool_use_answer_becomes_tool_calls() -> None:
    block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    out = orjson.loads(T.answer(200, message(content=[block], stop_reason="tool_use"), {}).body)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (429, "rate_limit_error", 429),
        (529, "overloaded_error", 503),
        (400, "invalid_request_error", 400),
    ],
)
def test_errors_keep_their_status_in_openai_s_shape(status: int, kind: str, expected: int) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "nope"}})
    answer = T.answer(status, body, {"retry-after": "3", "x-other": "1"})
    assert answer.status == expected and answer.headers == {"retry-after": "3"}
    assert orjson.loads(answer.body)["error"]["message"] == "nope"


STREAM = b"".join(
    b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data))
    for name, data in [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)  # fmt: skip


def test_a_stream_becomes_chunks_the_openai_tally_reads_whole() -> None:
    translator = T.stream()
    tally = StreamTally()
    decoder = SSEDecoder()
    out = [t for ev in decoder.feed(STREAM) for t in translator.event(ev)] + translator.end()
    for ev in out:
        tally.add(ev)
    assert out[-1].raw == b"data: [DONE]\n\n"
    assert tally.done and tally.text == "Hello"
    assert tally.finish_reason == "tool_calls"
    assert (tally.prompt_tokens, tally.completion_tokens) == (9, 12)
    [call] = tally.tool_calls
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Oslo"}')


def test_an_error_event_in_a_stream_breaks_it() -> None:
    translator = T.stream()
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}\n\n'
    tally = StreamTally()
    start = STREAM[: STREAM.index(b"\n\n") + 2]  # message_start only
    for ev in SSEDecoder().feed(start + error):
        for t in translator.event(ev):
            tally.add(t)
    assert not tally.done and tally.error is not None
