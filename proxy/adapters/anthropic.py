"""Anthropic's Messages API: an OpenAI chat completion asked of an Anthropic-shaped provider.

What crosses (docs/providers.md lists it for users):
- messages: `system` and `developer` messages become `system`; user and assistant text, and
  user images (`image_url` as an https URL or a base64 `data:` URL); assistant `tool_calls`
  become `tool_use` blocks, `tool` messages `tool_result` blocks (consecutive results in one
  user turn, as Anthropic requires);
- `tools` (functions) and `tool_choice` (`auto`, `required`, `none`, one function),
  `parallel_tool_calls: false`; `max_tokens` / `max_completion_tokens` (Anthropic requires
  one: 4096 when the app gave none), `temperature`, `top_p`, `stop`, `user`; `stream` with
  `stream_options.include_usage`;
- answers: text, tool calls, finish reason, usage (cached prompt tokens included); errors by
  their status with OpenAI's error body.
Refused with a 400 naming the field: `n` above 1, `logprobs`, `top_logprobs`,
`response_format` other than text, `audio`, `modalities`, `prediction`, `logit_bias`,
`functions`/`function_call` (the legacy form of tools), and content parts other than text and
images. `seed`, `store`, `metadata` and `service_tier` are not sent.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from proxy.adapters.base import (
    DONE,
    AppAnswer,
    AppCall,
    ProviderCall,
    Unsupported,
    loads,
    openai_error,
    sse,
)
from proxy.sse import Event

VERSION: Final = "2023-06-01"  # the `anthropic-version` the translated calls are sent with
DEFAULT_MAX_TOKENS: Final = 4096
_REFUSED: Final = (
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "logit_bias",
    "functions",
    "function_call",
)
_DROPPED: Final = frozenset({"seed", "store", "metadata", "service_tier", "stream_options"})
_COPIED: Final = ("temperature", "top_p")
_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's error types, as the OpenAI SDKs' error types; 529 (overloaded) is not an HTTP
# status an OpenAI client knows: it becomes 503.
_ERRORS: Final = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


class ChatToMessages:
    """`POST /v1/chat/completions` to an Anthropic-shaped `POST {base_url}/messages`."""

    def request(self, call: AppCall) -> ProviderCall:
        body = call.json
        if body is None:
            raise Unsupported("the body must be a JSON object to be translated for Anthropic")
        for name in _REFUSED:
            if body.get(name) not in (None, False):
                raise Unsupported(f"`{name}` has no equivalent in Anthropic's Messages API")
        if body.get("n") not in (None, 1):
            raise Unsupported("`n` above 1 has no equivalent in Anthropic's Messages API")
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise Unsupported(
                "`response_format` (JSON mode, schemas) is not translated for Anthropic"
            )
        out = _messages(body.get("messages"))
        out["model"] = call.model
        tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        out["max_tokens"] = tokens if isinstance(tokens, int) else DEFAULT_MAX_TOKENS
        for name in _COPIED:
            if body.get(name) is not None:
                out[name] = body[name]
        stop = body.get("stop")
        if stop:
            out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if isinstance(body.get("user"), str):
            out["metadata"] = {"user_id": body["user"]}
        _tools(body, out)
        if call.stream:
            out["stream"] = True
        return ProviderCall("POST", "/messages", orjson.dumps(out), {"anthropic-version": VERSION})

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> AppAnswer:
        obj = loads(body)
        if status >= 400 or not isinstance(obj, dict) or obj.get("type") == "error":
            return error_answer(status, obj, headers)
        return AppAnswer(status, orjson.dumps(completion(obj)))

    def stream(self) -> ChunkStream:
        return ChunkStream()


def _messages(messages: Any) -> dict[str, Any]:
    if not isinstance(messages, list) or not messages:
        raise Unsupported("`messages` must be a non-empty list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, dict):
            raise Unsupported("each message must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content")))
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id"),
                "content": _text_of(m.get("content")),
            }
            _append(turns, "user", [block])
        elif role == "user":
            _append(turns, "user", _content(m.get("content")))
        elif role == "assistant":
            _append(turns, "assistant", _assistant(m))
        else:
            raise Unsupported(f"messages of role {role!r} are not translated for Anthropic")
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    return out


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Anthropic wants turns that alternate: consecutive ones of a role are merged."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _content(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Unsupported("message `content` must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            raise Unsupported(f"content parts of type {kind!r} are not translated for Anthropic")
    return blocks


def _image(ref: Any) -> dict[str, Any]:
    url = ref.get("url") if isinstance(ref, dict) else None
    if not isinstance(url, str):
        raise Unsupported("an `image_url` part needs a `url`")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";", 1)[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant(m: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(m.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in m.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = loads(str(fn.get("arguments") or "{}").encode())
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": fn.get("name"),
                "input": args if isinstance(args, dict) else {},
            }
        )
    return blocks


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = body.get("tool_choice")
    picked: dict[str, Any] | None = None
    if choice == "auto":
        picked = {"type": "auto"}
    elif choice == "required":
        picked = {"type": "any"}
    elif choice == "none":
        picked = {"type": "none"}
    elif isinstance(choice, dict):
        picked = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    if body.get("parallel_tool_calls") is False and tools:
        picked = {**(picked or {"type": "auto"}), "disable_parallel_tool_use": True}
    if picked is not None:
        out["tool_choice"] = picked


def _tool(tool: Any) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or tool.get("type") != "function":
        raise Unsupported("only function tools are translated for Anthropic")
    out = {
        "name": fn.get("name"),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def usage(u: Any) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: prompt tokens include the cached ones, as OpenAI counts."""
    u = u if isinstance(u, dict) else {}
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cached + (u.get("cache_creation_input_tokens") or 0)
    completion = u.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def completion(msg: dict[str, Any]) -> dict[str, Any]:
    text: list[str] = []
    calls = []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _FINISH.get(str(msg.get("stop_reason")), "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage(msg.get("usage")),
    }


def error_answer(status: int, obj: Any, headers: dict[str, str]) -> AppAnswer:
    err = obj.get("error") if isinstance(obj, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    status = 503 if status == 529 else (status if status >= 400 else 502)
    answer = openai_error(
        status,
        str(message or f"the Anthropic-shaped upstream answered {status}"),
        _ERRORS.get(str(kind), "server_error" if status >= 500 else "invalid_request_error"),
        str(kind or "upstream_error"),
    )
    kept = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
    return AppAnswer(answer.status, answer.body, kept)


class ChunkStream:
    """Anthropic's stream events as chat completion chunks, then `[DONE]`."""

    __slots__ = ("_id", "_model", "_tools", "_usage")

    def __init__(self) -> None:
        self._id = "chatcmpl-anthropic"
        self._model: str | None = None
        self._tools: dict[int, int] = {}  # Anthropic's block index -> OpenAI's tool call index
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Event:
        return sse(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def event(self, ev: Event) -> list[Event]:
        obj = loads(ev.data) if ev.data else None
        if not isinstance(obj, dict):
            return []
        kind = obj.get("type") or ev.event
        if kind == "message_start":
            msg = obj.get("message") or {}
            self._id = str(msg.get("id") or self._id)
            self._model = msg.get("model")
            self._usage = dict(msg.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "message_delta":
            self._usage.update(obj.get("usage") or {})
            reason = (obj.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _FINISH.get(str(reason), "stop"))]
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            return [Event(b"event: error\n" + b"data: " + ev.data + b"\n\n", ev.data, "error")]  # type: ignore[operator]
        return []  # ping, content_block_stop

    def _block_start(self, obj: dict[str, Any]) -> list[Event]:
        block = obj.get("content_block") or {}
        if block.get("type") != "tool_use":
            return []
        index = self._tools[int(obj.get("index") or 0)] = len(self._tools)
        call = {
            "index": index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _delta(self, obj: dict[str, Any]) -> list[Event]:
        delta = obj.get("delta") or {}
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if delta.get("type") == "input_json_delta":
            index = self._tools.get(int(obj.get("index") or 0), 0)
            part = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
            return [self._chunk({"tool_calls": [part]})]
        return []

    def _finish(self) -> list[Event]:
        last = sse(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self._model,
                "choices": [],
                "usage": usage(self._usage),
            }
        )
        return [last, DONE]

    def end(self) -> list[Event]:
        return []
