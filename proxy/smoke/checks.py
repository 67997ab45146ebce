"""The checklist: what each check sends, and how its answer is graded. Pure.

A check proves more than a 200: a usable message, the model asked for, usage the report can
count, a stream that ends as the SDKs expect, arguments an app can parse, and errors an app
can read. Each grade says pass or fail, why, and the evidence: the status, the field that
failed, and a short excerpt of what came back.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from proxy.smoke.schema import mismatch
from proxy.sse import SSEDecoder

Status = Literal["pass", "fail", "skip"]
Kind = Literal["chat", "embeddings", "images"]  # the model a check needs
KINDS: Final[tuple[Kind, ...]] = ("chat", "embeddings", "images")
EXCERPT: Final = 160  # characters of an answer shown as evidence


@dataclass(frozen=True, slots=True)
class Evidence:
    status: int | None = None  # the HTTP status, when an answer came
    field: str | None = None  # where the answer failed, as a JSON path
    excerpt: str | None = None  # a short piece of the answer


@dataclass(frozen=True, slots=True)
class Row:
    check: str
    status: Status
    reason: str
    evidence: Evidence = Evidence()
    total_ms: float | None = None  # the call's time, when one was made


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back from one call, as the checks read it."""

    status: int | None  # None: no HTTP answer
    body: bytes  # OpenAI-shaped (translated when the provider speaks another shape)
    error: str | None  # the sidecar's reason when no answer, or a broken one, came
    sse: bool  # it came as an event stream
    ttft_ms: float | None
    total_ms: float | None


@dataclass(frozen=True, slots=True)
class Expect:
    """What the answers should say, known before the calls."""

    model: str | None  # the id sent to the upstream (after its `models:` map)
    listed: tuple[str, ...]  # ids the model list must include
    dims: int | None  # an embedding's expected length, when configured


class Failed(Exception):
    """A grade that failed, raised from deep in a reader to its check."""

    def __init__(self, reason: str, field: str | None = None, excerpt: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.excerpt = excerpt


# --- requests ------------------------------------------------------------------------------

PING: Final = "Reply with the single word: pong"
WEATHER: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
CITY: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
TOOLS: Final = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER,
        },
    }
]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": _user(PING)}


def stream_body(model: str) -> dict[str, Any]:
    return {**chat_body(model), "stream": True, "stream_options": {"include_usage": True}}


def tools_body(model: str) -> dict[str, Any]:
    ask = "What is the weather in Paris right now? Use the tool."
    return {"model": model, "messages": _user(ask), "tools": TOOLS, "tool_choice": "required"}


def json_body(model: str) -> dict[str, Any]:
    ask = 'Answer in JSON: an object with the key "ok" set to true.'
    return {"model": model, "messages": _user(ask), "response_format": {"type": "json_object"}}


def structured_body(model: str) -> dict[str, Any]:
    schema = {"name": "city", "strict": True, "schema": CITY}
    return {
        "model": model,
        "messages": _user("Name a city and its country."),
        "response_format": {"type": "json_schema", "json_schema": schema},
    }


def embeddings_body(model: str) -> dict[str, Any]:
    # base64, as the openai SDK asks when the app names no encoding_format.
    return {"model": model, "input": "smoke test", "encoding_format": "base64"}


def responses_body(model: str) -> dict[str, Any]:
    return {"model": model, "input": PING}


def responses_stream_body(model: str) -> dict[str, Any]:
    return {**responses_body(model), "stream": True}


def images_body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "a plain red square", "n": 1}


# A model id no provider has: the wrong-model check's.
WRONG_MODEL: Final = "no-such-model-smoke-test"


def wrong_model_body(model: str) -> dict[str, Any]:
    return chat_body(WRONG_MODEL)


# --- reading answers -----------------------------------------------------------------------


def excerpt(data: bytes | str, limit: int = EXCERPT) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def readable(body: bytes) -> str | None:
    """The message an SDK shows for an error answer, when it is one a person can read: the
    `error.message` of a JSON body (OpenAI's and Anthropic's shape), not a page of HTML."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = obj.get("error", obj) if isinstance(obj, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message.strip() or "<html" in message.lower():
        return None
    return message


def sdk_error(status: int) -> str:
    """The exception the openai SDK raises for an error status."""
    names = {
        400: "BadRequestError",
        401: "AuthenticationError",
        403: "PermissionDeniedError",
        404: "NotFoundError",
        409: "ConflictError",
        422: "UnprocessableEntityError",
        429: "RateLimitError",
    }
    return names.get(status, "InternalServerError" if status >= 500 else "APIStatusError")


def _answer(reply: Reply) -> Any:
    """The JSON of a successful answer; raises `Failed` for no answer, an error, or not JSON."""
    if reply.status is None:
        raise Failed(f"no answer: {reply.error or 'the call failed'}")
    if not 200 <= reply.status < 300:
        said = readable(reply.body)
        raise Failed(
            f"HTTP {reply.status} ({sdk_error(reply.status)})" + (f": {said}" if said else ""),
            excerpt=excerpt(reply.body),
        )
    try:
        return orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise Failed("the answer is not JSON", excerpt=excerpt(reply.body)) from None


def _at(obj: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int):
            obj = obj[step] if isinstance(obj, list) and len(obj) > step else None
        else:
            obj = obj.get(step) if isinstance(obj, dict) else None
    return obj


def _path(*path: str | int) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _need(obj: Any, what: str, *path: str | int) -> Any:
    value = _at(obj, *path)
    if value is None or value == "" or value == []:
        raise Failed(f"no {what}", _path(*path))
    return value


def same_model(answered: str, sent: str) -> bool:
    """A provider answers with a dated version of the id it was sent (gpt-4o-mini →
    gpt-4o-mini-2024-07-18), and a gateway with or without its vendor prefix."""
    a, s = answered.rsplit("/", 1)[-1], sent.rsplit("/", 1)[-1]
    return a == s or a.startswith(s + "-") or a.startswith(s + "@")


def _model(obj: Any, expect: Expect) -> str:
    answered = _at(obj, "model")
    if not isinstance(answered, str) or not answered:
        raise Failed("the answer names no model", "model")
    if expect.model is not None and not same_model(answered, expect.model):
        raise Failed(f"answered as {answered}, not the {expect.model} it was sent", "model")
    return answered


def _usage(usage: Any, prompt: str, completion: str, field: str) -> tuple[int, int]:
    p, c = _at(usage, prompt), _at(usage, completion)
    if not isinstance(p, int) or not isinstance(c, int):
        raise Failed("no usage: the report cannot count its tokens", field, excerpt(repr(usage)))
    return p, c


def _json_content(text: Any, field: str) -> Any:
    if not isinstance(text, str):
        raise Failed("no content to parse", field)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Failed("the content is not JSON", field, excerpt(text)) from None


# --- grades --------------------------------------------------------------------------------


def chat(reply: Reply, expect: Expect) -> str:
    obj = _answer(reply)
    role = _need(obj, "message", "choices", 0, "message", "role")
    if role != "assistant":
        raise Failed(f"the message's role is {role!r}", "choices[0].message.role")
    text = _need(obj, "assistant text", "choices", 0, "message", "content")
    if not isinstance(text, str):
        raise Failed("the content is not text", "choices[0].message.content", excerpt(repr(text)))
    model = _model(obj, expect)
    p, c = _usage(obj.get("usage"), "prompt_tokens", "completion_tokens", "usage")
    return f"answered as {model}, usage {p} + {c} tokens: {excerpt(text, 60)!r}"


def _events(body: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.flush()
    return [e.data for e in events if e.data is not None]


def stream(reply: Reply, expect: Expect) -> str:
    if reply.status is None or not 200 <= reply.status < 300 or not reply.sse:
        if reply.status is not None and 200 <= reply.status < 300:
            raise Failed("the answer is not an event stream", "content-type", excerpt(reply.body))
        _answer(reply)
    text, finish, usage, done = "", None, None, False
    for i, data in enumerate(_events(reply.body)):
        if done:
            raise Failed("events after data: [DONE]", f"event {i}", excerpt(data))
        if data.strip() == b"[DONE]":
            done = True
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Failed("an event that is not JSON", f"event {i}", excerpt(data)) from None
        if _at(chunk, "error") is not None:
            raise Failed("an error event mid-stream", f"event {i}.error", excerpt(data))
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            piece = _at(choice, "delta", "content")
            if piece and finish is not None:
                raise Failed("content after the finish_reason", f"event {i}", excerpt(data))
            text += piece if isinstance(piece, str) else ""
            finish = _at(choice, "finish_reason") or finish
    if not done:
        raise Failed("the stream ended without data: [DONE]", "[DONE]", reply.error)
    if not text:
        raise Failed("no assistant text in the stream", "choices[0].delta.content")
    if finish is None:
        raise Failed("no chunk gave a finish_reason", "choices[0].finish_reason")
    if usage is None:
        raise Failed("no usage chunk, though stream_options.include_usage asked for one", "usage")
    p, c = _usage(usage, "prompt_tokens", "completion_tokens", "usage")
    return f"ended with [DONE] after finish_reason {finish!r}, usage {p} + {c} tokens"


def tools(reply: Reply, expect: Expect) -> str:
    obj = _answer(reply)
    base = ("choices", 0, "message", "tool_calls")
    function = _need(obj, "tool call, though tool_choice required one", *base, 0, "function")
    name = _at(function, "name")
    if name != "get_weather":
        raise Failed(f"called {name!r}, not get_weather", _path(*base, 0, "function", "name"))
    field = _path(*base, 0, "function", "arguments")
    raw = _at(function, "arguments")
    if not isinstance(raw, str):
        raise Failed("the arguments are not a JSON string", field, excerpt(repr(raw)))
    try:
        arguments = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Failed("the arguments are not JSON", field, excerpt(raw)) from None
    wrong = mismatch(arguments, WEATHER)
    if wrong:
        raise Failed(f"the arguments do not match the tool's schema: {wrong}", field, excerpt(raw))
    return f"get_weather({excerpt(raw, 60)})"


def json_mode(reply: Reply, expect: Expect) -> str:
    field = "choices[0].message.content"
    parsed = _json_content(_at(_answer(reply), "choices", 0, "message", "content"), field)
    if not isinstance(parsed, dict):
        raise Failed("the content is JSON but not an object", field, excerpt(repr(parsed)))
    return f"parses: {excerpt(orjson.dumps(parsed), 60)}"


def structured(reply: Reply, expect: Expect) -> str:
    field = "choices[0].message.content"
    parsed = _json_content(_at(_answer(reply), "choices", 0, "message", "content"), field)
    wrong = mismatch(parsed, CITY)
    if wrong:
        raise Failed(f"does not match the schema: {wrong}", field, excerpt(orjson.dumps(parsed)))
    return f"parses and matches the schema: {excerpt(orjson.dumps(parsed), 60)}"


def embeddings(reply: Reply, expect: Expect) -> str:
    vector = _need(_answer(reply), "embedding", "data", 0, "embedding")
    field = "data[0].embedding"
    if isinstance(vector, str):
        try:
            size, how = len(base64.b64decode(vector, validate=True)), "base64"
        except ValueError:
            raise Failed("the embedding is not base64", field, excerpt(vector)) from None
        if size % 4:
            raise Failed("the embedding is not base64 of float32s", field, excerpt(vector))
        dims = size // 4
    elif isinstance(vector, list) and all(isinstance(v, int | float) for v in vector):
        dims, how = len(vector), "a list of floats"
    else:
        raise Failed("the embedding is not a vector", field, excerpt(repr(vector)))
    if expect.dims is not None and dims != expect.dims:
        raise Failed(f"a vector of {dims} dimensions, not the {expect.dims} configured", field)
    return f"a vector of {dims} dimensions ({how})"


def models(reply: Reply, expect: Expect) -> str:
    data = _need(_answer(reply), "model list", "data")
    listed = {m.get("id") for m in data if isinstance(m, dict)} if isinstance(data, list) else set()
    missing = [m for m in expect.listed if m not in listed]
    if missing:
        raise Failed(
            f"{len(missing)} of the ids the config sends are not listed",
            "data[].id",
            excerpt(", ".join(missing)),
        )
    shown = ", ".join(expect.listed) if expect.listed else "none expected"
    return f"lists {len(listed)} models, including {excerpt(shown, 80)}"


def _output_text(response: Any) -> str:
    text = ""
    for item in _at(response, "output") or ():
        for part in _at(item, "content") or ():
            if _at(part, "type") == "output_text" and isinstance(_at(part, "text"), str):
                text += part["text"]
    return text


def responses(reply: Reply, expect: Expect) -> str:
    obj = _answer(reply)
    status = _at(obj, "status")
    if status not in (None, "completed"):
        raise Failed(f"the response is {status!r}, not completed", "status")
    text = _output_text(obj)
    if not text:
        raise Failed("no output_text in the response", "output[].content[].text")
    model = _model(obj, expect)
    p, c = _usage(obj.get("usage"), "input_tokens", "output_tokens", "usage")
    return f"answered as {model}, usage {p} + {c} tokens: {excerpt(text, 60)!r}"


def responses_stream(reply: Reply, expect: Expect) -> str:
    if reply.status is not None and 200 <= reply.status < 300 and not reply.sse:
        raise Failed("the answer is not an event stream", "content-type", excerpt(reply.body))
    if reply.status is None or not 200 <= reply.status < 300:
        _answer(reply)
    kinds: list[str] = []
    text, final = "", None
    for i, data in enumerate(_events(reply.body)):
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Failed("an event that is not JSON", f"event {i}", excerpt(data)) from None
        kind = str(_at(event, "type"))
        if kinds and kinds[-1] in ("response.completed", "response.failed", "error"):
            raise Failed(f"events after {kinds[-1]}", f"event {i}", excerpt(data))
        kinds.append(kind)
        if kind in ("error", "response.failed", "response.incomplete"):
            raise Failed(f"the stream reported {kind}", f"event {i}", excerpt(data))
        if kind == "response.output_text.delta" and isinstance(_at(event, "delta"), str):
            text += event["delta"]
        if kind == "response.completed":
            final = _at(event, "response")
    if not kinds or kinds[0] != "response.created":
        raise Failed("the stream did not begin with response.created", "event 0.type")
    if final is None:
        raise Failed("the stream ended without response.completed", "type", reply.error)
    if not text:
        raise Failed("no output_text deltas in the stream", "response.output_text.delta")
    p, c = _usage(_at(final, "usage"), "input_tokens", "output_tokens", "response.usage")
    return f"{len(kinds)} events, response.created to response.completed, usage {p} + {c} tokens"


def images(reply: Reply, expect: Expect) -> str:
    first = _need(_answer(reply), "image", "data", 0)
    for key in ("b64_json", "url"):
        if isinstance(_at(first, key), str) and first[key]:
            return f"an image ({key})"
    raise Failed("the image has neither b64_json nor url", "data[0]", excerpt(repr(first)))


def wrong_model(reply: Reply, expect: Expect) -> str:
    status = reply.status
    if status is None:
        raise Failed(f"no answer: {reply.error or 'the call failed'}")
    if status < 400:
        raise Failed(
            f"HTTP {status} for a model that does not exist: a mistyped model would go unnoticed",
            "model",
            excerpt(reply.body),
        )
    message = readable(reply.body)
    if status >= 500 or status == 429:
        kind = "a page, not a JSON error" if message is None else f"{message!r}"
        raise Failed(
            f"HTTP {status} ({sdk_error(status)}, which the SDK retries) for a wrong model, not "
            f"a 400 or 404: {kind}",
            excerpt=excerpt(reply.body),
        )
    if message is None:
        raise Failed(
            f"HTTP {status} without a readable message: the SDK shows the raw body",
            "error.message",
            excerpt(reply.body),
        )
    return f"HTTP {status}: the SDK raises {sdk_error(status)}: {excerpt(message, 80)!r}"


def wrong_key_check(key: str, marker: bytes) -> Callable[[Reply, Expect], str]:
    """The grade of a call made with `key`, a wrong one. The sidecar replaces a key an answer
    quotes with `marker` before anyone reads it; finding the marker (or a long piece of the
    key) means the gateway echoed the key it was sent."""
    pieces = [key[i : i + 12].encode() for i in range(0, max(len(key) - 11, 1), 4)]

    def grade(reply: Reply, expect: Expect) -> str:
        status, body = reply.status, reply.body
        if status is None:
            raise Failed(f"no answer: {reply.error or 'the call failed'}")
        if status < 400:
            raise Failed(f"HTTP {status}: a wrong key was accepted", excerpt=excerpt(body))
        if status not in (401, 403):
            raise Failed(
                f"HTTP {status}, not 401 or 403: the SDK raises {sdk_error(status)}, "
                "not AuthenticationError",
                excerpt=excerpt(body),
            )
        if marker in body or any(p in body for p in pieces):
            shown = body.replace(key.encode(), marker)
            for p in pieces:
                shown = shown.replace(p, b"[...]")
            raise Failed("the error quotes the key it was sent", "error.message", excerpt(shown))
        message = readable(body)
        if message is None:
            raise Failed(
                f"HTTP {status} without a readable message", "error.message", excerpt(body)
            )
        return f"HTTP {status}: the SDK raises {sdk_error(status)}: {excerpt(message, 80)!r}"

    return grade


def latency(
    chat: Reply | None, stream: Reply | None, max_ttft_ms: float | None, max_total_ms: float | None
) -> Row:
    """Time to first token (the stream check's call) and total time (the chat check's)."""
    ok = [r for r in (chat, stream) if r is not None and r.status == 200]
    if not ok:
        return Row("latency", "skip", "no successful chat or stream call to time")
    said = []
    if stream is not None and stream.status == 200:
        if stream.ttft_ms is None:
            return Row("latency", "fail", "the stream carried no content", Evidence(200, "ttft"))
        said.append(f"first token {stream.ttft_ms:.0f} ms (stream)")
        if max_ttft_ms is not None and stream.ttft_ms > max_ttft_ms:
            why = f"first token after {stream.ttft_ms:.0f} ms, over max_ttft_ms {max_ttft_ms:g}"
            return Row("latency", "fail", why, Evidence(200, "ttft"))
    if chat is not None and chat.status == 200 and chat.total_ms is not None:
        said.append(f"total {chat.total_ms:.0f} ms (chat)")
        if max_total_ms is not None and chat.total_ms > max_total_ms:
            why = f"total {chat.total_ms:.0f} ms, over max_total_ms {max_total_ms:g}"
            return Row("latency", "fail", why, Evidence(200, "total"))
    return Row("latency", "pass", "; ".join(said))


# --- the checklist -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spec:
    """One check that makes a call: what it sends, and how the answer is graded."""

    name: str
    method: str
    tail: str  # after the upstream's base URL, as an app's SDK would send it
    kind: Kind | None  # the model it is sent with; None: no model
    body: Callable[[str], dict[str, Any]]
    grade: Callable[[Reply, Expect], str] | None  # None: the wrong key's, made per run
    proves: str


CHECKS: Final[tuple[Spec, ...]] = (
    Spec("chat", "POST", "/chat/completions", "chat", chat_body, chat,
         "an assistant message, the model asked for, usage"),
    Spec("stream", "POST", "/chat/completions", "chat", stream_body, stream,
         "events in order, a finish_reason, [DONE], usage when asked for"),
    Spec("tools", "POST", "/chat/completions", "chat", tools_body, tools,
         "a tool call whose arguments are JSON matching the schema"),
    Spec("json", "POST", "/chat/completions", "chat", json_body, json_mode,
         "JSON mode: the content parses"),
    Spec("structured", "POST", "/chat/completions", "chat", structured_body, structured,
         "structured output: parses and matches the schema"),
    Spec("embeddings", "POST", "/embeddings", "embeddings", embeddings_body, embeddings,
         "a vector, and its size"),
    Spec("models", "GET", "/models", None, lambda _: {}, models,
         "the model list includes the ids the config sends"),
    Spec("responses", "POST", "/responses", "chat", responses_body, responses,
         "the Responses API: output text and usage"),
    Spec("responses_stream", "POST", "/responses", "chat", responses_stream_body,
         responses_stream, "the Responses API streamed: created to completed, usage"),
    Spec("images", "POST", "/images/generations", "images", images_body, images,
         "an image, where an image model is named"),
    Spec("wrong_model", "POST", "/chat/completions", "chat", wrong_model_body, wrong_model,
         "a model that does not exist: a 4xx the SDK raises, with a readable message"),
    Spec("wrong_key", "POST", "/chat/completions", "chat", chat_body, None,
         "a wrong key: 401 or 403, readable, and the key not quoted back"),
)  # fmt: skip
LATENCY: Final = "latency"  # a row of its own, from the chat and stream calls' timings
NAMES: Final[tuple[str, ...]] = (*(c.name for c in CHECKS), LATENCY)
