"""Fake OpenAI-compatible providers: aiohttp servers that answer like OpenAI, deterministically.

Users run them in their own tests, the demo and the benchmark put the sidecar in front of them,
and a `Behaviour` makes one slow, flaky or broken on purpose. Answers are pure functions of the
request, so two fakes with the same `variant` give byte-identical texts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import functools
import gzip
import hashlib
import itertools
import math
import random
import re
import signal
import struct
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

Fault = Literal["500", "429", "hang", "reset", "die_mid_stream", "broken_stream"]
FAULTS: Final[tuple[str, ...]] = get_args(Fault)


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """How a fake misbehaves. The defaults are a fast, correct, deterministic provider."""

    latency: float = 0.0  # before response headers (non-stream) or the first chunk (stream)
    chunk_delay: float = 0.0  # between stream events
    error_rate: float = 0.0  # share answered with `error_status`, drawn from the seeded RNG
    error_status: int = 500
    variant: int = 0  # rewords answers slightly, as a different provider would
    chunks: int | None = None  # content chunks per stream; None = one per word
    fail: Fault | None = None  # a fault forced on every request
    gzip: bool = False  # gzip non-stream JSON bodies when the client accepts it
    tool_calls: bool = True  # answer with a tool call when the request offers tools
    usage: bool = True  # report usage (streams: only when stream_options.include_usage)

    def __post_init__(self) -> None:
        if self.latency < 0 or self.chunk_delay < 0:
            raise ValueError("latency and chunk_delay must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be a 4xx or 5xx status")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError("chunks must be >= 1")
        if self.fail is not None and self.fail not in FAULTS:
            raise ValueError(f"fail must be one of {', '.join(FAULTS)}")


@dataclass(frozen=True, slots=True)
class Received:
    """A request as it arrived at a fake, for tests to assert on."""

    method: str
    path: str  # percent-decoded, as the router sees it
    query: str  # as sent, percent-encoding kept
    headers: Mapping[str, str]
    body: bytes
    json: Any | None  # None when the body is empty or not JSON


# --- answers: pure functions of the request ---------------------------------------------------

_TEMPLATES: Final = (
    'Here is a short answer about "{topic}". The same question always gets the same reply.',
    'Here is a brief answer about "{topic}". The same question always gets the same reply.',
    'A short answer about "{topic}" follows. This provider gives the same reply every time.',
)
# Leading whitespace stays with its word, as in OpenAI's tokens (" world"); trailing whitespace
# rides on the last word so that the pieces always join back into the whole text.
_WORD: Final = re.compile(r"\s*\S+(?:\s+$)?")
_DONE: Final = b"data: [DONE]\n\n"
_MODEL_CREATED: Final = 1_700_000_000
_MAX_DIMENSIONS: Final = 4096


@dataclass(frozen=True, slots=True)
class _ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str | None  # None when the answer is a tool call
    tool: _ToolCall | None
    prompt_tokens: int
    completion_tokens: int


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> int:
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
def _answer_text(prompt: str, variant: int) -> str:
    text = _TEMPLATES[variant % len(_TEMPLATES)].format(topic=_topic(prompt))
    return text if variant < len(_TEMPLATES) else f"{text} (variant {variant})"


def _example(schema: Any, topic: str, *, every_property: bool) -> Any:
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


def _pick_tool(tools: Any, choice: Any) -> tuple[str, Any] | None:
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


def _answer(
    b: Behaviour, *, prompt: str, context: str, tools: Any, choice: Any, fmt: Any
) -> _Answer:
    topic = _topic(prompt)
    prompt_tokens = _tokens(context)
    picked = _pick_tool(tools, choice) if b.tool_calls else None
    if picked is not None:
        name, params = picked
        args = orjson.dumps(_example(params, topic, every_property=False)).decode()
        return _Answer(None, _ToolCall(name, args), prompt_tokens, _tokens(f"{name} {args}"))
    text = _answer_text(prompt, b.variant)
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        text = orjson.dumps({"answer": text, "topic": topic}).decode()
    elif kind == "json_schema":
        # Chat nests the schema under "json_schema"; Responses puts it beside "type".
        nested = fmt.get("json_schema")
        schema = nested.get("schema") if isinstance(nested, dict) else fmt.get("schema")
        text = orjson.dumps(_example(schema, topic, every_property=True)).decode()
    return _Answer(text, None, prompt_tokens, _tokens(text))


def _pieces(text: str, count: int | None) -> list[str]:
    """Stream pieces that join back into `text`: words, grouped or split to `count` pieces."""
    words = _WORD.findall(text) or ([text] if text else [])
    if count is None or count == len(words):
        return words
    if count < len(words):
        k = len(words)
        return ["".join(words[i * k // count : (i + 1) * k // count]) for i in range(count)]
    n = min(count, len(text))
    return [text[i * len(text) // n : (i + 1) * len(text) // n] for i in range(n)]


def _texts(raw: Any) -> list[str]:
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


def _chat_prompt(messages: list[Any]) -> tuple[str, str]:
    last_user, texts = "", []
    for message in messages:
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            texts.append(text)
            if message.get("role") == "user":
                last_user = text
    return last_user, " ".join(texts)


def _responses_prompt(data: dict[str, Any]) -> tuple[str, str]:
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


def _responses_usage(answer: _Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _stream_usage(b: Behaviour, data: dict[str, Any]) -> bool:
    """Streams carry usage only when the request asks, as OpenAI's do."""
    options = data.get("stream_options")
    return b.usage and isinstance(options, dict) and options.get("include_usage") is True


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
        return _data({**head, "choices": [choice], **extra})

    if call is None:
        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in _pieces(text or "", chunks)]
    else:
        args: str = call["function"]["arguments"]
        opening = {**call, "index": 0, "function": {**call["function"], "arguments": ""}}
        delta = {"role": "assistant", "content": None, "tool_calls": [opening], "refusal": None}
        events = [chunk(delta)]
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _pieces(args, chunks or max(1, len(args) // 8))
        ]
    events.append(chunk({}, "stop" if call is None else "tool_calls"))
    if usage is not None:
        events.append(_data({**head, "choices": [], "usage": usage}))
    return events


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    kind: str = obj["type"]
    return b"event: " + kind.encode() + b"\n" + _data(obj)


def _truncated(event: bytes) -> bytes:
    """The event cut halfway through its JSON, still framed as a complete event."""
    start = event.index(b"data: ") + 6
    return event[: (start + len(event) - 2) // 2] + b"\n\n"


def _vector(text: str, dimensions: int, variant: int) -> bytes:
    """A unit vector as little-endian float32, the layout of OpenAI's base64 embeddings."""
    raw = hashlib.shake_256(f"{variant}\0{text}".encode()).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in values))


def _png(key: str) -> str:
    """A real 1x1 PNG whose colour depends on `key`, base64-encoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    pixel = b"\0" + hashlib.blake2b(key.encode(), digest_size=3).digest()
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _status_error(status: int) -> tuple[bytes, dict[str, str]]:
    if status == 429:
        body = _error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded")
        return body, {"retry-after": "1"}
    if status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return _error_body(message, "server_error", None), {}
    return _error_body(f"Request failed with status {status}.", "invalid_request_error", None), {}


# --- the server --------------------------------------------------------------------------------

_Handler = Callable[[web.Request, Behaviour, dict[str, Any], str], Awaitable[web.StreamResponse]]
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


class FakeProvider:
    """An OpenAI-compatible provider on 127.0.0.1 whose answers are deterministic."""

    def __init__(
        self,
        *,
        name: str,
        api_key: str | None = None,
        models: Sequence[str] = ("gpt-4o-mini", "text-embedding-3-small"),
        behaviour: Behaviour = Behaviour(),  # frozen, so one shared default is safe
        seed: int = 0,
        keep: int = 1000,
    ) -> None:
        if not name:
            raise ValueError("a fake provider needs a name")
        self.name = name
        self.models = tuple(models)
        self.behaviour = behaviour
        # The newest `keep` requests, for tests to assert on; bounded so a long-running fake
        # (the CLI keeps none) does not grow, nor stall on collecting them.
        self.received: collections.deque[Received] = collections.deque(maxlen=keep)
        self.cancelled = asyncio.Event()
        self.active = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self._auth = None if api_key is None else f"Bearer {api_key}"
        self._known = frozenset(self.models)
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        cards = {
            m: {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": name}
            for m in self.models
        }
        self._models_body = orjson.dumps({"object": "list", "data": list(cards.values())})
        self._model_bodies = {m: orjson.dumps(card) for m, card in cards.items()}
        self._posts: dict[str, _Handler] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/images/generations": self._images,
        }
        # `_handle` dispatches by itself; the exact paths only spare aiohttp the regex match
        # of the catch-all on the hot path.
        for path in (*self._posts, "/v1/models"):
            self.app.router.add_route("*", path, self._handle)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"fake provider {self.name!r} is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None or self._closing:
            raise RuntimeError(f"fake provider {self.name!r} was already started")
        # handler_cancellation: a client that goes away cancels its handler, which is how
        # `cancelled` learns about disconnects during hangs and streams.
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        self._url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}/v1"
        return self._url

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        # Hanging and slow handlers would otherwise hold shutdown for the runner's timeout.
        for task in list(self._tasks):
            task.cancel()
        await runner.cleanup()

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):012x}"

    def _client_left(self) -> None:
        if not self._closing:
            self.cancelled.set()

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.active += 1
        try:
            body = await request.read()
            try:
                data: Any = orjson.loads(body) if body else None
                parsed = bool(body)
            except orjson.JSONDecodeError:
                data, parsed = None, False
            headers = CIMultiDictProxy(CIMultiDict(request.headers))
            query = request.rel_url.raw_query_string
            self.received.append(Received(request.method, request.path, query, headers, body, data))
            return await self._serve(request, self.behaviour, data, parsed)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            self._client_left()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response()  # never sent: aiohttp drops it on the closed transport
        finally:
            self.active -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _serve(
        self, request: web.Request, b: Behaviour, data: Any, parsed: bool
    ) -> web.StreamResponse:
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            message = (
                "Incorrect API key provided."
                if "Authorization" in request.headers
                else ("You didn't provide an API key. Provide it as 'Authorization: Bearer <key>'.")
            )
            body = _error_body(message, "invalid_request_error", "invalid_api_key")
            return await self._send(request, b, body, status=401)
        if b.fail == "hang":
            # Only cancellation (the client leaving, or close()) ends this wait.
            await asyncio.get_running_loop().create_future()
        if b.fail == "reset":
            if b.latency:
                await asyncio.sleep(b.latency)
            self._abort(request)
            return web.Response()  # never sent: aiohttp drops it on the closed transport
        status = int(b.fail) if b.fail in ("500", "429") else 0
        if not status and b.error_rate and self._rng.random() < b.error_rate:
            status = b.error_status
        if status:
            body, headers = _status_error(status)
            return await self._send(request, b, body, status=status, headers=headers)
        return await self._route(request, b, data, parsed)

    async def _route(
        self, request: web.Request, b: Behaviour, data: Any, parsed: bool
    ) -> web.StreamResponse:
        path, method = request.path, request.method
        if method == "GET" and path == "/v1/models":
            return await self._send(request, b, self._models_body)
        if method == "GET" and path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            card = self._model_bodies.get(wanted)
            return await (
                self._send(request, b, card) if card else self._no_model(request, b, wanted)
            )
        handler = self._posts.get(path) if method == "POST" else None
        model_in_path = None
        if method == "POST" and path.startswith("/v1/models/") and path.endswith("/run"):
            handler, model_in_path = self._run, path[len("/v1/models/") : -len("/run")]
        if handler is None:
            body = _error_body(f"Invalid URL ({method} {path})", "invalid_request_error", None)
            return await self._send(request, b, body, status=404)
        if not isinstance(data, dict):
            message = (
                "The request body must be a JSON object."
                if parsed
                else "We could not parse the JSON body of your request."
            )
            body = _error_body(message, "invalid_request_error", None)
            return await self._send(request, b, body, status=400)
        model: Any = model_in_path if model_in_path is not None else data.get("model")
        if model is None and path == "/v1/images/generations":
            model = ""  # the images API lets the provider pick a default model
        elif not isinstance(model, str):
            body = _error_body(
                "You must provide a model parameter.", "invalid_request_error", None, "model"
            )
            return await self._send(request, b, body, status=400)
        elif model not in self._known:
            return await self._no_model(request, b, model)
        return await handler(request, b, data, model)

    async def _no_model(self, request: web.Request, b: Behaviour, model: str) -> web.StreamResponse:
        message = f"The model `{model}` does not exist or you do not have access to it."
        body = _error_body(message, "invalid_request_error", "model_not_found", "model")
        return await self._send(request, b, body, status=404)

    async def _bad_request(
        self, request: web.Request, b: Behaviour, message: str, param: str
    ) -> web.StreamResponse:
        body = _error_body(message, "invalid_request_error", None, param)
        return await self._send(request, b, body, status=400)

    # --- sending ---

    async def _send(
        self,
        request: web.Request,
        b: Behaviour,
        body: bytes,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        if b.latency:
            await asyncio.sleep(b.latency)
        hdrs = {"Content-Type": "application/json", "x-request-id": self._next_id("req_")}
        hdrs.update(headers or {})
        if status == 200 and b.fail == "broken_stream":
            body = body[: len(body) // 2]
        if b.gzip and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1, mtime=0)
            hdrs["Content-Encoding"] = "gzip"
        if status != 200 or b.fail != "die_mid_stream":
            return web.Response(status=status, body=body, headers=hdrs)
        resp = web.StreamResponse(status=status, headers=hdrs)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        self._abort(request)
        return resp

    async def _stream(
        self, request: web.Request, b: Behaviour, events: list[bytes], *, done: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": self._next_id("req_")})
        await resp.prepare(request)  # headers go out at once; `latency` delays the first event
        if b.fail in ("die_mid_stream", "broken_stream"):
            cut = min(max(2, len(events) // 2), len(events) - 1)
            tail = [_truncated(events[cut])] if b.fail == "broken_stream" else []
            events = [*events[:cut], *tail]
        elif done:
            events = [*events, _DONE]
        if b.latency:
            await asyncio.sleep(b.latency)
        for i, event in enumerate(events):
            if i and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await resp.write(event)
        if b.fail == "die_mid_stream":
            self._abort(request)
        else:
            await resp.write_eof()
        return resp

    # --- endpoints ---

    async def _chat(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._bad_request(
                request, b, "messages must be a non-empty array.", "messages"
            )
        prompt, context = _chat_prompt(messages)
        answer = _answer(
            b,
            prompt=prompt,
            context=context,
            tools=data.get("tools"),
            choice=data.get("tool_choice"),
            fmt=data.get("response_format"),
        )
        head = {
            "id": self._next_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"fp_fake{b.variant}",
        }
        call: dict[str, Any] | None = None
        if answer.tool is not None:
            function = {"name": answer.tool.name, "arguments": answer.tool.arguments}
            call = {"id": self._next_id("call_"), "type": "function", "function": function}
        finish = "stop" if call is None else "tool_calls"
        usage = _chat_usage(answer.prompt_tokens, answer.completion_tokens)
        if data.get("stream") is True:
            head["object"] = "chat.completion.chunk"
            with_usage = _stream_usage(b, data)
            events = _chat_chunks(head, answer.text, call, usage if with_usage else None, b.chunks)
            return await self._stream(request, b, events, done=True)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text,
            "refusal": None,
            "annotations": [],
        }
        if call is not None:
            message["tool_calls"] = [call]
        body: dict[str, Any] = {
            **head,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
        }
        if b.usage:
            body["usage"] = usage
        return await self._send(request, b, orjson.dumps(body))

    async def _completions(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        prompts = _texts(data.get("prompt", ""))
        if not prompts:
            message = "prompt must be a string, an array of strings or of token arrays."
            return await self._bad_request(request, b, message, "prompt")
        texts = [_answer_text(p, b.variant) for p in prompts]
        p_tokens = sum(_tokens(p) for p in prompts)
        c_tokens = sum(_tokens(t) for t in texts)
        head = {
            "id": self._next_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"fp_fake{b.variant}",
        }
        if data.get("stream") is True:
            with_usage = _stream_usage(b, data)
            extra = {"usage": None} if with_usage else {}

            def chunk(index: int, text: str, finish_reason: str | None = None) -> bytes:
                choice = {
                    "text": text,
                    "index": index,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                return _data({**head, "choices": [choice], **extra})

            events = []
            for index, text in enumerate(texts):
                events += [chunk(index, p) for p in _pieces(text, b.chunks)]
                events.append(chunk(index, "", "stop"))
            if with_usage:
                events.append(
                    _data({**head, "choices": [], "usage": _chat_usage(p_tokens, c_tokens)})
                )
            return await self._stream(request, b, events, done=True)
        choices = [
            {"text": text, "index": i, "logprobs": None, "finish_reason": "stop"}
            for i, text in enumerate(texts)
        ]
        body: dict[str, Any] = {**head, "choices": choices}
        if b.usage:
            body["usage"] = _chat_usage(p_tokens, c_tokens)
        return await self._send(request, b, orjson.dumps(body))

    async def _responses(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        prompt, context = _responses_prompt(data)
        text_config = data.get("text")
        answer = _answer(
            b,
            prompt=prompt,
            context=context,
            tools=data.get("tools"),
            choice=data.get("tool_choice"),
            fmt=text_config.get("format") if isinstance(text_config, dict) else None,
        )
        created = int(time.time())
        response: dict[str, Any] = {
            "id": self._next_id("resp_"),
            "object": "response",
            "created_at": created,
            "status": "completed",
            "completed_at": created,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "metadata": data.get("metadata") or {},
            "model": model,
            "output": [],
            "parallel_tool_calls": data.get("parallel_tool_calls", True),
            "previous_response_id": data.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": data.get("store", True),
            "temperature": data.get("temperature", 1.0),
            "text": text_config if isinstance(text_config, dict) else {"format": {"type": "text"}},
            "tool_choice": data.get("tool_choice", "auto"),
            "tools": data.get("tools", []),
            "top_p": data.get("top_p", 1.0),
            "truncation": data.get("truncation", "disabled"),
            "usage": _responses_usage(answer) if b.usage else None,
            "user": data.get("user"),
        }
        if answer.tool is None:
            text = answer.text or ""
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item: dict[str, Any] = {
                "id": self._next_id("msg_"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        else:
            item = {
                "id": self._next_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": self._next_id("call_"),
                "name": answer.tool.name,
                "arguments": answer.tool.arguments,
            }
        if data.get("stream") is not True:
            return await self._send(request, b, orjson.dumps({**response, "output": [item]}))

        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return _event({"type": kind, "sequence_number": next(seq), **fields})

        where: dict[str, Any] = {"item_id": item["id"], "output_index": 0}
        opening = {**response, "status": "in_progress", "completed_at": None, "usage": None}
        events = [
            event("response.created", response=opening),
            event("response.in_progress", response=opening),
        ]
        if answer.tool is None:
            at = {**where, "content_index": 0}
            added = {**item, "status": "in_progress", "content": []}
            events.append(event("response.output_item.added", output_index=0, item=added))
            events.append(event("response.content_part.added", **at, part={**part, "text": ""}))
            events += [
                event("response.output_text.delta", **at, delta=piece, logprobs=[])
                for piece in _pieces(text, b.chunks)
            ]
            events.append(event("response.output_text.done", **at, text=text, logprobs=[]))
            events.append(event("response.content_part.done", **at, part=part))
        else:
            args = answer.tool.arguments
            added = {**item, "status": "in_progress", "arguments": ""}
            events.append(event("response.output_item.added", output_index=0, item=added))
            events += [
                event("response.function_call_arguments.delta", **where, delta=piece)
                for piece in _pieces(args, b.chunks or max(1, len(args) // 8))
            ]
            events.append(
                event(
                    "response.function_call_arguments.done",
                    **where,
                    name=answer.tool.name,
                    arguments=args,
                )
            )
        events.append(event("response.output_item.done", output_index=0, item=item))
        events.append(event("response.completed", response={**response, "output": [item]}))
        # The Responses API ends with response.completed; it sends no [DONE].
        return await self._stream(request, b, events, done=False)

    async def _embeddings(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        inputs = _texts(data.get("input"))
        if not inputs or not all(inputs):
            return await self._bad_request(
                request, b, "input must be a non-empty string or array.", "input"
            )
        dimensions = data.get("dimensions", 8)
        if not isinstance(dimensions, int) or not 1 <= dimensions <= _MAX_DIMENSIONS:
            return await self._bad_request(
                request,
                b,
                f"dimensions must be an integer from 1 to {_MAX_DIMENSIONS}.",
                "dimensions",
            )
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return await self._bad_request(
                request, b, "encoding_format must be float or base64.", "encoding_format"
            )
        rows = []
        for index, text in enumerate(inputs):
            packed = _vector(text, dimensions, b.variant)
            # "float" answers carry the same float32 numbers that base64 would.
            embedding: Any = (
                base64.b64encode(packed).decode()
                if encoding == "base64"
                else list(struct.unpack(f"<{dimensions}f", packed))
            )
            rows.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_tokens(text) for text in inputs)
        body = {
            "object": "list",
            "data": rows,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await self._send(request, b, orjson.dumps(body))

    async def _images(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        prompt, size, n = data.get("prompt"), data.get("size", "1024x1024"), data.get("n", 1)
        if not isinstance(prompt, str) or not prompt:
            return await self._bad_request(
                request, b, "prompt must be a non-empty string.", "prompt"
            )
        if not isinstance(n, int) or not 1 <= n <= 10:
            return await self._bad_request(request, b, "n must be an integer from 1 to 10.", "n")
        images = [
            {
                "b64_json": _png(f"{b.variant}\0{model}\0{prompt}\0{size}\0{i}"),
                "revised_prompt": prompt,
            }
            for i in range(n)
        ]
        body = {"created": int(time.time()), "data": images, "output_format": "png", "size": size}
        return await self._send(request, b, orjson.dumps(body))

    async def _run(
        self, request: web.Request, b: Behaviour, data: dict[str, Any], model: str
    ) -> web.StreamResponse:
        """A non-OpenAI image API, for routes the sidecar must pass through untouched."""
        prompt, size = data.get("prompt"), data.get("size", "")
        if not isinstance(prompt, str) or not prompt:
            return await self._bad_request(
                request, b, "prompt must be a non-empty string.", "prompt"
            )
        body = {
            "model": model,
            "images": [{"b64": _png(f"{b.variant}\0{model}\0{prompt}\0{size}")}],
            "latency_ms": round(b.latency * 1000),
        }
        return await self._send(request, b, orjson.dumps(body))


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy fake",
        description="Run a fake OpenAI-compatible provider until SIGINT or SIGTERM.",
    )
    parser.add_argument("--name", default="fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--models", default="gpt-4o-mini,text-embedding-3-small", help="a,b,c")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=500)
    parser.add_argument("--fail", choices=FAULTS, default=None)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--variant", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional speed-up; absent on Windows
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve_until_signalled(provider: FakeProvider, host: str, port: int) -> None:
    url = await provider.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(url, flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await provider.close()


def main(argv: list[str] | None = None) -> int:
    """Run one fake provider; print its base URL on one line once it listens."""
    args = _parser().parse_args(argv)
    try:
        behaviour = Behaviour(
            latency=args.latency,
            chunk_delay=args.chunk_delay,
            chunks=args.chunks,
            error_rate=args.error_rate,
            error_status=args.error_status,
            fail=args.fail,
            gzip=args.gzip,
            variant=args.variant,
        )
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        provider = FakeProvider(
            name=args.name,
            api_key=args.api_key,
            models=models,
            behaviour=behaviour,
            seed=args.seed,
            keep=0,  # nobody reads `received` from the command line
        )
    except ValueError as exc:
        print(f"fake: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve_until_signalled(provider, args.host, args.port))
    except OSError as exc:
        print(f"fake: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
