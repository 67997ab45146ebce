"""Fake OpenAI-compatible providers: aiohttp servers that answer deterministically, or misbehave."""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import hashlib
import itertools
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, get_args

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.fakes import replies as fake_replies
from proxy.fakes.replies import DONE, Invalid, Reply, Stream, error_body, status_error, truncated

try:
    import uvloop
except ImportError:  # an optional speed-up; absent on Windows
    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = None
else:
    _LOOP_FACTORY = uvloop.new_event_loop

# A request header that overrides `chunk_delay` for that request only (seconds, e.g. "0"):
# one fake can serve paced and back-to-back streams.
CHUNK_DELAY_HEADER: Final = "x-fake-chunk-delay"

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


# --- the server --------------------------------------------------------------------------------

# An endpoint: the request's JSON object, its model and the behaviour in force, to a reply.
_Endpoint = Callable[[dict[str, Any], str, Behaviour], Reply]
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
        # Ids differ between fakes, as between providers: an id names one provider's object.
        self._id_tag = hashlib.sha256(name.encode()).hexdigest()[:6]
        self._models_body, self._model_bodies = fake_replies.model_bodies(self.models, name)
        self._posts: dict[str, _Endpoint] = {
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
            try:
                body = await request.read()
            except RequestPayloadError:  # e.g. a content-encoding that does not decode
                message = "We could not parse the JSON body of your request."
                body = error_body(message, "invalid_request_error", None)
                return await self._send(request, self.behaviour, body, status=400)
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
                    body = error_body(message, "invalid_request_error", None)
                    return await self._send(request, b, body, status=400)
            return await self._serve(request, b, data, parsed)
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
            body = error_body(message, "invalid_request_error", "invalid_api_key")
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
            body, headers = status_error(status)
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
            body = error_body(f"Invalid URL ({method} {path})", "invalid_request_error", None)
            return await self._send(request, b, body, status=404)
        if not isinstance(data, dict):
            message = (
                "The request body must be a JSON object."
                if parsed
                else "We could not parse the JSON body of your request."
            )
            body = error_body(message, "invalid_request_error", None)
            return await self._send(request, b, body, status=400)
        model: Any = model_in_path if model_in_path is not None else data.get("model")
        if model is None and path == "/v1/images/generations":
            model = ""  # the images API lets the provider pick a default model
        elif not isinstance(model, str):
            body = error_body(
                "You must provide a model parameter.", "invalid_request_error", None, "model"
            )
            return await self._send(request, b, body, status=400)
        elif model not in self._known:
            return await self._no_model(request, b, model)
        reply = handler(data, model, b)
        if isinstance(reply, Stream):
            return await self._stream(
                request, b, reply.events, done=reply.done, trailing=reply.trailing
            )
        if isinstance(reply, Invalid):
            body = error_body(reply.message, "invalid_request_error", None, reply.param)
            return await self._send(request, b, body, status=400)
        return await self._send(request, b, reply)

    async def _no_model(self, request: web.Request, b: Behaviour, model: str) -> web.StreamResponse:
        message = f"The model `{model}` does not exist or you do not have access to it."
        body = error_body(message, "invalid_request_error", "model_not_found", "model")
        return await self._send(request, b, body, status=404)

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
        self,
        request: web.Request,
        b: Behaviour,
        events: Sequence[bytes],
        *,
        done: bool,
        trailing: int = 0,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": self._next_id("req_")})
        await resp.prepare(request)  # headers go out at once; `latency` delays the first event
        # Paced: the events a model generates. The usage chunk and [DONE] follow at once.
        paced = len(events) - trailing
        if b.fail in ("die_mid_stream", "broken_stream"):
            cut = min(max(2, len(events) // 2), len(events) - 1)
            tail = [truncated(events[cut])] if b.fail == "broken_stream" else []
            events = [*events[:cut], *tail]
        elif done:
            events = [*events, DONE]
        if b.latency:
            await asyncio.sleep(b.latency)
        for i, event in enumerate(events):
            if 0 < i < paced and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await resp.write(event)
        if b.fail == "die_mid_stream":
            self._abort(request)
        else:
            await resp.write_eof()
        return resp

    # --- endpoints: the clock and the ids are the only state the replies take ---

    def _chat(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.chat(data, model, b, created=int(time.time()), next_id=self._next_id)

    def _completions(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.completions(
            data, model, b, created=int(time.time()), next_id=self._next_id
        )

    def _responses(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.responses(
            data, model, b, created=int(time.time()), next_id=self._next_id
        )

    def _embeddings(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.embeddings(data, model, b)

    def _images(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.images(data, model, b, created=int(time.time()))

    def _run(self, data: dict[str, Any], model: str, b: Behaviour) -> Reply:
        return fake_replies.run(data, model, b, latency=b.latency)


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
        with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
            runner.run(_serve_until_signalled(provider, args.host, args.port))
    except OSError as exc:
        print(f"fake: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
