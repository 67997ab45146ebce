"""Anthropic's Messages API as a fake serves it: `POST /v1/messages` (plain and streamed),
`/v1/messages/count_tokens` and the model list, behind `x-api-key` and `anthropic-version`,
with Anthropic's error bodies and stream events. The words are the OpenAI fake's (`answers`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from proxy.fakes.answers import Answer, chat_prompt, respond, tokens
from proxy.fakes.api import Ask, Refusal, Stream, Style, event, pieces

DEFAULT_MODELS: Final = ("claude-sonnet-4-5", "claude-haiku-4-5")
_MESSAGES: Final = "/v1/messages"
_COUNT: Final = "/v1/messages/count_tokens"
_MODELS: Final = "/v1/models"
_MODEL: Final = "/v1/models/"
_CREATED: Final = "2025-01-01T00:00:00Z"
# Each status's error type and message, as Anthropic's errors page lists them.
_ERRORS: Final = {
    400: ("invalid_request_error", "There was an issue with the format or content of your request."),
    401: ("authentication_error", "There's an issue with your API key."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource was not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}  # fmt: skip


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _error(status: int, message: str | None = None) -> Refusal:
    kind, default = _ERRORS.get(status) or _ERRORS[500 if status >= 500 else 400]
    headers = {"retry-after": "1"} if status == 429 else {}
    return Refusal(status, error_body(kind, message or default), headers)


def _invalid(message: str) -> Refusal:
    return _error(400, message)


class AnthropicApi:
    """The Anthropic API of one fake: its models, its key, and the ids it hands out."""

    def __init__(
        self,
        *,
        owner: str,
        models: Sequence[str],
        api_key: str | None,
        next_id: Callable[[str], str],
    ) -> None:
        self._key = api_key
        self._known = frozenset(models)
        cards = [
            {"type": "model", "id": m, "display_name": m, "created_at": _CREATED} for m in models
        ]
        self._cards = {card["id"]: orjson.dumps(card) for card in cards}
        self._listing = orjson.dumps(
            {
                "data": cards,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )
        self._next_id = next_id
        self.paths: tuple[str, ...] = (_MESSAGES, _COUNT, _MODELS)
        self.request_id_header = "request-id"

    # --- refusals the server asks for ---

    def unauthorized(self, headers: Mapping[str, str]) -> Refusal | None:
        # The key travels as `x-api-key`; the anthropic SDK (2.x) sends it as a bearer token,
        # which the API takes as well.
        if self._key is None or self._key_of(headers) == self._key:
            return None
        if self._key_of(headers) is None:
            return _error(401, "x-api-key header is required")
        return _error(401, "invalid x-api-key")

    @staticmethod
    def _key_of(headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key")
        if key is None and headers.get("Authorization", "").startswith("Bearer "):
            key = headers["Authorization"].removeprefix("Bearer ")
        return key

    def unreadable(self) -> Refusal:
        return _invalid("There was an issue with your request body: it is not valid JSON.")

    def bad_request(self, message: str) -> Refusal:
        return _invalid(message)

    def failure(self, status: int) -> Refusal:
        return _error(status)

    def stream_failure(self, status: int) -> bytes:
        # Anthropic's mid-stream error: an `error` event with the error body, and nothing after.
        return event(orjson.loads(_error(status).body))

    # --- routing ---

    def reply(self, ask: Ask, style: Style) -> bytes | Stream | Refusal:
        if "anthropic-version" not in ask.headers:
            return _invalid("anthropic-version: header is required")
        method, path = ask.method, ask.path
        if method == "GET" and path == _MODELS:
            return self._listing
        if method == "GET" and path.startswith(_MODEL):
            wanted = path.removeprefix(_MODEL)
            return self._cards.get(wanted) or _error(404, f"model: {wanted}")
        if method != "POST" or path not in (_MESSAGES, _COUNT):
            return _error(404, "Not Found")
        request = ask.json
        if not isinstance(request, dict):
            return self.unreadable() if not ask.parsed else _invalid("body: must be an object")
        model = request.get("model")
        if not isinstance(model, str):
            return _invalid("model: Field required")
        if model not in self._known:
            return _error(404, f"model: {model}")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return _invalid("messages: at least one message is required")
        if style.refuse_tools and request.get("tools"):
            return _invalid("Function calling is not supported yet")
        if path == _COUNT:
            return orjson.dumps({"input_tokens": tokens(_context(request, messages))})
        max_tokens = request.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return _invalid("max_tokens: Field required")
        return self._message(request, model, max_tokens, style)

    # --- the message ---

    def _message(
        self, request: dict[str, Any], model: str, max_tokens: int, style: Style
    ) -> bytes | Stream:
        messages: list[Any] = request["messages"]
        prompt, _ = chat_prompt(messages)
        said = respond(
            prompt=prompt,
            context=_context(request, messages),
            tools=_openai_tools(request.get("tools")),
            choice=_openai_choice(request.get("tool_choice")),
            fmt=None,
            style=style,
        )
        head = {
            "id": self._next_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
        }
        if said.tool is not None:
            block = {
                "type": "tool_use",
                "id": self._next_id("toolu_"),
                "name": said.tool.name,
                "input": _tool_input(said.tool.arguments),
            }
            stop, stop_sequence, output = "tool_use", None, said.completion_tokens
        else:
            text, stop, stop_sequence = _ended(said, max_tokens, request.get("stop_sequences"))
            block = {"type": "text", "text": text}
            output = tokens(text)
        usage = _usage(said.prompt_tokens, output)
        if request.get("stream") is True:
            ending = {"stop_reason": stop, "stop_sequence": stop_sequence}
            arguments = None if said.tool is None else said.tool.arguments
            return _stream(head, block, arguments, ending, usage, style.chunks)
        body = {
            **head,
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }
        return orjson.dumps(body)


def _context(request: dict[str, Any], messages: list[Any]) -> str:
    """Everything the input tokens are counted over: the system prompt and every message."""
    system = request.get("system")
    if isinstance(system, list):
        system = " ".join(b["text"] for b in system if isinstance(b, dict) and "text" in b)
    _, said = chat_prompt(messages)
    return f"{system} {said}" if isinstance(system, str) and system else said


def _openai_tools(tools: Any) -> Any:
    """Anthropic's tools ({name, input_schema}) in the shape `answers.pick_tool` reads."""
    if not isinstance(tools, list):
        return None
    return [
        {"type": "function", "function": {"name": t["name"], "parameters": t.get("input_schema")}}
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t
    ]


def _openai_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "none":
        return "none"
    if choice.get("type") == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return None  # auto and any: the first tool, as the fake always calls one when offered


def _tool_input(arguments: str) -> Any:
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        # A plain answer's input is an object by the protocol; Anthropic wraps arguments the
        # model left unparseable (`tool_json="broken"`) this way rather than failing the call.
        return {"INVALID_JSON": arguments}


def _ended(said: Answer, max_tokens: int, stops: Any) -> tuple[str, str, str | None]:
    """The text as the request lets it end: at a stop sequence, at `max_tokens`, or whole."""
    text = said.text or ""
    found = [(text.find(s), s) for s in stops or () if isinstance(s, str) and s and s in text]
    if found:
        at, stop_sequence = min(found)
        text = text[:at]
        if tokens(text) <= max_tokens:
            return text, "stop_sequence", stop_sequence
    if tokens(text) <= max_tokens:
        return text, "end_turn", None
    kept = ""
    for word in pieces(text, None):
        if tokens(kept + word) > max_tokens:
            break
        kept += word
    return kept, "max_tokens", None


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def _stream(
    head: dict[str, Any],
    block: dict[str, Any],
    arguments: str | None,
    ending: dict[str, Any],
    usage: dict[str, Any],
    chunks: int | None,
) -> Stream:
    """The message as Anthropic streams it: message_start, the block opened, a ping, its
    deltas, the block closed, message_delta with the stop reason and output tokens, then
    message_stop. It sends no [DONE]."""
    opening = {**head, "content": [], "stop_reason": None, "stop_sequence": None}
    opening["usage"] = {**usage, "output_tokens": 1}
    if arguments is None:
        empty: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"], chunks)]
    else:
        empty = {**block, "input": {}}
        parts = pieces(arguments, chunks or max(1, len(arguments) // 8))
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in parts]
    events = [
        event({"type": "message_start", "message": opening}),
        event({"type": "content_block_start", "index": 0, "content_block": empty}),
        event({"type": "ping"}),
        *(event({"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas),
        event({"type": "content_block_stop", "index": 0}),
        event(
            {
                "type": "message_delta",
                "delta": ending,
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        ),
        event({"type": "message_stop"}),
    ]
    # The deltas are what the model generates: the first token comes after the ping.
    return Stream(events, done=False, trailing=2, first=3)
