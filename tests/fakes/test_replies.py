"""The fakes' replies in OpenAI's wire shapes, tested as plain functions: no server, no sockets."""

from __future__ import annotations

import base64
import itertools
import struct
from collections.abc import Callable
from typing import Any

import orjson

from proxy.fakes import replies as fake_replies
from proxy.fakes.answers import answer_text
from proxy.fakes.api import Stream
from proxy.fakes.provider import Behaviour
from proxy.fakes.replies import Invalid, model_bodies, status_error

CHAT = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def counter() -> tuple[Callable[[str], str], list[str]]:
    """An id maker like the server's, and the prefixes it was asked for, in order."""
    count, asked = itertools.count(1), []

    def next_id(prefix: str) -> str:
        asked.append(prefix)
        return f"{prefix}{next(count)}"

    return next_id, asked


def body(reply: fake_replies.Reply) -> Any:
    assert isinstance(reply, bytes)
    return orjson.loads(reply)


def payloads(reply: fake_replies.Reply) -> list[Any]:
    assert isinstance(reply, Stream)
    return [orjson.loads(e.split(b"data: ", 1)[1]) for e in reply.events]


def test_chat_answer_is_one_choice_with_usage() -> None:
    next_id, asked = counter()
    got = body(
        fake_replies.chat({"messages": MESSAGES}, CHAT, Behaviour(), created=7, next_id=next_id)
    )
    assert (got["id"], got["created"], got["model"]) == ("chatcmpl-1", 7, CHAT)
    assert got["choices"][0]["message"]["content"] == answer_text(MESSAGES[0]["content"], 0)
    assert (
        got["usage"]["total_tokens"]
        == got["usage"]["prompt_tokens"] + got["usage"]["completion_tokens"]
    )
    assert asked == ["chatcmpl-"]


def test_chat_tool_call_takes_a_call_id_after_the_completion_id() -> None:
    next_id, asked = counter()
    request = {"messages": MESSAGES, "tools": [TOOL]}
    got = body(fake_replies.chat(request, CHAT, Behaviour(), created=0, next_id=next_id))
    choice = got["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["id"] == "call_2"
    assert asked == ["chatcmpl-", "call_"]


def test_chat_stream_opens_with_the_role_and_ends_with_the_finish_reason() -> None:
    next_id, _ = counter()
    request = {"messages": MESSAGES, "stream": True}
    reply = fake_replies.chat(request, CHAT, Behaviour(chunks=3), created=0, next_id=next_id)
    assert isinstance(reply, Stream) and reply.done
    chunks = payloads(reply)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert len(chunks) == 5 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)


def test_chat_stream_ends_with_a_usage_chunk_only_when_asked_and_allowed() -> None:
    next_id, _ = counter()
    request = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    last = payloads(fake_replies.chat(request, CHAT, Behaviour(), created=0, next_id=next_id))[-1]
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    quiet = fake_replies.chat(request, CHAT, Behaviour(usage=False), created=0, next_id=next_id)
    assert all("usage" not in c for c in payloads(quiet))


def test_legacy_completions_answer_each_prompt_in_its_own_choice() -> None:
    next_id, _ = counter()
    request = {"prompt": ["one", "two"]}
    got = body(fake_replies.completions(request, CHAT, Behaviour(), created=0, next_id=next_id))
    assert [c["index"] for c in got["choices"]] == [0, 1]
    assert got["choices"][1]["text"] == answer_text("two", 0)


def test_responses_stream_numbers_its_events_and_sends_no_done() -> None:
    next_id, asked = counter()
    request = {"input": "Name a city.", "stream": True}
    reply = fake_replies.responses(request, CHAT, Behaviour(), created=0, next_id=next_id)
    assert isinstance(reply, Stream) and not reply.done
    assert all(e.startswith(b"event: response.") for e in reply.events)
    events = payloads(reply)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == answer_text(
        "Name a city.", 0
    )
    assert asked == ["resp_", "msg_"]


def test_responses_tool_call_is_a_function_call_item() -> None:
    next_id, asked = counter()
    tool = {"type": "function", "name": "get_weather", **TOOL["function"]}
    request = {"input": "Weather?", "tools": [tool]}
    got = body(fake_replies.responses(request, CHAT, Behaviour(), created=0, next_id=next_id))
    item = got["output"][0]
    assert item["type"] == "function_call" and item["call_id"] == "call_3"
    assert set(orjson.loads(item["arguments"])) == {"city"}
    assert asked == ["resp_", "fc_", "call_"]


def test_embeddings_as_floats_and_as_base64_carry_the_same_numbers() -> None:
    request = {"input": "one", "dimensions": 4}
    floats = body(fake_replies.embeddings(request, "e", Behaviour()))["data"][0]["embedding"]
    as_b64 = {**request, "encoding_format": "base64"}
    encoded = body(fake_replies.embeddings(as_b64, "e", Behaviour()))["data"][0]["embedding"]
    assert floats == list(struct.unpack("<4f", base64.b64decode(encoded)))


def test_images_are_pngs_created_at_the_given_time() -> None:
    got = body(fake_replies.images({"prompt": "a cat", "n": 2}, "", Behaviour(), created=9))
    assert got["created"] == 9 and len(got["data"]) == 2
    assert got["data"][0]["b64_json"] != got["data"][1]["b64_json"]


def test_invalid_requests_are_refused_naming_the_parameter() -> None:
    b, (next_id, asked) = Behaviour(), counter()
    refusals = [
        ("messages", fake_replies.chat({}, CHAT, b, created=0, next_id=next_id)),
        ("prompt", fake_replies.completions({"prompt": 5}, CHAT, b, created=0, next_id=next_id)),
        ("input", fake_replies.embeddings({"input": ""}, "e", b)),
        ("dimensions", fake_replies.embeddings({"input": "x", "dimensions": 0}, "e", b)),
        (
            "encoding_format",
            fake_replies.embeddings({"input": "x", "encoding_format": "hex"}, "e", b),
        ),
        ("n", fake_replies.images({"prompt": "x", "n": 11}, "", b, created=0)),
        ("prompt", fake_replies.run({}, "flux", b, latency=0.0)),
    ]
    for param, got in refusals:
        assert isinstance(got, Invalid) and got.param == param and got.message
    assert asked == []  # refused before taking an id, so the ids of later replies don't shift


def test_rate_limits_ask_the_client_to_retry_after_a_second() -> None:
    payload, headers = status_error(429)
    assert headers == {"retry-after": "1"}
    assert orjson.loads(payload)["error"]["code"] == "rate_limit_exceeded"
    assert orjson.loads(status_error(503)[0])["error"]["type"] == "server_error"


def test_models_are_listed_and_each_has_its_own_card() -> None:
    listing, cards = model_bodies(["a", "b"], "fake")
    assert [m["id"] for m in orjson.loads(listing)["data"]] == ["a", "b"]
    assert orjson.loads(cards["b"])["owned_by"] == "fake"
