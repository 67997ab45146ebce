"""What the fakes say, tested as plain functions: no server, no sockets."""

from __future__ import annotations

import base64
import math
import struct
import zlib
from typing import Any

import orjson

from proxy.fakes.answers import (
    ToolCall,
    answer,
    answer_text,
    chat_prompt,
    example,
    input_texts,
    pick_tool,
    png,
    responses_prompt,
    tokens,
    vector,
)

SCHEMA: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 4},
        "days": {"type": "integer", "minimum": 2.5},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 9},
        "ratio": {"anyOf": [{"type": "number"}, {"type": "string"}]},
        "note": {"type": ["null", "boolean"]},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "tags", "ratio", "note"],
    "$defs": {"tag": {"const": "t"}},
}


def test_tokens_are_about_four_thirds_of_the_words() -> None:
    assert [tokens(""), tokens("one"), tokens("one two three"), tokens("a " * 6)] == [0, 1, 4, 8]


def test_same_prompt_and_variant_give_the_same_text_and_other_variants_reword_it() -> None:
    texts = [answer_text("What is the capital of France?", v) for v in (0, 0, 1, 2, 3)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) == 4
    assert all("What is the capital of France?" in t for t in texts)
    assert texts[4].endswith("(variant 3)")


def test_long_prompts_are_cut_to_eight_words_in_the_answer() -> None:
    assert '"one two three four five six seven eight..."' in answer_text(
        "one two three four five six seven eight nine", 0
    )


def test_tool_arguments_fill_the_required_properties_from_the_schema() -> None:
    assert example(SCHEMA, "Paris in May", every_property=False) == {
        "city": "Pari",
        "days": 3,
        "unit": "celsius",
        "tags": ["t", "t", "t"],
        "ratio": 1.5,
        "note": True,
    }


def test_response_formats_fill_every_property() -> None:
    assert set(example(SCHEMA, "x", every_property=True)) == set(SCHEMA["properties"])


def test_tool_choice_picks_the_named_tool_and_none_declines() -> None:
    chat_shape = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in "ab"]
    responses_shape = [{"type": "function", "name": n, "parameters": {}} for n in "ab"]
    for tools in (chat_shape, responses_shape):
        assert pick_tool(tools, "auto") == ("a", {})
        assert pick_tool(tools, {"type": "function", "function": {"name": "b"}}) == ("b", {})
        assert pick_tool(tools, {"type": "function", "name": "b"}) == ("b", {})
        assert pick_tool(tools, "none") is None
    assert pick_tool([{"type": "web_search"}], "auto") is None


def test_offered_tools_get_a_call_unless_tool_calls_are_off() -> None:
    tools = [{"type": "function", "function": {"name": "get", "parameters": SCHEMA}}]
    asked = {"prompt": "Weather?", "context": "Weather?", "tools": tools, "choice": None}
    called = answer(**asked, fmt=None, variant=0, tool_calls=True)
    assert called.text is None and called.tool is not None
    assert called.tool == ToolCall("get", called.tool.arguments)
    assert called.completion_tokens == tokens(f"get {called.tool.arguments}")
    said = answer(**asked, fmt=None, variant=0, tool_calls=False)
    assert said.tool is None and said.text == answer_text("Weather?", 0)
    assert said.prompt_tokens == tokens("Weather?")


def test_json_formats_answer_json_in_either_api_shape() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    asked = {"prompt": "hi", "context": "hi", "tools": None, "choice": None, "variant": 0}
    formats = (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},  # Chat
        {"type": "json_schema", "name": "s", "schema": schema},  # Responses
    )
    parsed = [orjson.loads(answer(**asked, fmt=f, tool_calls=True).text or "") for f in formats]
    assert set(parsed[0]) == {"answer", "topic"}
    assert parsed[1] == parsed[2] == {"ok": True}


def test_input_texts_accept_strings_and_token_arrays() -> None:
    assert input_texts("one") == ["one"]
    assert input_texts(["one", "two"]) == ["one", "two"]
    assert input_texts([1, 2]) == ["1 2"]
    assert input_texts([[1, 2], [3]]) == ["1 2", "3"]
    assert input_texts([]) == input_texts(5) == input_texts(["a", 1]) == []


def test_the_prompt_is_the_last_user_message_and_the_context_every_message() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "image_url"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    assert chat_prompt(messages) == ("second", "Be brief. first ok second")
    request = {"instructions": "Be kind.", "input": messages[1:]}
    assert responses_prompt(request) == ("second", "Be kind. first ok second")
    assert responses_prompt({"input": "just this"}) == ("just this", "just this")


def test_vectors_are_unit_float32_and_differ_by_text_and_variant() -> None:
    packed = vector("one", 16, 0)
    values = struct.unpack("<16f", packed)
    assert math.isclose(sum(v * v for v in values), 1.0, rel_tol=1e-5)
    assert packed == vector("one", 16, 0)
    assert packed not in (vector("two", 16, 0), vector("one", 16, 1))


def test_png_is_a_valid_one_pixel_image_coloured_by_its_key() -> None:
    image = base64.b64decode(png("a cat"))
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and image.endswith(b"IEND\xaeB`\x82")
    length, tag = struct.unpack(">I4s", image[8:16])
    assert tag == b"IHDR" and struct.unpack(">II", image[16:24]) == (1, 1)
    crc = struct.unpack(">I", image[16 + length : 20 + length])[0]
    assert crc == zlib.crc32(image[12 : 16 + length])
    assert png("a cat") == png("a cat") != png("a dog")
