"""What a fake says, a pure function of the request: texts, tool calls, tokens, vectors, PNGs."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from proxy.fakes.api import Style

_TEMPLATES: Final = (
    'Here is a short answer about "{topic}". The same question always gets the same reply.',
    'Here is a brief answer about "{topic}". The same question always gets the same reply.',
    'A short answer about "{topic}" follows. This provider gives the same reply every time.',
)

# What a worse provider says to anything: off the topic and short, so that a report's text
# similarity sees it at once (it shares no word with the templates above).
WORSE: Final = "Sorry, I can only talk about the weather today."


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Answer:
    text: str | None  # None when the answer is a tool call
    tool: ToolCall | None
    prompt_tokens: int
    completion_tokens: int


@functools.lru_cache(maxsize=4096)
def tokens(text: str) -> int:
    """OpenAI's rule of thumb, a token is about 0.75 words; being deterministic is what counts."""
    words = len(text.split())
    return max(1, int(words / 0.75 + 0.5)) if words else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _topic(prompt: str) -> str:
    words = prompt.split()
    if not words:
        return "nothing in particular"
    return " ".join(words[:8]) + ("..." if len(words) > 8 else "")


@functools.lru_cache(maxsize=4096)
def answer_text(prompt: str, variant: int) -> str:
    text = _TEMPLATES[variant % len(_TEMPLATES)].format(topic=_topic(prompt))
    return text if variant < len(_TEMPLATES) else f"{text} (variant {variant})"


def example(schema: Any, topic: str, *, every_property: bool) -> Any:
    """A value of `schema`'s shape: tool arguments fill the required properties; response
    formats fill every property, since strict schemas require them all anyway."""

    def walk(node: Any, depth: int) -> Any:
        if not isinstance(node, dict) or depth > 16:
            return topic
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            return walk(target, depth + 1)
        if "const" in node:
            return node["const"]
        enum = node.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf", "allOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                return walk(options[0], depth + 1)
        kind = node.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in node):
            props = node.get("properties")
            props = props if isinstance(props, dict) else {}
            required = node.get("required")
            names = (
                list(props) if every_property else required if isinstance(required, list) else []
            )
            return {n: walk(props.get(n), depth + 1) for n in names if isinstance(n, str)}
        if kind == "array":
            count = node.get("minItems")
            count = min(max(count, 1), 3) if isinstance(count, int) else 1
            return [walk(node.get("items"), depth + 1) for _ in range(count)]
        minimum = node.get("minimum")
        if kind == "integer":
            return math.ceil(minimum) if isinstance(minimum, int | float) else 1
        if kind == "number":
            return minimum if isinstance(minimum, int | float) else 1.5
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        limit = node.get("maxLength")
        return topic[:limit] if isinstance(limit, int) else topic

    return walk(schema, 0)


def pick_tool(tools: Any, choice: Any) -> tuple[str, Any] | None:
    """The first function tool (or the one `tool_choice` names); accepts the Chat shape
    {"function": {"name", "parameters"}} and the Responses shape {"name", "parameters"}."""
    if not isinstance(tools, list) or choice == "none":
        return None
    wanted = None
    if isinstance(choice, dict):
        named: Any = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        wanted = named.get("name")
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        fn = tool["function"] if isinstance(tool.get("function"), dict) else tool
        name = fn.get("name")
        if isinstance(name, str) and wanted in (None, name):
            return name, fn.get("parameters")
    return None


def answer(
    *,
    prompt: str,
    context: str,
    tools: Any,
    choice: Any,
    fmt: Any,
    variant: int,
    tool_calls: bool,
) -> Answer:
    """The answer to `prompt`: a call of the offered tool when `tool_calls` allows one, else
    text in the asked format. `context` is everything the prompt tokens are counted over."""
    topic = _topic(prompt)
    prompt_tokens = tokens(context)
    picked = pick_tool(tools, choice) if tool_calls else None
    if picked is not None:
        name, params = picked
        args = orjson.dumps(example(params, topic, every_property=False)).decode()
        return Answer(None, ToolCall(name, args), prompt_tokens, tokens(f"{name} {args}"))
    text = answer_text(prompt, variant)
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        text = orjson.dumps({"answer": text, "topic": topic}).decode()
    elif kind == "json_schema":
        # Chat nests the schema under "json_schema"; Responses puts it beside "type".
        nested = fmt.get("json_schema")
        schema = nested.get("schema") if isinstance(nested, dict) else fmt.get("schema")
        text = orjson.dumps(example(schema, topic, every_property=True)).decode()
    return Answer(text, None, prompt_tokens, tokens(text))


def respond(
    *, prompt: str, context: str, tools: Any, choice: Any, fmt: Any, style: Style
) -> Answer:
    """`answer` as the style says it: worse text (plain answers only, so that a JSON mode
    still parses) or tool arguments that are not JSON (cut before their last character, as a
    model stopped short writes them)."""
    said = answer(
        prompt=prompt,
        context=context,
        tools=tools,
        choice=choice,
        fmt=fmt,
        variant=style.variant,
        tool_calls=style.tool_calls,
    )
    if said.tool is not None and style.tool_json == "broken":
        args = said.tool.arguments[:-1]
        return replace(said, tool=ToolCall(said.tool.name, args))
    plain = not isinstance(fmt, dict) or fmt.get("type") in (None, "text")
    if said.text is not None and style.quality == "worse" and plain:
        return replace(said, text=WORSE, completion_tokens=tokens(WORSE))
    return said


def input_texts(raw: Any) -> list[str]:
    """The texts of a `prompt` or `input`: a string, strings, a token array or token arrays.
    The fake has no tokenizer, so token ids stand in for words."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        return []
    if all(isinstance(x, str) for x in raw):
        return raw
    if all(isinstance(x, int) for x in raw):
        return [" ".join(map(str, raw))]
    if all(isinstance(x, list) for x in raw):
        return [" ".join(map(str, x)) for x in raw]
    return []


def chat_prompt(messages: list[Any]) -> tuple[str, str]:
    """The last user message, and every message's text, of a chat request."""
    last_user, texts = "", []
    for message in messages:
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            texts.append(text)
            if message.get("role") == "user":
                last_user = text
    return last_user, " ".join(texts)


def responses_prompt(data: dict[str, Any]) -> tuple[str, str]:
    """The last user input, and the instructions' and every input item's text, of a
    Responses request."""
    instructions = data.get("instructions")
    texts = [instructions] if isinstance(instructions, str) else []
    items = data.get("input")
    if isinstance(items, str):
        return items, " ".join([*texts, items])
    last_user = ""
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            text = _text_of(item.get("content", item.get("output")))
            texts.append(text)
            if item.get("role") == "user":
                last_user = text
    return last_user, " ".join(texts)


def vector(text: str, dimensions: int, variant: int) -> bytes:
    """A unit vector as little-endian float32, the layout of OpenAI's base64 embeddings."""
    raw = hashlib.shake_256(f"{variant}\0{text}".encode()).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in values))


def png(key: str) -> str:
    """A real 1x1 PNG whose colour depends on `key`, base64-encoded."""
    return base64.b64encode(png_bytes(key)).decode()


def png_bytes(key: str) -> bytes:
    """A real 1x1 PNG whose colour depends on `key`."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    pixel = b"\0" + hashlib.blake2b(key.encode(), digest_size=3).digest()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )
