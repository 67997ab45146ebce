"""What the judge is shown and how its answer is read. No sockets."""

from __future__ import annotations

import orjson
import pytest

from proxy.judge.prompt import (
    ANSWER_A,
    ANSWER_B,
    MAX_ANSWER_CHARS,
    MAX_CONVERSATION_CHARS,
    NotAVerdict,
    Said,
    conversation,
    judge_request,
    render_answer,
    said_of,
    user_message,
    verdict_of,
)

CHAT = {
    "model": "gpt-4o-mini",
    "user": "user-007",
    "messages": [
        {"role": "system", "content": "You are the shop's assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Lisbon?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_secret123",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"unit":"c","city":"Lisbon"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_secret123", "content": "21 C, sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "response_format": {"type": "json_object"},
}


def answer_body(text: str | None, calls: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    message = {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {"id": f"call_upstream{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
        or None,
    }
    return orjson.dumps(
        {
            "id": "chatcmpl-newgw-xyz",
            "model": "prov/gpt-4o-mini",
            "system_fingerprint": "fp_newgw",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
    )


def test_the_conversation_shows_every_turn_the_tools_and_the_format_asked_for() -> None:
    text = conversation(orjson.dumps(CHAT))
    assert text is not None
    assert "[system]\nYou are the shop's assistant." in text
    assert "[user]\nWeather in Lisbon?" in text
    assert '[calls the tool `get_weather` with {"city":"Lisbon","unit":"c"}]' in text
    assert "[tool result]\n21 C, sunny" in text
    assert text.index("Weather in Lisbon?") < text.index("And tomorrow?")
    assert "`get_weather`: Current weather for a city." in text
    assert '{"type":"json_object"}' in text


def test_the_prompt_is_blind_no_upstream_model_or_id_in_it() -> None:
    talk = conversation(orjson.dumps(CHAT))
    primary = said_of(answer_body("Sunny again."))
    other = said_of(answer_body(None, [("get_weather", '{"city": "Lisbon"}')]))
    assert talk is not None and primary is not None and other is not None
    prompt = user_message(talk, render_answer(primary), render_answer(other))
    for name in ("gpt-4o", "prov/", "chatcmpl", "call_", "fp_", "user-007", "newgw", "old", "new"):
        assert name not in prompt.lower()


def test_a_tool_call_turn_is_shown_as_the_calls_it_makes_keys_sorted() -> None:
    said = said_of(answer_body("", [("search_orders", '{"limit": 3, "customer_id": "C-1"}')]))
    assert said is not None
    assert render_answer(said) == (
        '[calls the tool `search_orders` with the arguments {"customer_id":"C-1","limit":3}]'
    )
    broken = Said(None, (("search_orders", '{"limit": 3'),))
    assert '{"limit": 3' in render_answer(broken)  # invalid arguments are shown as written
    assert render_answer(Said("", ())) == "[an empty answer: no text and no tool calls]"


def test_a_streamed_answer_is_read_from_its_reassembled_body() -> None:
    body = orjson.dumps(
        {"text": "Hi", "tool_calls": [{"name": "f", "arguments": "{}"}], "finish_reason": "stop"}
    )
    assert said_of(body) == Said("Hi", (("f", "{}"),))
    assert said_of(b"not json") is None


def test_responses_completions_and_anthropic_requests_have_conversations() -> None:
    responses = {"instructions": "Be brief.", "input": [{"role": "user", "content": "Hi"}]}
    assert conversation(orjson.dumps(responses)) is not None
    assert "[user]\nHello" in (conversation(orjson.dumps({"input": "Hello"})) or "")
    assert "Once upon" in (conversation(orjson.dumps({"prompt": "Once upon"})) or "")
    anthropic = {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}],
    }
    assert "[system]\nBe brief." in (conversation(orjson.dumps(anthropic)) or "")
    assert conversation(orjson.dumps({"input": []})) is None
    assert conversation(b"[1, 2]") is None


def test_long_texts_are_cut_the_same_way_for_both_answers() -> None:
    long_question = {"messages": [{"role": "user", "content": "word " * 20_000}]}
    talk = conversation(orjson.dumps(long_question))
    assert talk is not None and len(talk) < MAX_CONVERSATION_CHARS + 200
    assert "characters left out" in talk
    answer = render_answer(Said("x" * (MAX_ANSWER_CHARS + 10), ()))
    assert answer.endswith("[... the last 10 characters left out ...]")


def test_the_judge_is_asked_for_a_json_object_when_its_shape_has_json_mode() -> None:
    body = judge_request("judge-1", "u", json_mode=True)
    assert body["response_format"] == {"type": "json_object"}
    assert body["model"] == "judge-1" and body["messages"][1]["content"] == "u"
    assert "response_format" not in judge_request("judge-1", "u", json_mode=False)


def test_the_answers_are_shown_as_a_then_b() -> None:
    prompt = user_message("=== THE CONVERSATION ===\nq", "first", "second")
    assert prompt.index(ANSWER_A) < prompt.index("first") < prompt.index(ANSWER_B)
    assert prompt.index(ANSWER_B) < prompt.index("second")


def judge_answer(text: str) -> bytes:
    message = {"role": "assistant", "content": text}
    return orjson.dumps({"choices": [{"index": 0, "message": message}]})


@pytest.mark.parametrize(
    ("text", "winner"),
    [
        ('{"winner": "A", "reason": "on topic"}', "A"),
        ('{"winner": "b", "reason": ""}', "B"),
        ('{"winner": " Tie "}', "tie"),
        ('```json\n{"winner": "B", "reason": "r"}\n```', "B"),
    ],
)
def test_a_verdict_is_read_from_the_judge_s_json(text: str, winner: str) -> None:
    assert verdict_of(judge_answer(text))[0] == winner


def test_an_anthropic_judge_s_answer_is_read_too() -> None:
    body = {"type": "message", "content": [{"type": "text", "text": '{"winner": "A"}'}]}
    assert verdict_of(orjson.dumps(body)) == ("A", "")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "not JSON"),
        (judge_answer(""), "no text"),
        (judge_answer("A is better."), "not a JSON object"),
        (judge_answer('["A"]'), "not a JSON object"),
        (judge_answer('{"winner": "C"}'), '"winner" is not'),
        (judge_answer('{"verdict": "A"}'), '"winner" is not'),
    ],
)
def test_anything_else_is_a_failure_of_the_judge_saying_what_was_wrong(
    body: bytes, why: str
) -> None:
    with pytest.raises(NotAVerdict, match=why):
        verdict_of(body)
