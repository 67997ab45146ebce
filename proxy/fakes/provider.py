"""Fake providers: aiohttp servers on 127.0.0.1 that answer deterministically, or misbehave.

The server owns the behaviours (faults, latency, pacing, gzip) and the files it serves; what a
request means and what the answer looks like is the API shape's (`api.Api`: OpenAI's in
`openai_api.py`, Anthropic's in `anthropic_api.py`, Abstrakt's in `abstrakt_api.py`).
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import hashlib
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, get_args

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.fakes import abstrakt_api, anthropic_api, openai_api
from proxy.fakes.abstrakt_api import AbstraktApi
from proxy.fakes.anthropic_api import AnthropicApi
from proxy.fakes.api import DONE, Api, Ask, Body, Refusal, Stream, truncated
from proxy.fakes.files import PREFIX, Files
from proxy.fakes.openai_api import OpenAiApi
from proxy.fakes.replies import MAX_DIMENSIONS

# A request header that overrides `chunk_delay` for that request only (seconds, e.g. "0"):
# one fake can serve paced and back-to-back streams.
CHUNK_DELAY_HEADER: Final = "x-fake-chunk-delay"

# "error": every request answered with `error_status` (the error rate's draw, always won).
# "stream_error": a stream breaks off midway with the shape's error event for `error_status`
# (Anthropic's `event: error`); a plain request gets that status.
Fault = Literal[
    "500", "429", "hang", "reset", "die_mid_stream", "broken_stream", "error", "stream_error"
]
FAULTS: Final[tuple[str, ...]] = get_args(Fault)
ApiName = Literal["openai", "anthropic", "abstrakt"]
APIS: Final[tuple[str, ...]] = get_args(ApiName)
_DEFAULT_MODELS: Final = {
    "openai": openai_api.DEFAULT_MODELS,
    "anthropic": anthropic_api.DEFAULT_MODELS,
    "abstrakt": abstrakt_api.DEFAULT_MODELS,
}


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
    # Extra latency per request, drawn uniformly from [0, latency_jitter) by the seeded RNG.
    latency_jitter: float = 0.0
    first_token_delay: float = 0.0  # before a stream's first content event, on top of latency
    tool_json: Literal["valid", "broken"] = "valid"  # broken: arguments that are not JSON
    refuse_tools: bool = False  # a 400 for a request that offers tools
    embedding_dims: int | None = None  # an embedding's length when the request names none (8)
    quality: Literal["good", "worse"] = "good"  # worse: an off-topic, short answer text

    def __post_init__(self) -> None:
        delays = (self.latency, self.chunk_delay, self.latency_jitter, self.first_token_delay)
        if min(delays) < 0:
            raise ValueError(
                "latency, chunk_delay, latency_jitter and first_token_delay must be >= 0"
            )
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be a 4xx or 5xx status")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError("chunks must be >= 1")
        if self.fail is not None and self.fail not in FAULTS:
            raise ValueError(f"fail must be one of {', '.join(FAULTS)}")
        if self.tool_json not in ("valid", "broken"):
            raise ValueError("tool_json must be valid or broken")
        if self.quality not in ("good", "worse"):
            raise ValueError("quality must be good or worse")
        if self.embedding_dims is not None and not 1 <= self.embedding_dims <= MAX_DIMENSIONS:
            raise ValueError(f"embedding_dims must be from 1 to {MAX_DIMENSIONS}")


@dataclass(frozen=True, slots=True)
class Received:
    """A request as it arrived at a fake, for tests to assert on."""

    method: str
    path: str  # percent-decoded, as the router sees it
    query: str  # as sent, percent-encoding kept
    headers: Mapping[str, str]
    body: bytes
    json: Any | None  # None when the body is empty or not JSON


# --- the server --------------------------------------------------------------------------------

_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


class FakeProvider:
    """A provider on 127.0.0.1 in one API shape (OpenAI's by default) whose answers are
    deterministic."""

    def __init__(
        self,
        *,
        name: str,
        api: ApiName = "openai",
        api_key: str | None = None,
        models: Sequence[str] | None = None,  # None: the shape's usual models
        behaviour: Behaviour = Behaviour(),  # frozen, so one shared default is safe
        seed: int = 0,
        keep: int = 1000,
    ) -> None:
        if not name:
            raise ValueError("a fake provider needs a name")
        if api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}")
        self.name = name
        self.models = tuple(_DEFAULT_MODELS[api] if models is None else models)
        self.behaviour = behaviour
        # The newest `keep` requests, for tests to assert on; bounded so a long-running fake
        # (the CLI keeps none) does not grow, nor stall on collecting them.
        self.received: collections.deque[Received] = collections.deque(maxlen=keep)
        self.cancelled = asyncio.Event()
        self.active = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        # Ids differ between fakes, as between providers: an id names one provider's object.
        self._id_tag = hashlib.sha256(name.encode()).hexdigest()[:6]
        self._files = Files()
        # The bodies' ids and the request ids share a count.
        self._api = _shape(api, name, self.models, api_key, self._next_id, self._files)
        # `_handle` dispatches by itself; the exact paths only spare aiohttp the regex match
        # of the catch-all on the hot path.
        for path in self._api.paths:
            self.app.router.add_route("*", path, self._handle)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._root: str | None = None

    @property
    def url(self) -> str:
        """The base URL with `/v1`, as the openai SDK takes it."""
        return f"{self.url_root}/v1"

    @property
    def url_root(self) -> str:
        """The base URL without `/v1`, as the anthropic SDK takes it."""
        if self._root is None:
            raise RuntimeError(f"fake provider {self.name!r} is not started")
        return self._root

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
        self._root = self._files.root = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}"
        return self.url

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
        return f"{prefix}{self._id_tag}{next(self._ids):012x}"

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
            return await self._receive(request)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            self._client_left()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response()  # never sent: aiohttp drops it on the closed transport
        finally:
            self.active -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        """Read and keep the request, then settle the behaviour it is served with."""
        try:
            body = await request.read()
        except RequestPayloadError:  # e.g. a content-encoding that does not decode
            return await self._refuse(request, self.behaviour, self._api.unreadable())
        try:
            data: Any = orjson.loads(body) if body else None
            parsed = bool(body)
        except orjson.JSONDecodeError:
            data, parsed = None, False
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        query = request.rel_url.raw_query_string
        self.received.append(Received(request.method, request.path, query, headers, body, data))
        b = self.behaviour
        pace = headers.get(CHUNK_DELAY_HEADER)
        if pace is not None:
            try:
                b = replace(b, chunk_delay=float(pace))
            except ValueError:
                message = f"{CHUNK_DELAY_HEADER} must be a number of seconds >= 0"
                return await self._refuse(request, b, self._api.bad_request(message))
        if b.latency_jitter:
            b = replace(b, latency=b.latency + self._rng.random() * b.latency_jitter)
        ask = Ask(request.method, request.path, data, parsed, body, headers)
        return await self._serve(request, b, ask)

    async def _serve(self, request: web.Request, b: Behaviour, ask: Ask) -> web.StreamResponse:
        if ask.path.startswith(PREFIX):  # public, as signed URLs are, and never misbehaving
            file = self._files.get(ask.path) if ask.method in ("GET", "HEAD") else None
            if file is None:
                return await self._refuse(request, Behaviour(), self._api.failure(404))
            return web.Response(body=file.data, content_type=file.content_type)
        refused = self._api.unauthorized(request.headers)
        if refused is not None:
            return await self._refuse(request, b, refused)
        if b.fail == "hang":
            # Only cancellation (the client leaving, or close()) ends this wait.
            await asyncio.get_running_loop().create_future()
        if b.fail == "reset":
            if b.latency:
                await asyncio.sleep(b.latency)
            self._abort(request)
            return web.Response()  # never sent: aiohttp drops it on the closed transport
        status = int(b.fail) if b.fail in ("500", "429") else 0
        if b.fail == "error" or (not status and b.error_rate and self._rng.random() < b.error_rate):
            status = b.error_status
        if status:
            return await self._refuse(request, b, self._api.failure(status))
        reply = self._api.reply(ask, b)
        if isinstance(reply, Stream):
            return await self._stream(request, b, reply)
        if isinstance(reply, Refusal):
            return await self._refuse(request, b, reply)
        if b.fail == "stream_error":
            return await self._refuse(request, b, self._api.failure(b.error_status))
        if isinstance(reply, Body):
            return await self._send(
                request, b, reply.data, headers=reply.headers, content_type=reply.content_type
            )
        return await self._send(request, b, reply)

    # --- sending ---

    async def _refuse(
        self, request: web.Request, b: Behaviour, refusal: Refusal
    ) -> web.StreamResponse:
        return await self._send(
            request, b, refusal.body, status=refusal.status, headers=refusal.headers
        )

    async def _send(
        self,
        request: web.Request,
        b: Behaviour,
        body: bytes,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> web.StreamResponse:
        if b.latency:
            await asyncio.sleep(b.latency)
        hdrs = {"Content-Type": content_type, self._api.request_id_header: self._next_id("req_")}
        hdrs.update(headers or {})
        if status == 200 and b.fail == "broken_stream":
            body = body[: len(body) // 2]
        compress = b.gzip and content_type == "application/json"  # images are compressed
        if compress and "gzip" in request.headers.get("Accept-Encoding", ""):
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
        self, request: web.Request, b: Behaviour, stream: Stream
    ) -> web.StreamResponse:
        headers = {**_SSE_HEADERS, self._api.request_id_header: self._next_id("req_")}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)  # headers go out at once; `latency` delays the first event
        events = stream.events
        # Paced: the events a model generates. The usage chunk and [DONE] follow at once.
        paced = len(events) - stream.trailing
        if b.fail in ("die_mid_stream", "broken_stream", "stream_error"):
            cut = min(max(2, len(events) // 2), len(events) - 1)
            tail = []
            if b.fail == "broken_stream":
                tail = [truncated(events[cut])]
            elif b.fail == "stream_error":
                tail = [self._api.stream_failure(b.error_status)]
            events = [*events[:cut], *tail]
        elif stream.done:
            events = [*events, DONE]
        if b.latency:
            await asyncio.sleep(b.latency)
        for i, event in enumerate(events):
            if i == stream.first and b.first_token_delay:
                await asyncio.sleep(b.first_token_delay)
            if 0 < i < paced and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await resp.write(event)
        if b.fail == "die_mid_stream":
            self._abort(request)
        else:
            await resp.write_eof()
        return resp


def _shape(
    api: ApiName,
    owner: str,
    models: Sequence[str],
    api_key: str | None,
    next_id: Callable[[str], str],
    files: Files,
) -> Api:
    """The one place the API shape is chosen."""
    if api == "anthropic":
        return AnthropicApi(owner=owner, models=models, api_key=api_key, next_id=next_id)
    if api == "abstrakt":
        return AbstraktApi(models=models, api_key=api_key, next_id=next_id, files=files)
    return OpenAiApi(owner=owner, models=models, api_key=api_key, next_id=next_id, files=files)
