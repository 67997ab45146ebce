"""What to record about an answer: error kind, token usage, a shape signature, the reassembled
text and tool calls, and how alike two answers are. Pure functions over parsed JSON.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from proxy.record.rows import ErrorKind
from proxy.tally import StreamTally, ToolCall, Usage, usage_tokens

__all__ = [
    "Answer",
    "answer_of",
    "embedding_dims",
    "error_kind_for_status",
    "finish_of",
    "images_of",
    "json_ok",
    "normalise",
    "sha256_hex",
    "shape_of",
    "shape_paths",
    "shape_signature",
    "similarity",
    "stream_body",
    "stream_shape",
    "stream_signature",
    "text_sha256",
    "tool_calls_json",
    "usage_in",
    "usage_of",
    "wants_json",
]


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def error_kind_for_status(status: int) -> ErrorKind | None:
    """1xx-3xx are not errors here; anything from 500 up counts as the server's fault."""
    if status < 400:
        return None
    if status == 429:
        return "rate_limit"
    if status < 500:
        return "http_4xx"
    return "http_5xx"


def usage_of(body: object) -> Usage:
    """The token counts of a non-stream body (OpenAI's APIs or Anthropic's Messages), with
    its cached prompt tokens; None for what it didn't say."""
    if not isinstance(body, dict):
        return usage_tokens(None)
    return usage_tokens(body.get("usage"))


# OpenAI's chat answer opens its usage with the two counts side by side: read by one
# anchored match, no parse. Other shapes (Anthropic's cache counts, the Responses API's
# details in between) are parsed, their usage object alone where it is the last member.
_USAGE_PAIR = re.compile(
    rb'"usage"\s*:\s*\{\s*"prompt_tokens"\s*:\s*(\d+)\s*,\s*"completion_tokens"\s*:\s*(\d+)\b'
)


def usage_in(body: bytes | None) -> tuple[int, int]:
    """Input and output tokens of a plain answer's body, 0 for what it doesn't say; the
    same counts as `usage_of` reads from the parsed body, found cheaply where possible."""
    at = body.rfind(b'"usage"') if body else -1
    if body is None or at < 0:
        return 0, 0
    m = _USAGE_PAIR.match(body, at)
    if m is not None:
        return int(m[1]), int(m[2])
    try:
        usage: Any = orjson.loads(body[body.index(b":", at) + 1 : body.rindex(b"}")])
    except (ValueError, orjson.JSONDecodeError):
        try:
            usage = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0, 0
        usage = usage.get("usage") if isinstance(usage, dict) else None
    counts = usage_tokens(usage)
    return counts.prompt or 0, counts.completion or 0


def _first_item(body: object) -> object:
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, list) and data:
            return data[0]
    return None


def embedding_dims(body: object) -> int | None:
    """The dimension of an embeddings answer's first vector (a list of floats, or base64 of
    float32s as the SDKs ask for by default); None for any other answer."""
    item = _first_item(body)
    if not isinstance(item, dict):
        return None
    return _dims(item.get("embedding"))


def _dims(vector: object) -> int | None:
    if isinstance(vector, list):
        return len(vector)
    if isinstance(vector, str) and vector:
        padding = len(vector) - len(vector.rstrip("="))
        return (len(vector) * 3 // 4 - padding) // 4  # float32: four bytes each
    return None


def images_of(body: object) -> int | None:
    """How many images an answer carries: the Images API's `data` items with a `url` or
    `b64_json`, or the Responses API's finished `image_generation_call` outputs; None when
    it is no image answer."""
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if isinstance(data, list) and data:
        first = data[0]
        if isinstance(first, dict) and ("url" in first or "b64_json" in first):
            return sum(
                1 for d in data if isinstance(d, dict) and (d.get("url") or d.get("b64_json"))
            )
        return None
    output = body.get("output")
    if isinstance(output, list):
        images = sum(
            1
            for item in output
            if isinstance(item, dict)
            and item.get("type") == "image_generation_call"
            and item.get("result")
        )
        return images or None
    return None


# --- shape ---------------------------------------------------------------------------------

# Present or absent depending on the provider, and no client's business either way.
# (`logprobs: null` goes with the other empty values below.)
_VOLATILE = frozenset({"id", "created", "created_at", "system_fingerprint", "service_tier"})
# Keys whose string values are part of the shape: they change what a client does next.
_VALUED = frozenset({"finish_reason", "object", "status"})
# Inside `usage` only the token counts the report reads; the *_details vary by provider.
_USAGE_KEYS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens"}
)
_MAX_DEPTH = 32  # deeper structure is summarised, so no body can exhaust the stack
_NUMBERS = frozenset({int, float})


_EMPTY_ABLE = (str, list, dict)


_QUOTED: dict[str, str] = {}  # "stop" -> '"stop"': a few values, quoted on every answer


def _quoted(text: str) -> str:
    quoted = _QUOTED.get(text)
    if quoted is None:
        quoted = orjson.dumps(text).decode()
        if len(_QUOTED) < 256:
            _QUOTED[text] = quoted
    return quoted


# Parsed JSON holds exactly these types: `type(v) is` finds them without isinstance's walk.
_LEAF: dict[type, str] = {str: "str", bool: "bool", int: "num", float: "num", type(None): "null"}


def _sig(value: object, depth: int) -> str:
    leaf = _LEAF.get(type(value))
    if leaf is not None:
        return leaf
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return "{...}"
        parts = []
        try:
            keys = sorted(value)
        except TypeError:  # not all str: not from JSON, but still a shape
            keys = sorted(value, key=str)
        leaves = _LEAF
        for key in keys:
            item = value[key]
            name = str(key)
            if _passed_over(name, item):
                continue
            if name in _VALUED and isinstance(item, str):
                parts.append(f"{name}:{_quoted(item)}")
            elif name == "embedding" and (dims := _dims(item)) is not None:
                # A vector's length is its shape: 1536 numbers don't fit an index of 1024.
                kind = "[num" if isinstance(item, list) else "[b64"
                parts.append(f"embedding:{kind};{dims}]")
            elif name == "usage" and isinstance(item, dict):
                usage = {k: v for k, v in item.items() if k in _USAGE_KEYS}
                parts.append(f"usage:{_sig(usage, depth + 1)}")
            else:
                leaf = leaves.get(type(item))
                parts.append(f"{name}:{leaf if leaf is not None else _sig(item, depth + 1)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        # Long lists of scalars (embeddings, logprobs) are summarised by type, not walked.
        types = set(map(type, value))
        if types <= _NUMBERS:
            return "[num]"
        if types == {str}:
            return "[str]"
        if depth >= _MAX_DEPTH:
            return "[...]"
        return "[" + "|".join(sorted({_sig(item, depth + 1) for item in value})) + "]"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return type(value).__name__


def shape_signature(obj: object) -> str:
    """The readable structure of a JSON value: keys and value types, sorted, lists as the
    union of their element shapes. Values are ignored except `finish_reason`, `object` and
    `status`; volatile keys (ids, timestamps, fingerprints, usage details, `x_*` vendor
    extensions) and empty values are left out, so equal structures from different
    providers give equal strings.
    """
    return _sig(obj, 0)


def shape_paths(obj: object) -> dict[str, str]:
    """The shape one leaf at a time, by the rules of `shape_signature`: each JSON path
    (`choices[].message.content`) with its type, or its value for the keys whose value is
    part of the shape. Two answers' differing paths say where their shapes part."""
    found: dict[str, set[str]] = {}
    _walk(obj, "", found, 0)
    return {path: "|".join(sorted(kinds)) for path, kinds in found.items()}


def _passed_over(name: str, item: object) -> bool:
    """Members no shape compares: volatile ones (ids, timestamps), vendor extensions, and
    "nothing", which providers spell as null, "", [] or {} or by leaving the key out while
    client code tests truthiness (`if message.tool_calls:`): all alike here."""
    return (
        name in _VOLATILE
        or name.startswith("x_")
        or item is None
        or (isinstance(item, _EMPTY_ABLE) and not item)
    )


def _walk(value: object, path: str, found: dict[str, set[str]], depth: int) -> None:
    if isinstance(value, dict) and depth < _MAX_DEPTH:
        for key, item in value.items():
            name = str(key)
            if _passed_over(name, item):
                continue
            where = f"{path}.{name}" if path else name
            if name in _VALUED and isinstance(item, str):
                found.setdefault(where, set()).add(_quoted(item))
            elif name == "embedding" and (dims := _dims(item)) is not None:
                kind = "num" if isinstance(item, list) else "b64"
                found.setdefault(where, set()).add(f"[{kind};{dims}]")
            elif name == "usage" and isinstance(item, dict):
                usage = {k: v for k, v in item.items() if k in _USAGE_KEYS}
                _walk(usage, where, found, depth + 1)
            else:
                _walk(item, where, found, depth + 1)
        return
    if isinstance(value, list) and depth < _MAX_DEPTH:
        types = set(map(type, value))
        if types <= _NUMBERS or types == {str}:
            found.setdefault(path or "$", set()).add(_sig(value, depth))
            return
        for item in value:
            _walk(item, path + "[]", found, depth + 1)
        return
    found.setdefault(path or "$", set()).add(_sig(value, _MAX_DEPTH))


def shape_of(obj: object) -> str:
    """A 16-hex-digit digest of `shape_signature`, short enough to store on every row."""
    return sha256_hex(shape_signature(obj).encode())[:16]


def stream_signature(tally: StreamTally) -> str:
    """The readable shape of a reassembled stream: what it carried, not what it said."""
    parts = []
    if tally.error is not None:
        parts.append("error")
    if tally.finish_reason is not None:
        parts.append(f"finish_reason:{orjson.dumps(tally.finish_reason).decode()}")
    if tally.text.strip():
        parts.append("text")
    names = sorted({call.name for call in tally.tool_calls})
    if names:
        parts.append(f"tools:[{'|'.join(names)}]")
    if (tally.prompt_tokens, tally.completion_tokens, tally.total_tokens) != (None, None, None):
        parts.append("usage")
    return "stream{" + ",".join(parts) + "}"


def stream_shape(tally: StreamTally) -> str:
    return sha256_hex(stream_signature(tally).encode())[:16]


def stream_body(tally: StreamTally) -> bytes:
    """The reassembled answer stored as a stream's response body under body policy "full"."""
    return orjson.dumps(
        {
            "text": tally.text,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in tally.tool_calls],
            "finish_reason": tally.finish_reason,
        }
    )


# --- the answer ----------------------------------------------------------------------------


class Answer(NamedTuple):  # a tuple: built in C, no per-field object.__setattr__
    text: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None


_NO_ANSWER = Answer(None, (), None)


def _arguments(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value, default=str).decode()


def _call(function: object) -> ToolCall | None:
    if not isinstance(function, dict):
        return None
    name = function.get("name")
    return ToolCall(name if isinstance(name, str) else "", _arguments(function.get("arguments")))


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as some compatible servers answer
        texts = [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        return "".join(texts) if texts else None
    return None


def _chat_answer(choice: dict[str, Any]) -> Answer:
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    message = choice.get("message")
    if not isinstance(message, dict):
        text = choice.get("text")  # legacy Completions
        return Answer(text if isinstance(text, str) else None, (), finish)
    calls: list[ToolCall] = []
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for tool_call in tool_calls:
            if isinstance(tool_call, dict) and (call := _call(tool_call.get("function"))):
                calls.append(call)
    if not calls and (call := _call(message.get("function_call"))):  # the pre-tools API
        calls.append(call)
    return Answer(_content_text(message.get("content")), tuple(calls), finish)


def _responses_answer(body: dict[str, Any], output: list[Any]) -> Answer:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message" and isinstance(item.get("content"), list):
            for part in item["content"]:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and isinstance(part.get("text"), str)
                ):
                    texts.append(part["text"])
        elif kind == "function_call" and (call := _call(item)):
            calls.append(call)
    status = body.get("status")
    return Answer(
        "".join(texts) if texts else None,
        tuple(calls),
        status if isinstance(status, str) else None,
    )


def _message_answer(body: dict[str, Any], content: list[Any]) -> Answer:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            name = block.get("name")
            calls.append(
                ToolCall(name if isinstance(name, str) else "", _arguments(block.get("input")))
            )
    stop = body.get("stop_reason")
    return Answer(
        "".join(texts) if texts else None, tuple(calls), stop if isinstance(stop, str) else None
    )


def answer_of(body: object) -> Answer:
    """Text, tool calls and finish reason of a non-stream chat, completions, Responses or
    Anthropic Messages body.

    Only choice 0 counts. For the Responses API the finish reason is the response `status`,
    as it is for its streams; for Anthropic's, the `stop_reason`.
    """
    if not isinstance(body, dict):
        return _NO_ANSWER
    choices = body.get("choices")
    if isinstance(choices, list):
        first = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        return _NO_ANSWER if first is None else _chat_answer(first)
    output = body.get("output")
    if isinstance(output, list):
        return _responses_answer(body, output)
    content = body.get("content")
    if body.get("type") == "message" and isinstance(content, list):
        return _message_answer(body, content)
    return _NO_ANSWER


def finish_of(body: object) -> str | None:
    """`answer_of(body).finish_reason` alone, without collecting text or tool calls: all a
    recorded answer needs when nothing compares its text (no pair, no JSON mode)."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                finish = choice.get("finish_reason")
                return finish if isinstance(finish, str) else None
        return None
    if isinstance(body.get("output"), list):
        status = body.get("status")
        return status if isinstance(status, str) else None
    if body.get("type") == "message":
        stop = body.get("stop_reason")
        return stop if isinstance(stop, str) else None
    return None


def tool_calls_json(calls: Sequence[ToolCall]) -> str | None:
    """Per call: name, sorted argument keys (null unless a JSON object) and whether it parsed."""
    if not calls:
        return None
    rows = []
    for call in calls:
        try:
            arguments = orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            arguments = None
        valid = isinstance(arguments, dict)
        rows.append(
            {
                "name": call.name,
                "keys": sorted(arguments) if isinstance(arguments, dict) else None,
                "valid": valid,
            }
        )
    return orjson.dumps(rows).decode()


def json_ok(text: str | None, json_mode: bool) -> bool | None:
    """JSON mode asked: did the answer text parse as JSON (strictly, as a client would)."""
    if not json_mode:
        return None
    if text is None:
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


_JSON_FORMATS = frozenset({"json_object", "json_schema"})


def wants_json(request_body: object) -> bool:
    """Chat `response_format.type` or Responses `text.format.type` asks for JSON."""
    if not isinstance(request_body, dict):
        return False
    response_format = request_body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _JSON_FORMATS:
        return True
    text = request_body.get("text")
    if isinstance(text, dict):
        text_format = text.get("format")
        if isinstance(text_format, dict) and text_format.get("type") in _JSON_FORMATS:
            return True
    return False


# --- comparing texts -----------------------------------------------------------------------


def normalise(text: str) -> str:
    """Casefolded, whitespace collapsed, trailing punctuation and whitespace dropped."""
    collapsed = " ".join(text.casefold().split())
    end = len(collapsed)
    while end and (
        collapsed[end - 1].isspace() or unicodedata.category(collapsed[end - 1])[0] == "P"
    ):
        end -= 1
    return collapsed[:end]


def text_sha256(text: str | None) -> str | None:
    return None if text is None else sha256_hex(normalise(text).encode())


_TOKEN = re.compile(r"\w+|[^\w\s]")


def similarity(a: str, b: str) -> float:
    """How alike two answers are, 0..1: difflib's ratio over their normalised word tokens.

    Word order matters for an answer (swapped steps are a different answer), which a token
    set's Jaccard index cannot see, so this is a sequence match. Autojunk is off because it
    would ignore frequent words in answers over 200 tokens and overrate their agreement.
    Punctuation marks inside the text are tokens of their own: "yes, but" is not "yes but".
    """
    left = _TOKEN.findall(normalise(a))
    right = _TOKEN.findall(normalise(b))
    if not left and not right:
        return 1.0
    return difflib.SequenceMatcher(None, left, right, autojunk=False).ratio()
