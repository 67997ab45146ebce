"""A fake's replies in OpenAI's wire shapes: endpoint bodies, stream events, and error bodies."""

from __future__ import annotations

import base64
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson

from proxy.fakes.answers import (
    Answer,
    answer_text,
    chat_prompt,
    input_texts,
    png,
    png_bytes,
    respond,
    responses_prompt,
    tokens,
    vector,
)
from proxy.fakes.api import Stream, Style, data, event, pieces

_MODEL_CREATED: Final = 1_700_000_000
MAX_DIMENSIONS: Final = 4096
DIMENSIONS: Final = 8  # an embedding's length when neither the request nor the style sets one


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request body the endpoint refuses: a 400 that names the offending parameter."""

    message: str
    param: str


Reply: TypeAlias = bytes | Stream | Invalid  # bytes: a JSON body


# --- errors and models -------------------------------------------------------------------------


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def status_error(status: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers OpenAI sends with `status`."""
    if status == 429:
        body = error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded")
        return body, {"retry-after": "1"}
    if status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return error_body(message, "server_error", None), {}
    return error_body(f"Request failed with status {status}.", "invalid_request_error", None), {}


def model_bodies(models: Sequence[str], owner: str) -> tuple[bytes, dict[str, bytes]]:
    """The body of GET /v1/models, and of GET /v1/models/{model} for each model."""
    cards = {
        m: {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": owner}
        for m in models
    }
    listing = orjson.dumps({"object": "list", "data": list(cards.values())})
    return listing, {m: orjson.dumps(card) for m, card in cards.items()}


# --- usage -------------------------------------------------------------------------------------


def _chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _responses_usage(answer: Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _stream_usage(style: Style, data: dict[str, Any]) -> bool:
    """Streams carry usage only when the request asks, as OpenAI's do."""
    options = data.get("stream_options")
    return style.usage and isinstance(options, dict) and options.get("include_usage") is True


# --- endpoints ---------------------------------------------------------------------------------


def _chat_chunks(
    head: dict[str, Any],
    text: str | None,
    call: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    chunks: int | None,
) -> list[bytes]:
    """A chat stream as OpenAI frames it: the role, content or tool-call argument deltas, an
    empty delta with the finish reason, then (if asked) a usage chunk without choices."""
    extra = {} if usage is None else {"usage": None}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data({**head, "choices": [choice], **extra})

    if call is None:
        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in pieces(text or "", chunks)]
    else:
        args: str = call["function"]["arguments"]
        opening = {**call, "index": 0, "function": {**call["function"], "arguments": ""}}
        delta = {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
        events = [chunk(delta)]
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in pieces(args, chunks or max(1, len(args) // 8))
        ]
    events.append(chunk({}, "stop" if call is None else "tool_calls"))
    if usage is not None:
        events.append(data({**head, "choices": [], "usage": usage}))
    return events


def chat(
    request: dict[str, Any],
    model: str,
    style: Style,
    *,
    created: int,
    next_id: Callable[[str], str],
) -> Reply:
    """POST /v1/chat/completions."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return Invalid("messages must be a non-empty array.", "messages")
    prompt, context = chat_prompt(messages)
    said = respond(
        prompt=prompt,
        context=context,
        tools=request.get("tools"),
        choice=request.get("tool_choice"),
        fmt=request.get("response_format"),
        style=style,
    )
    head = {
        "id": next_id("chatcmpl-"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": f"fp_fake{style.variant}",
    }
    call: dict[str, Any] | None = None
    if said.tool is not None:
        function = {"name": said.tool.name, "arguments": said.tool.arguments}
        call = {"id": next_id("call_"), "type": "function", "function": function}
    finish = "stop" if call is None else "tool_calls"
    usage = _chat_usage(said.prompt_tokens, said.completion_tokens)
    if request.get("stream") is True:
        head["object"] = "chat.completion.chunk"
        with_usage = _stream_usage(style, request)
        events = _chat_chunks(head, said.text, call, usage if with_usage else None, style.chunks)
        return Stream(events, done=True, trailing=int(with_usage), first=1)  # after the role
    message: dict[str, Any] = {
        "role": "assistant",
        "content": said.text,
        "refusal": None,
        "annotations": [],
    }
    if call is not None:
        message["tool_calls"] = [call]
    body: dict[str, Any] = {
        **head,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if style.usage:
        body["usage"] = usage
    return orjson.dumps(body)


def completions(
    request: dict[str, Any],
    model: str,
    style: Style,
    *,
    created: int,
    next_id: Callable[[str], str],
) -> Reply:
    """POST /v1/completions, the legacy API: one choice per prompt."""
    prompts = input_texts(request.get("prompt", ""))
    if not prompts:
        return Invalid("prompt must be a string, an array of strings or of token arrays.", "prompt")
    texts = [answer_text(p, style.variant) for p in prompts]
    p_tokens = sum(tokens(p) for p in prompts)
    c_tokens = sum(tokens(t) for t in texts)
    head = {
        "id": next_id("cmpl-"),
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": f"fp_fake{style.variant}",
    }
    if request.get("stream") is True:
        with_usage = _stream_usage(style, request)
        extra = {"usage": None} if with_usage else {}

        def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
            choice = {
                "text": text,
                "index": index,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return data({**head, "choices": [choice], **extra})

        events = []
        for index, text in enumerate(texts):
            events += [chunk(index, p) for p in pieces(text, style.chunks)]
            events.append(chunk(index, "", "stop"))
        if with_usage:
            events.append(data({**head, "choices": [], "usage": _chat_usage(p_tokens, c_tokens)}))
        return Stream(events, done=True, trailing=int(with_usage))
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": "stop"}
        for i, text in enumerate(texts)
    ]
    body: dict[str, Any] = {**head, "choices": choices}
    if style.usage:
        body["usage"] = _chat_usage(p_tokens, c_tokens)
    return orjson.dumps(body)


def responses(
    request: dict[str, Any],
    model: str,
    style: Style,
    *,
    created: int,
    next_id: Callable[[str], str],
) -> Reply:
    """POST /v1/responses: one output item, a message or a function call."""
    prompt, context = responses_prompt(request)
    text_config = request.get("text")
    said = respond(
        prompt=prompt,
        context=context,
        tools=request.get("tools"),
        choice=request.get("tool_choice"),
        fmt=text_config.get("format") if isinstance(text_config, dict) else None,
        style=style,
    )
    usage = _responses_usage(said) if style.usage else None
    # The response's id is taken before its item's, as OpenAI numbers them.
    response = _response(request, model, next_id("resp_"), created, usage)
    item = _output_item(said, next_id)
    if request.get("stream") is not True:
        return orjson.dumps({**response, "output": [item]})
    return _response_stream(response, item, style.chunks)


def _response(
    request: dict[str, Any],
    model: str,
    response_id: str,
    created: int,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The response object, with its output still empty; the request's settings echoed back."""
    text_config = request.get("text")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "completed_at": created,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": text_config if isinstance(text_config, dict) else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools", []),
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation", "disabled"),
        "usage": usage,
        "user": request.get("user"),
    }


def _output_item(said: Answer, next_id: Callable[[str], str]) -> dict[str, Any]:
    """The one output item: a message with one text part, or a function call."""
    if said.tool is None:
        part = {"type": "output_text", "text": said.text or "", "annotations": [], "logprobs": []}
        return {
            "id": next_id("msg_"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
    return {
        "id": next_id("fc_"),
        "type": "function_call",
        "status": "completed",
        "call_id": next_id("call_"),
        "name": said.tool.name,
        "arguments": said.tool.arguments,
    }


class _Events:
    """A Responses stream's events, numbered in the order they are added."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self._numbers = itertools.count()

    def add(self, kind: str, **fields: Any) -> None:
        self.events.append(event({"type": kind, "sequence_number": next(self._numbers), **fields}))


def _response_stream(response: dict[str, Any], item: dict[str, Any], chunks: int | None) -> Stream:
    """The response streamed: opened in progress, the item built up in deltas, then completed."""
    out = _Events()
    opening = {**response, "status": "in_progress", "completed_at": None, "usage": None}
    out.add("response.created", response=opening)
    out.add("response.in_progress", response=opening)
    if item["type"] == "message":
        first = _message_events(out, item, chunks)
    else:
        first = _function_call_events(out, item, chunks)
    out.add("response.output_item.done", output_index=0, item=item)
    out.add("response.completed", response={**response, "output": [item]})
    # The Responses API ends with response.completed; it sends no [DONE].
    return Stream(out.events, done=False, first=first)


def _message_events(out: _Events, item: dict[str, Any], chunks: int | None) -> int:
    """Adds the message's events; returns the index of its first delta."""
    part: dict[str, Any] = item["content"][0]
    text: str = part["text"]
    at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    added = {**item, "status": "in_progress", "content": []}
    out.add("response.output_item.added", output_index=0, item=added)
    out.add("response.content_part.added", **at, part={**part, "text": ""})
    first = len(out.events)
    for piece in pieces(text, chunks):
        out.add("response.output_text.delta", **at, delta=piece, logprobs=[])
    out.add("response.output_text.done", **at, text=text, logprobs=[])
    out.add("response.content_part.done", **at, part=part)
    return first


def _function_call_events(out: _Events, item: dict[str, Any], chunks: int | None) -> int:
    """Adds the call's events; returns the index of its first delta."""
    args: str = item["arguments"]
    where = {"item_id": item["id"], "output_index": 0}
    added = {**item, "status": "in_progress", "arguments": ""}
    out.add("response.output_item.added", output_index=0, item=added)
    first = len(out.events)
    for piece in pieces(args, chunks or max(1, len(args) // 8)):
        out.add("response.function_call_arguments.delta", **where, delta=piece)
    out.add("response.function_call_arguments.done", **where, name=item["name"], arguments=args)
    return first


def embeddings(request: dict[str, Any], model: str, style: Style) -> Reply:
    """POST /v1/embeddings: a unit vector per input, as floats or base64."""
    inputs = input_texts(request.get("input"))
    if not inputs or not all(inputs):
        return Invalid("input must be a non-empty string or array.", "input")
    dimensions = request.get("dimensions", style.embedding_dims or DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
        return Invalid(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions")
    encoding = request.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return Invalid("encoding_format must be float or base64.", "encoding_format")
    rows = []
    for index, text in enumerate(inputs):
        packed = vector(text, dimensions, style.variant)
        # "float" answers carry the same float32 numbers that base64 would.
        embedding: Any = (
            base64.b64encode(packed).decode()
            if encoding == "base64"
            else list(struct.unpack(f"<{dimensions}f", packed))
        )
        rows.append({"object": "embedding", "index": index, "embedding": embedding})
    count = sum(tokens(text) for text in inputs)
    body = {
        "object": "list",
        "data": rows,
        "model": model,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }
    return orjson.dumps(body)


def images(
    request: dict[str, Any],
    model: str,
    style: Style,
    *,
    created: int,
    publish: Callable[[bytes], str] | None = None,
) -> Reply:
    """POST /v1/images/generations: `n` tiny PNGs, as URLs `publish` serves them at or inline.

    As OpenAI's: the DALL-E models (the default when no model is named) answer URLs unless
    `response_format` is `b64_json`; the gpt-image models always answer base64. Without a
    `publish` nothing could serve a URL, so every image is inline.
    """
    prompt, size, n = request.get("prompt"), request.get("size", "1024x1024"), request.get("n", 1)
    if not isinstance(prompt, str) or not prompt:
        return Invalid("prompt must be a non-empty string.", "prompt")
    if not isinstance(n, int) or not 1 <= n <= 10:
        return Invalid("n must be an integer from 1 to 10.", "n")
    asked = request.get("response_format", "url")
    if asked not in ("url", "b64_json"):
        return Invalid("response_format must be url or b64_json.", "response_format")
    inline = publish is None or asked == "b64_json" or model.startswith("gpt-image")
    keys = [f"{style.variant}\0{model}\0{prompt}\0{size}\0{i}" for i in range(n)]
    pictures = [
        {"url": publish(png_bytes(key))} if publish and not inline else {"b64_json": png(key)}
        for key in keys
    ]
    for picture in pictures:
        picture["revised_prompt"] = prompt
    body = {"created": created, "data": pictures, "output_format": "png", "size": size}
    return orjson.dumps(body)


def run(request: dict[str, Any], model: str, style: Style, *, latency: float) -> Reply:
    """POST /v1/models/{model}/run: a non-OpenAI image API, for routes the sidecar must pass
    through untouched."""
    prompt, size = request.get("prompt"), request.get("size", "")
    if not isinstance(prompt, str) or not prompt:
        return Invalid("prompt must be a non-empty string.", "prompt")
    body = {
        "model": model,
        "images": [{"b64": png(f"{style.variant}\0{model}\0{prompt}\0{size}")}],
        "latency_ms": round(latency * 1000),
    }
    return orjson.dumps(body)


# OpenAI's moderation categories, in the order its answers list them.
_CATEGORIES: Final = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Words that get a text flagged, so that a test can ask for a flag; everything else passes.
_FLAGGED: Final = {"kill": "violence", "attack": "violence", "hate": "hate"}


def moderations(request: dict[str, Any], model: str, *, next_id: Callable[[str], str]) -> Reply:
    """POST /v1/moderations: one result per input text, flagged by a few words."""
    raw = request.get("input")
    texts = input_texts(raw)
    if isinstance(raw, list) and raw and all(isinstance(part, dict) for part in raw):
        # Parts of one multimodal input (text and images): one result for them all.
        texts = [" ".join(p["text"] for p in raw if isinstance(p.get("text"), str))]
    if not texts:
        return Invalid("input must be a non-empty string, array of strings or of parts.", "input")
    results = []
    for text in texts:
        words = {w.strip(".,!?;:\"'").lower() for w in text.split()}
        hits = {category for word, category in _FLAGGED.items() if word in words}
        results.append(
            {
                "flagged": bool(hits),
                "categories": {c: c in hits for c in _CATEGORIES},
                "category_scores": {c: 0.91 if c in hits else 0.0001 for c in _CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in _CATEGORIES},
            }
        )
    body = {"id": next_id("modr-"), "model": model, "results": results}
    return orjson.dumps(body)
