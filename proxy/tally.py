"""What an OpenAI- or Anthropic-style stream said (text, tool calls, usage, its end), read
event by event from `sse.SSEDecoder`'s events: all of it for the record, or only its counts.

Pure: no I/O, no clock; the caller timestamps what `StreamTally.add` reports.
"""

from __future__ import annotations

import enum
from typing import Any, Final, NamedTuple

import orjson

from proxy.sse import Event

_MAX_ERROR = 300  # characters of an error message kept for the record


class Kind(enum.IntEnum):
    """What one event meant to the stream, for the relay's timing and filtering."""

    OTHER = 0
    CONTENT = 1  # carried text or a tool-call delta: the first one is time to first token
    USAGE_ONLY = 2  # the extra usage chunk of stream_options.include_usage (no choices)
    DONE = 3  # `data: [DONE]`, or a Responses API `response.completed`
    ERROR = 4


class ToolCall(NamedTuple):
    name: str
    arguments: str  # as the model wrote it: usually, but not always, a JSON object


class _ToolDraft:
    __slots__ = ("arguments", "name")

    def __init__(self) -> None:
        self.name = ""
        self.arguments: list[str] = []


class Usage(NamedTuple):
    """Token counts of one answer; None where the provider didn't say.

    `prompt` counts every prompt token, cached or not, as OpenAI does; `cached` is the part
    read from the provider's prompt cache.
    """

    prompt: int | None
    completion: int | None
    total: int | None
    cached: int | None


NO_USAGE: Final = Usage(None, None, None, None)
# Anthropic's input_tokens leaves out the cache: its prompt is the sum of these three.
_ANTHROPIC_PROMPT: Final = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def _count(value: object) -> int | None:
    # Counts are plain ints; `type(..) is int` also turns away bools (and costs no call).
    return value if type(value) is int else None


def _cached(details: object) -> int | None:
    return _count(details.get("cached_tokens")) if isinstance(details, dict) else None


def usage_tokens(usage: object) -> Usage:
    """The counts of a `usage` object of any OpenAI API, or of Anthropic's Messages API."""
    if not isinstance(usage, dict):
        return NO_USAGE
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return _anthropic_usage(usage)
    prompt = usage.get("prompt_tokens")
    if prompt is None:
        prompt = usage.get("input_tokens")
    completion = usage.get("completion_tokens")
    if completion is None:
        completion = usage.get("output_tokens")
    details = usage.get("prompt_tokens_details")
    if details is None:
        details = usage.get("input_tokens_details")
    return Usage(
        _count(prompt), _count(completion), _count(usage.get("total_tokens")), _cached(details)
    )


def _anthropic_usage(usage: dict[str, Any]) -> Usage:
    parts = [_count(usage.get(key)) for key in _ANTHROPIC_PROMPT]
    prompt = None if parts[0] is None else sum(p or 0 for p in parts)
    return Usage(prompt, _count(usage.get("output_tokens")), None, parts[1])


def _message_of(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message[:_MAX_ERROR]
    if isinstance(error, str):
        return error[:_MAX_ERROR]
    return orjson.dumps(error, default=str).decode()[:_MAX_ERROR]


class StreamTally:
    """Accumulates what a stream said, for recording. One per stream.

    Reads four dialects: Chat Completions chunks (and legacy Completions), the `[DONE]`
    sentinel, Responses API events, and Anthropic's Messages events. Only choice 0 is
    reassembled; `events` counts the events that carried data.
    """

    __slots__ = (
        "_counts",
        "_done",
        "_error",
        "_events",
        "_finish",
        "_light",
        "_started",
        "_text",
        "_tools",
        "_usage",
    )

    def __init__(self, light: bool = False) -> None:
        # `light`: only the counts are wanted (metrics), not the answer (the record): once the
        # first content has come, deltas without usage or an error go unparsed.
        self._light = light
        self._started = False
        self._text: list[str] = []
        self._tools: dict[int, _ToolDraft] = {}
        self._finish: str | None = None
        self._usage = NO_USAGE
        # Anthropic states its counts in pieces (message_start, then message_delta).
        self._counts: dict[str, Any] = {}
        self._done = False
        self._error: str | None = None
        self._events = 0

    @property
    def text(self) -> str:
        pieces = self._text
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0] if pieces else ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(draft.name, "".join(draft.arguments))
            for _, draft in sorted(self._tools.items())
        ]

    @property
    def finish_reason(self) -> str | None:
        return self._finish

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def prompt_tokens(self) -> int | None:
        return self._usage.prompt

    @property
    def completion_tokens(self) -> int | None:
        return self._usage.completion

    @property
    def total_tokens(self) -> int | None:
        return self._usage.total

    @property
    def cached_tokens(self) -> int | None:
        return self._usage.cached

    @property
    def done(self) -> bool:
        return self._done

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def events(self) -> int:
        return self._events

    def add(self, ev: Event) -> Kind:
        data = ev.data
        if data is None:
            return Kind.OTHER
        self._events += 1
        if (
            self._started
            and b'"delta"' in data
            and b'"usage":{' not in data
            and b'"usage": {' not in data
            and b'"error"' not in data
        ):
            return Kind.OTHER  # light: a delta after the first content, only text or tools
        kind = self._add(ev, data)
        if kind is Kind.CONTENT and self._light:
            self._started = True
        return kind

    def _add(self, ev: Event, data: bytes) -> Kind:
        if data == b"[DONE]":
            self._done = True
            return Kind.DONE
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            if data.strip() == b"[DONE]":
                self._done = True
                return Kind.DONE
            if ev.event == "error":
                return self._fail(data.decode("utf-8", "replace"))
            return Kind.OTHER
        if not isinstance(obj, dict):
            return Kind.OTHER
        # Some providers write `"error": null` into healthy chunks; only a value is an error.
        error = obj.get("error")
        if error is not None:
            return self._fail(_message_of(error))
        kind = obj.get("type", ev.event)
        if isinstance(kind, str):
            if kind.startswith("response.") or kind == "error":
                return self._add_response_event(kind, obj)
            if kind in _MESSAGE_EVENTS:
                return self._add_message_event(kind, obj)
        choices = obj.get("choices")
        if isinstance(choices, list):
            return self._add_chunk(choices, obj.get("usage"))
        return Kind.OTHER

    def _fail(self, message: str) -> Kind:
        if self._error is None:  # the first error is the cause; later ones are fallout
            self._error = message
        return Kind.ERROR

    def _set_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self._usage = usage_tokens(usage)

    def _add_chunk(self, choices: list[Any], usage: object) -> Kind:
        self._set_usage(usage)
        if not choices:
            return Kind.USAGE_ONLY if isinstance(usage, dict) else Kind.OTHER
        content = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            first = choice.get("index", 0) == 0
            delta = choice.get("delta")
            if isinstance(delta, dict):
                piece = delta.get("content")
                calls = delta.get("tool_calls")
                if calls and isinstance(calls, list):
                    content = True
                    if first:
                        self._merge_tool_calls(calls)
            else:
                piece = choice.get("text")  # legacy Completions
            if piece and isinstance(piece, str):
                content = True
                if first:
                    self._text.append(piece)
            if first:
                finish = choice.get("finish_reason")
                if isinstance(finish, str):
                    self._finish = finish
        return Kind.CONTENT if content else Kind.OTHER

    def _draft(self, index: object, new: bool) -> _ToolDraft:
        if not isinstance(index, int):
            # No index (some compatible servers): a call with an id starts a new one,
            # anything else continues the last.
            index = max(self._tools) + (1 if new else 0) if self._tools else 0
        draft = self._tools.get(index)
        if draft is None:
            draft = self._tools[index] = _ToolDraft()
        return draft

    def _merge_tool_calls(self, calls: list[Any]) -> None:
        for call in calls:
            if not isinstance(call, dict):
                continue
            draft = self._draft(call.get("index"), bool(call.get("id")))
            function = call.get("function")
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if name and isinstance(name, str) and not draft.name:
                draft.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                draft.arguments.append(arguments)
            elif isinstance(arguments, dict):  # an object instead of a string: seen in the wild
                draft.arguments.append(orjson.dumps(arguments).decode())

    def _add_response_event(self, kind: str, obj: dict[str, Any]) -> Kind:
        if kind == "response.output_text.delta":
            delta = obj.get("delta")
            if delta and isinstance(delta, str):
                self._text.append(delta)
                return Kind.CONTENT
            return Kind.OTHER
        if kind == "response.function_call_arguments.delta":
            delta = obj.get("delta")
            if isinstance(delta, str):
                self._draft(obj.get("output_index"), False).arguments.append(delta)
            return Kind.CONTENT
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                draft = self._draft(obj.get("output_index"), kind.endswith("added"))
                name = item.get("name")
                if name and isinstance(name, str):
                    draft.name = name
                arguments = item.get("arguments")
                # The finished item states the whole arguments; they replace the deltas.
                if kind.endswith("done") and isinstance(arguments, str):
                    draft.arguments[:] = [arguments]
            return Kind.OTHER
        if kind in ("response.completed", "response.incomplete"):
            # "incomplete" (e.g. max_output_tokens) is still a well-formed end of stream;
            # its status lands in finish_reason, as "length" does for chat.
            self._finish_response(obj.get("response"))
            self._done = True
            return Kind.DONE
        if kind == "response.failed":
            response = obj.get("response")
            self._finish_response(response)
            error = response.get("error") if isinstance(response, dict) else None
            return self._fail(_message_of(error) if error is not None else "response.failed")
        if kind == "error":
            return self._fail(_message_of(obj))
        return Kind.OTHER

    def _finish_response(self, response: object) -> None:
        if isinstance(response, dict):
            self._set_usage(response.get("usage"))
            status = response.get("status")
            if isinstance(status, str):
                self._finish = status

    # --- Anthropic's Messages stream -----------------------------------------------------

    def _add_message_event(self, kind: str, obj: dict[str, Any]) -> Kind:
        if kind == "content_block_delta":
            return self._add_block_delta(obj.get("index"), obj.get("delta"))
        if kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                name = block.get("name")
                self._draft(obj.get("index"), True).name = name if isinstance(name, str) else ""
                return Kind.CONTENT  # as a chat stream's first tool-call delta is
            return Kind.OTHER
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._add_message_usage(message.get("usage"))
            return Kind.OTHER
        if kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._finish = delta["stop_reason"]
            self._add_message_usage(obj.get("usage"))
            return Kind.OTHER
        if kind == "message_stop":
            self._done = True
            return Kind.DONE
        return Kind.OTHER  # ping, content_block_stop

    def _add_block_delta(self, index: object, delta: object) -> Kind:
        if not isinstance(delta, dict):
            return Kind.OTHER
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if text and isinstance(text, str):
                self._text.append(text)
                return Kind.CONTENT
        elif kind == "input_json_delta":
            partial = delta.get("partial_json")
            if isinstance(partial, str):
                self._draft(index, False).arguments.append(partial)
                return Kind.CONTENT
        return Kind.OTHER

    def _add_message_usage(self, usage: object) -> None:
        """message_start states the prompt, message_delta the output so far: keep the latest
        of each count, whichever event it came in."""
        if not isinstance(usage, dict):
            return
        counts = self._counts
        for key in (*_ANTHROPIC_PROMPT, "output_tokens"):
            value = usage.get(key)
            if type(value) is int:
                counts[key] = value
        self._usage = _anthropic_usage(counts)


# Anthropic's Messages stream: `ping` and `content_block_stop` carry nothing we keep.
_BLOCK_EVENTS: Final = ("content_block_start", "content_block_delta", "content_block_stop")
_MESSAGE_EVENTS: Final = frozenset(
    ("message_start", "message_delta", "message_stop", "ping", *_BLOCK_EVENTS)
)
