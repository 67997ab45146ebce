from __future__ import annotations

import hashlib
import re
import struct
from base64 import b64encode
from typing import Any

import orjson
import pytest

from proxy.record import answers
from proxy.record.answers import Answer
from proxy.sse import SSEDecoder
from proxy.tally import StreamTally, ToolCall


def openai_text(**overrides: Any) -> dict[str, Any]:
    """A chat.completion body as api.openai.com returns it."""
    body: dict[str, Any] = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The image shows a wooden boardwalk.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    body.update(overrides)
    return body


def gateway_text() -> dict[str, Any]:
    """The same answer from a compatible gateway: other ids, fewer optional fields."""
    return {
        "id": "gen-1741570290-abc",
        "model": "openai/gpt-4o",
        "object": "chat.completion",
        "created": 1741570290,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "A boardwalk.", "tool_calls": []},
            }
        ],
        "usage": {"prompt_tokens": 1117, "completion_tokens": 3, "total_tokens": 1120},
    }


def openai_tool_call() -> dict[str, Any]:
    body = openai_text()
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_qOfTGgDrItLORNfC6VwUbyLL",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Shanghai"}'},
            }
        ],
        "refusal": None,
        "annotations": [],
    }
    body["choices"][0]["finish_reason"] = "tool_calls"
    return body


def responses_body() -> dict[str, Any]:
    return {
        "id": "resp_67ccd3a9da748190baa7f1570fe91ac6",
        "object": "response",
        "created_at": 1741476777,
        "status": "completed",
        "error": None,
        "model": "gpt-4o-2024-08-06",
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c3c4def7",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "In a peaceful grove", "annotations": []},
                    {"type": "output_text", "text": ", a unicorn.", "annotations": []},
                ],
            },
            {
                "type": "function_call",
                "id": "fc_12345",
                "call_id": "call_12345",
                "name": "get_weather",
                "arguments": '{"location":"Paris"}',
                "status": "completed",
            },
        ],
        "usage": {
            "input_tokens": 328,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 52,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 380,
        },
    }


def tally_of(stream: bytes) -> StreamTally:
    decoder = SSEDecoder()
    tally = StreamTally()
    for ev in decoder.feed(stream) + decoder.flush():
        tally.add(ev)
    return tally


# --- status and usage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, None),
        (204, None),
        (302, None),
        (400, "http_4xx"),
        (404, "http_4xx"),
        (429, "rate_limit"),
        (499, "http_4xx"),
        (500, "http_5xx"),
        (503, "http_5xx"),
    ],
)
def test_error_kind_for_status(status: int, kind: str | None) -> None:
    assert answers.error_kind_for_status(status) == kind


def test_usage_of_chat_completion_with_its_cached_prompt_tokens() -> None:
    assert answers.usage_of(openai_text()) == (1117, 46, 1163, 0)


def test_usage_of_responses_maps_input_and_output_tokens() -> None:
    assert answers.usage_of(responses_body())[:3] == (328, 52, 380)


def test_usage_of_reads_cached_tokens_of_chat_and_responses() -> None:
    chat = {"usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                      "prompt_tokens_details": {"cached_tokens": 1920}}}  # fmt: skip
    responses = {"usage": {"input_tokens": 2006, "output_tokens": 300, "total_tokens": 2306,
                           "input_tokens_details": {"cached_tokens": 1024}}}  # fmt: skip
    assert answers.usage_of(chat) == (2006, 300, 2306, 1920)
    assert answers.usage_of(responses) == (2006, 300, 2306, 1024)


def test_usage_of_anthropic_counts_the_cache_into_the_prompt() -> None:
    # Anthropic's input_tokens leaves out what was read from or written to the cache; the
    # record's prompt_tokens counts the whole prompt, as OpenAI's does.
    message = {
        "type": "message",
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188,
            "cache_read_input_tokens": 1500,
            "output_tokens": 393,
        },
    }
    assert answers.usage_of(message) == (21 + 188 + 1500, 393, None, 1500)
    plain = {"type": "message", "usage": {"input_tokens": 12, "output_tokens": 6}}
    assert answers.usage_of(plain) == (12, 6, None, None)


def test_usage_of_embeddings_has_no_completion_tokens() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    assert answers.usage_of(body) == (8, None, 8, None)


@pytest.mark.parametrize(
    "body",
    [{"choices": []}, {"usage": None}, {"usage": {"prompt_tokens": "3"}}, [], None, "x"],
)
def test_missing_usage_is_none_not_zero(body: object) -> None:
    assert answers.usage_of(body) == (None, None, None, None)


# --- shape ---------------------------------------------------------------------------------


def test_shape_ignores_volatile_fields_and_values_between_providers() -> None:
    assert answers.shape_signature(openai_text()) == answers.shape_signature(gateway_text())
    assert answers.shape_of(openai_text()) == answers.shape_of(gateway_text())


def test_shape_signature_is_readable() -> None:
    assert answers.shape_signature(gateway_text()) == (
        '{choices:[{finish_reason:"stop",index:num,message:{content:str,role:str}}],'
        'model:str,object:"chat.completion",'
        "usage:{completion_tokens:num,prompt_tokens:num,total_tokens:num}}"
    )


def test_shape_of_is_sixteen_hex_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", answers.shape_of(openai_text()))


def test_tool_call_answer_differs_in_shape_from_text_answer() -> None:
    assert answers.shape_of(openai_tool_call()) != answers.shape_of(openai_text())


def test_finish_reason_value_is_part_of_the_shape() -> None:
    truncated = openai_text()
    truncated["choices"][0]["finish_reason"] = "length"
    assert answers.shape_of(truncated) != answers.shape_of(openai_text())


def test_object_value_is_part_of_the_shape() -> None:
    assert answers.shape_of(openai_text(object="text_completion")) != answers.shape_of(
        openai_text()
    )


def test_a_missing_usage_changes_the_shape() -> None:
    body = openai_text()
    del body["usage"]
    assert answers.shape_of(body) != answers.shape_of(openai_text())


def test_value_type_changes_the_shape() -> None:
    assert answers.shape_signature({"a": 1}) != answers.shape_signature({"a": "1"})
    assert answers.shape_signature({"a": 1}) == answers.shape_signature({"a": 2.5})


def test_lists_are_summarised_by_the_union_of_element_shapes() -> None:
    assert answers.shape_signature([{"a": 1}, {"a": 2}]) == answers.shape_signature([{"a": 3}])
    assert answers.shape_signature([1, "x", {"b": None}]) == "[num|str|{}]"


def test_shape_of_a_huge_embedding_body_is_cheap_and_stable() -> None:
    body = {"object": "list", "data": [{"embedding": [0.1] * 3072, "index": 0}] * 50}
    assert (
        answers.shape_signature(body) == '{data:[{embedding:[num;3072],index:num}],object:"list"}'
    )


def embeddings(dims: int, base64: bool = False) -> dict[str, object]:
    vector: object = [0.5] * dims
    if base64:
        vector = b64encode(struct.pack(f"<{dims}f", *([0.5] * dims))).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


@pytest.mark.parametrize("base64", [False, True])
def test_an_embedding_of_another_dimension_is_another_shape(base64: bool) -> None:
    assert answers.embedding_dims(embeddings(1536, base64)) == 1536
    assert answers.embedding_dims(embeddings(1023, base64)) == 1023  # padding counted right
    assert answers.shape_of(embeddings(1536, base64)) == answers.shape_of(embeddings(1536, base64))
    assert answers.shape_of(embeddings(1536, base64)) != answers.shape_of(embeddings(1024, base64))


def test_embedding_dims_of_other_answers_is_none() -> None:
    assert answers.embedding_dims(openai_text()) is None
    assert answers.embedding_dims({"data": [{"url": "https://x"}]}) is None
    assert answers.embedding_dims({"data": []}) is None


def test_images_are_counted_in_image_answers_only() -> None:
    generated = {"created": 1, "data": [{"b64_json": "aGk="}, {"url": "https://img/2"}]}
    assert answers.images_of(generated) == 2
    responses = {"output": [{"type": "image_generation_call", "result": "aGk="},
                            {"type": "message", "content": []}]}  # fmt: skip
    assert answers.images_of(responses) == 1
    assert answers.images_of(openai_text()) is None
    assert answers.images_of(responses_body()) is None
    assert answers.images_of(embeddings(8)) is None


def test_shape_paths_name_each_leaf_and_where_two_shapes_part() -> None:
    a = answers.shape_paths(embeddings(1536))
    b = answers.shape_paths(embeddings(1024))
    assert a == {
        "data[].embedding": "[num;1536]",
        "data[].index": "num",
        "data[].object": '"embedding"',
        "model": "str",
        "object": '"list"',
        "usage.prompt_tokens": "num",
        "usage.total_tokens": "num",
    }
    assert {k for k in a if a[k] != b.get(k)} == {"data[].embedding"}
    text = answers.shape_paths(openai_text())
    assert text["choices[].finish_reason"] == '"stop"'
    assert "choices[].message.content" in text and "id" not in text


def test_shape_of_deeply_nested_json_does_not_raise() -> None:
    deep: object = "x"
    for _ in range(5000):
        deep = {"a": [deep]}
    assert answers.shape_of(deep)


def test_shape_of_responses_text_vs_function_call_differ() -> None:
    text_only = responses_body()
    text_only["output"] = text_only["output"][:1]
    assert answers.shape_of(text_only) != answers.shape_of(responses_body())


def test_stream_shapes_match_for_the_same_reassembled_answer() -> None:
    a = tally_of(
        b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
        b'\n\ndata: {"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,'
        b'"total_tokens":2}}\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
        b"\n\ndata: [DONE]\n\n"
    )
    b = tally_of(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hello there"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\ndata: [DONE]\n\n'
    )
    assert answers.stream_signature(a) == 'stream{finish_reason:"stop",text,usage}'
    assert answers.stream_shape(a) == answers.stream_shape(b)


def test_stream_shape_differs_for_tool_calls_and_missing_usage() -> None:
    tools = tally_of(
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":'
        b'{"name":"get_weather","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\n'
    )
    text = tally_of(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
    )
    assert (
        answers.stream_signature(tools) == 'stream{finish_reason:"tool_calls",tools:[get_weather]}'
    )
    assert answers.stream_signature(text) == 'stream{finish_reason:"stop",text}'
    assert answers.stream_shape(tools) != answers.stream_shape(text)


def test_stream_shape_marks_an_error() -> None:
    tally = tally_of(b'data: {"error":{"message":"boom"}}\n\n')
    assert answers.stream_signature(tally) == "stream{error}"


def test_stream_body_is_the_reassembled_answer() -> None:
    tally = tally_of(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi","tool_calls":[{"index":0,'
        b'"function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]}\n\n'
    )
    assert orjson.loads(answers.stream_body(tally)) == {
        "text": "Hi",
        "tool_calls": [{"name": "f", "arguments": "{}"}],
        "finish_reason": "stop",
    }


# --- answers -------------------------------------------------------------------------------


def test_answer_of_chat_text() -> None:
    assert answers.answer_of(openai_text()) == Answer(
        "The image shows a wooden boardwalk.", (), "stop"
    )


def test_answer_of_chat_tool_call() -> None:
    assert answers.answer_of(openai_tool_call()) == Answer(
        None, (ToolCall("get_weather", '{"location":"Shanghai"}'),), "tool_calls"
    )


def test_answer_of_legacy_completion() -> None:
    body = {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {
                "text": "\n\nThis is indeed a test",
                "index": 0,
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    assert answers.answer_of(body) == Answer("\n\nThis is indeed a test", (), "length")


def test_answer_of_responses_joins_output_text_and_lists_function_calls() -> None:
    assert answers.answer_of(responses_body()) == Answer(
        "In a peaceful grove, a unicorn.",
        (ToolCall("get_weather", '{"location":"Paris"}'),),
        "completed",
    )


def test_answer_of_content_parts_and_object_arguments() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
            }
        ]
    }
    assert answers.answer_of(body) == Answer("ab", (ToolCall("f", '{"x":1}'),), "tool_calls")


def test_answer_of_an_anthropic_message_with_text_and_a_tool_use() -> None:
    body = {
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 12, "output_tokens": 30},
    }
    assert answers.answer_of(body) == Answer(
        "Let me check.", (ToolCall("get_weather", '{"location":"Paris"}'),), "tool_use"
    )
    assert answers.finish_of(body) == "tool_use"


@pytest.mark.parametrize("body", [None, [], {"error": {"message": "x"}}, {"choices": []}])
def test_answer_of_anything_else_is_empty(body: object) -> None:
    assert answers.answer_of(body) == Answer(None, (), None)


def test_tool_calls_json_lists_names_keys_and_validity() -> None:
    calls = [
        ToolCall("get_weather", '{"unit":"C","location":"Paris"}'),
        ToolCall("broken", '{"location": "Par'),
        ToolCall("list_args", "[1, 2]"),
    ]
    assert orjson.loads(answers.tool_calls_json(calls) or "") == [
        {"name": "get_weather", "keys": ["location", "unit"], "valid": True},
        {"name": "broken", "keys": None, "valid": False},
        {"name": "list_args", "keys": None, "valid": False},
    ]


def test_tool_calls_json_is_none_without_calls() -> None:
    assert answers.tool_calls_json([]) is None
    assert answers.tool_calls_json(()) is None


# --- JSON mode -----------------------------------------------------------------------------


def test_json_ok_is_none_unless_json_mode() -> None:
    assert answers.json_ok("not json", json_mode=False) is None


@pytest.mark.parametrize(
    ("text", "ok"),
    [('{"a": 1}', True), ("[1]", True), ("```json\n{}\n```", False), ("", False), (None, False)],
)
def test_json_ok_in_json_mode(text: str | None, ok: bool) -> None:
    assert answers.json_ok(text, json_mode=True) is ok


@pytest.mark.parametrize(
    ("request_body", "wanted"),
    [
        ({"model": "m", "response_format": {"type": "json_object"}}, True),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, True),
        ({"response_format": {"type": "text"}}, False),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, True),
        ({"text": {"format": {"type": "json_object"}}}, True),
        ({"text": {"format": {"type": "text"}}}, False),
        ({"messages": []}, False),
        (None, False),
    ],
)
def test_wants_json(request_body: object, wanted: bool) -> None:
    assert answers.wants_json(request_body) is wanted


# --- text comparison -----------------------------------------------------------------------


def test_normalise_casefolds_collapses_space_and_drops_trailing_punctuation() -> None:
    assert answers.normalise("  Hello,\n\tWORLD!!  ") == "hello, world"
    assert answers.normalise("Straße。") == "strasse"
    assert answers.normalise("...") == ""


def test_text_sha256_matches_across_trivial_differences() -> None:
    assert answers.text_sha256("The answer is 42.") == answers.text_sha256("the answer  is 42")
    assert answers.text_sha256("The answer is 42.") != answers.text_sha256("The answer is 43.")
    assert answers.text_sha256(None) is None


def test_sha256_hex() -> None:
    assert answers.sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_similarity_bounds() -> None:
    assert answers.similarity("Same words here.", "same  words here") == 1.0
    assert answers.similarity("alpha beta", "gamma delta") == 0.0
    assert answers.similarity("", "") == 1.0
    assert answers.similarity("", "x") == 0.0


def test_similarity_is_token_level_and_order_aware() -> None:
    close = answers.similarity("the cat sat on the mat", "the cat sat on a mat")
    shuffled = answers.similarity("first mix then bake", "first bake then mix")
    assert 0.8 < close < 1.0
    assert shuffled < 1.0


# Every body shape above, plus the odd ones a provider may send: `finish_of` is the recorder's
# shortcut for unpaired answers, and must agree with `answer_of` on all of them.
_FINISH_CASES = [
    None,
    [],
    "stop",
    {"error": {"message": "x"}},
    {"choices": []},
    {"choices": "nope"},
    {"choices": [None, 3]},
    {"choices": [{"index": 1, "finish_reason": "length"}]},
    {"choices": [{"index": 1, "finish_reason": "x"}, {"finish_reason": "stop", "message": {}}]},
    {"choices": [{"index": 0, "finish_reason": 7, "message": {"content": "a"}}]},
    {"choices": [{"index": 0, "text": "legacy", "finish_reason": "length"}]},
    {"output": [], "status": "incomplete"},
    {"output": [], "status": None},
    {"output": "x", "status": "completed"},
    {"choices": None, "output": [], "status": "completed"},
    openai_text(),
    openai_tool_call(),
    responses_body(),
]


@pytest.mark.parametrize("body", _FINISH_CASES)
def test_finish_of_agrees_with_answer_of(body: object) -> None:
    assert answers.finish_of(body) == answers.answer_of(body).finish_reason
