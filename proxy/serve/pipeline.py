"""The request path: read, route, rewrite, forward, relay (plain, SSE or raw), record."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import secrets
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from proxy import logs
from proxy.errors import (
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    NotFound,
    NotImplementedHere,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
)
from proxy.record import measure
from proxy.record.meter import Meter
from proxy.record.rows import Exchange, StoredObject
from proxy.serve.affinity import HEAD_BYTES, Affinity, answer_id, creates, stores_completion
from proxy.serve.rewrite import (
    USAGE_OPT_IN_PATHS,
    ModelAt,
    Unmap,
    for_upstream,
    model_unmapper,
    multipart_model,
    path_model,
)
from proxy.serve.router import sticky_point
from proxy.serve.upstream import (
    BUFFER_LIMIT,
    REQUEST_DROP,
    RESPONSE_DROP,
    UpstreamClient,
    forward_headers,
    parser_reason,
    push_deadline,
    read_upto,
)
from proxy.sse import Kind, SSEDecoder

if TYPE_CHECKING:
    from proxy.record.writer import Recorder
    from proxy.serve.runtime import Live
    from proxy.serve.shadow import Shadower
    from proxy.serve.stats import Stats


# Content codings aiohttp's server decodes before the handler reads the body (it parses
# Content-Encoding the same way: one coding, case-insensitive).
DECODED = frozenset({"gzip", "deflate", "br", "zstd"})


class _ClientGone(Exception):
    """The app closed its connection while the sidecar was writing to it."""


# Ids sort by time: SQLite appends to the primary-key B-tree instead of inserting at random
# pages (43 us vs 107 us per exchange at 100k rows), and no syscall is needed per id.
_ID_PREFIX = secrets.token_hex(3)  # tells two sidecar processes writing one db apart
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"req_{time.time_ns() // 1000:x}{_ID_PREFIX}{next(_id_counter) & 0xFFFF:04x}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Proxy:
    """Holds what every request needs; `handle` is the aiohttp request handler for `/v1/...`."""

    def __init__(
        self, live: Live, stats: Stats, recorder: Recorder | None, shadower: Shadower
    ) -> None:
        self.live = live
        self.stats = stats
        self.recorder = recorder
        self.shadower = shadower
        self.affinity = Affinity()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.live.current
        rid = new_request_id()
        ts = time.time()
        t0 = time.perf_counter()
        path = request.path
        route_name = "-"
        model: str | None = None
        try:
            if not path.startswith("/v1/"):
                raise NotFound(
                    f"no such path on the sidecar: {path!r}; the API lives under /v1/ "
                    "(set OPENAI_BASE_URL=http://host:port/v1)"
                )
            if (
                request.method == "GET"
                and "websocket" in request.headers.get("upgrade", "").lower()
            ):
                # Dropping the hop-by-hop Upgrade header would send the provider a plain GET,
                # and the app a confusing failure from there.
                raise NotImplementedHere(
                    f"the sidecar does not relay WebSocket connections ({path}, e.g. the "
                    "Realtime API); connect to the provider directly for those"
                )
            body = await self._read_body(request, rt.max_body, rt.body_timeout)
        except ProxyError as e:
            self.stats.proxy_errors += 1
            resp = e.response(rid)
            if isinstance(e, BodyTooLarge):
                resp.force_close()  # the rest of the body is not worth reading
            self._log(rt.log_requests, rid, route_name, "-", model, e.status, t0)
            if self.recorder is not None and rt.record.enabled:
                # Refused requests are traffic too: the report counts them as "proxy" errors.
                meter = Meter("primary", "-", None, False)
                meter.status = e.status
                meter.fail("proxy", e.message)
                meter.done()
                self.recorder.submit(
                    Exchange(rid, ts, route_name, request.method, path, None, False, rt.revision,
                             None, None, None)
                )  # fmt: skip
                self.recorder.submit(meter.record(rid, "none", paired=False))
            if isinstance(e, BodyTimeout | BadRequest):
                # Answer, then close: aiohttp would wait up to 10 s more for the rest of the
                # body, or read on in a body whose framing is broken.
                resp.force_close()
                with contextlib.suppress(ConnectionError):
                    await resp.prepare(request)
                    await resp.write_eof()
                request.protocol.force_close()
            return resp

        raw_path = request.rel_url.raw_path
        tail = raw_path[3:]  # keeps the app's percent-encoding; "/v1" is 3 characters
        query = request.rel_url.raw_query_string
        obj: dict[str, Any] | None = None
        # aiohttp has already decoded a body sent as gzip, deflate, br or zstd: it goes on
        # plain, readable like any other (a mapped model id must be rewritten in it too).
        coding = request.headers.get("content-encoding")
        decoded = coding is not None and coding.strip().lower() in DECODED
        inspect = rt.inspect_bodies
        if inspect and body and (coding is None or decoded) and _looks_like_json(request, body):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None  # forwarded as sent: the upstream's 400 is the truthful answer
            if isinstance(parsed, dict):
                obj = parsed
        stream = False
        at: ModelAt = "body"
        if obj is not None:
            m = obj.get("model")
            model = m if isinstance(m, str) else None
            stream = obj.get("stream") is True
        elif inspect and body and (coding is None or decoded) and _is_form(request):
            # An audio upload names its model in a form field; found, it is mapped like any.
            found = multipart_model(request.headers["content-type"], body)
            if found is not None:
                model, at = found
        if model is None and inspect:
            model = path_model(tail)
            if model is not None:
                at = "path"

        table = rt.table
        route = table.match(path, model)
        route_name = route.name
        sticky = None
        if table.sticky is not None:
            s = table.sticky
            key = request.headers.get(s.header) if s.header else None
            if key is None and s.body_field and obj is not None:
                v = obj.get(s.body_field)
                key = str(v) if v is not None else None
            sticky = key
        # A call naming an object goes where the object was made, whatever the weights say;
        # only the rollback switch sends it to the primary regardless (and it fails there).
        affinity = self.affinity
        owner = affinity.owner(tail, body)
        if owner is not None and owner in rt.upstreams and not rt.config.rollback:
            name = owner
            affinity.routed += 1
        else:
            name = route.split.pick(sticky_point(sticky) if sticky is not None else random.random())
        up = rt.upstreams[name]

        headers = forward_headers(request.headers, REQUEST_DROP)
        if decoded:
            headers.popall("content-encoding")
        recording = self.recorder is not None and rt.record.enabled
        # Usage is asked for only to be recorded: with recording off the request goes as sent,
        # and the stream is relayed without being parsed at all.
        want_usage = recording and stream and tail in USAGE_OPT_IN_PATHS
        json_mode = obj is not None and measure.wants_json(obj)
        shadow = route.shadow
        paired = False
        answered: asyncio.Future[None] | None = None
        if shadow is not None and request.headers.get("x-shadow") != "off":
            answered = asyncio.get_running_loop().create_future()
            paired = self.shadower.offer(
                rt,
                shadow,
                name,
                rid,
                request.method,
                tail,
                query,
                headers,
                obj,
                body,
                model,
                at,
                stream,
                want_usage,
                json_mode,
                answered,
            )

        send_tail, send_body, sent_model, strip = for_upstream(
            up, tail, obj, body, model, at, want_usage
        )
        # The answer names the id the provider was sent; the app gets back the one it asked for.
        unmap = (
            model_unmapper(sent_model, model)
            if model is not None and sent_model is not None and sent_model != model
            else None
        )
        if (
            up.unmap_ids is not None
            and request.method == "GET"
            and (tail == "/models" or (at == "path" and "/" not in tail[8:]))
        ):
            unmap = up.unmap_ids  # the model list, or one model: ids as the app knows them

        meter = Meter("primary", name, sent_model, json_mode)
        learn = creates(request.method, tail) or stores_completion(tail, obj, body)
        if learn:
            meter.head = bytearray()  # a streamed answer names its object in its first event
        up.enter()
        try:
            return await self._forward(
                request,
                up,
                meter,
                rid,
                send_tail,
                query,
                headers,
                send_body,
                strip,
                recording,
                unmap,
            )
        except asyncio.CancelledError:
            meter.fail("client_disconnect", "the app closed the connection")
            raise
        finally:
            if answered is not None and not answered.done():
                # The copies go now: after a stream's end, or (a plain answer) in the loop
                # turn after aiohttp has written this return value to the socket.
                answered.set_result(None)
            up.leave()
            meter.done()
            if learn and meter.error_kind is None:
                made = answer_id(meter.body if meter.body is not None else bytes(meter.head or b""))
                if made is not None:
                    affinity.learn(made, name)
                    if self.recorder is not None and recording:
                        self.recorder.submit(StoredObject(made, name, time.time()))
            self.stats.requests[name] += 1
            if meter.error_kind is not None:
                self.stats.errors[name] += 1
            self._log(rt.log_requests, rid, route_name, name, model, meter.status, t0)
            rec = self.recorder
            if rec is not None and recording:
                policy = rt.record.bodies
                rec.submit(
                    Exchange(  # positional, in field order: keywords cost twice as much
                        rid,
                        ts,
                        route_name,
                        request.method,
                        path,
                        model,
                        stream,
                        rt.revision,
                        hash_key(sticky) if sticky is not None else None,
                        body if policy.request == "full" else None,
                        measure.sha256_hex(body) if policy.request == "hash" else None,
                    )
                )
                rec.submit(meter.record(rid, policy.response, paired))

    async def _read_body(self, request: web.BaseRequest, limit: int, wait: float) -> bytes:
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(
                f"request body of {length} bytes is over the sidecar's limit of {limit} bytes"
            )
        if length == 0 or (length is None and not request.body_exists):
            return b""
        if request.headers.get("expect", "").lower() == "100-continue":
            # curl sends this for bodies over 1 MB and waits a second for it otherwise.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        content = request.content
        if content.is_eof():  # the usual case: the body came with the headers, no wait to bound
            return await self._read_chunks(content, limit)
        try:
            async with asyncio.timeout(None) as deadline:
                return await self._read_chunks(content, limit, deadline, wait)
        except TimeoutError:
            raise BodyTimeout(
                f"the request body stopped arriving: nothing for {wait:g} s (limits.body_timeout)"
            ) from None

    async def _read_chunks(
        self,
        content: aiohttp.StreamReader,
        limit: int,
        deadline: asyncio.Timeout | None = None,
        idle: float = 0.0,
    ) -> bytes:
        """The body, whole; with a `deadline`, each read may wait at most `idle` seconds."""
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        size = 0
        try:
            if deadline is not None:
                deadline.reschedule(loop.time() + idle)
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body is over the sidecar's limit of {limit} bytes")
                chunks.append(chunk)
                if deadline is not None:
                    deadline.reschedule(loop.time() + idle)
        except aiohttp.web_exceptions.HTTPException as e:
            raise BadRequest(f"could not read the request body: {e.reason}") from None
        except RequestPayloadError as e:
            # A body that does not decode (its content-encoding) or a broken chunked framing.
            cause = e.__cause__
            why = (
                parser_reason(cause.message)
                if isinstance(cause, HttpProcessingError)
                else "it was cut off or malformed"
            )
            raise BadRequest(f"could not read the request body: {why}") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _forward(
        self,
        request: web.BaseRequest,
        up: UpstreamClient,
        meter: Meter,
        rid: str,
        tail: str,
        query: str,
        headers: CIMultiDict[str],
        body: bytes,
        strip: bool,
        recording: bool,
        unmap: Unmap | None,
    ) -> web.StreamResponse:
        try:
            # One deadline for headers and, on plain answers, the body; streams re-arm it per chunk.
            async with asyncio.timeout(up.first_byte) as deadline:
                upr = await up.send(request.method, tail, query, headers, body)
                try:
                    ctype = upr.headers.get("content-type", "")
                    is_sse = ctype.startswith("text/event-stream")
                    meter.headers(upr.status, is_sse, strip or recording)
                    out_headers = response_headers(upr, rid, up.name)
                    if is_sse or not _bufferable(upr, ctype):
                        deadline.reschedule(None)
                        return await self._relay(
                            request, upr, up, meter, out_headers, strip, is_sse, unmap
                        )
                    data, whole = await read_upto(upr.content, BUFFER_LIMIT)
                    if not whole:  # larger than it said, or than it could say: piped on
                        deadline.reschedule(None)
                        return await self._relay(
                            request, upr, up, meter, out_headers, strip, False, unmap, data
                        )
                finally:
                    upr.release()
        except TimeoutError:
            err: ProxyError = UpstreamTimeout(
                f"upstream {up.name!r} ({up.host}) sent no answer within {up.first_byte:g} s"
            )
            meter.fail("timeout", err.message)
            return err.response(rid)
        except UpstreamUnreachable as e:
            meter.fail("connection", e.message)
            return e.response(rid)
        except UpstreamTimeout as e:
            meter.fail("timeout", e.message)
            return e.response(rid)
        except aiohttp.ClientError as e:
            err = UpstreamUnreachable(
                f"upstream {up.name!r} ({up.host}) broke off its answer: {type(e).__name__}"
            )
            meter.fail("connection", err.message)
            return err.response(rid)
        meter.bytes = len(data)
        data = up.scrub(upr.status, data)
        meter.body = data  # recorded as the provider sent it (less a key it quoted)
        if unmap is not None and "json" in ctype:
            data = unmap(data)
        return web.Response(status=upr.status, body=data, headers=out_headers)

    async def _relay(
        self,
        request: web.BaseRequest,
        upr: aiohttp.ClientResponse,
        up: UpstreamClient,
        meter: Meter,
        headers: CIMultiDict[str],
        strip: bool,
        is_sse: bool,
        unmap: Unmap | None,
        start: bytes = b"",
    ) -> web.StreamResponse:
        """Pipe a stream chunk by chunk; SSE is also parsed to count tokens, and relayed event by
        event where the usage chunk is held back or the model id put back. `start`: the part
        of a plain answer already read before it proved too large to hold."""
        resp = web.StreamResponse(status=upr.status, headers=headers)
        if is_sse:
            # No proxy or browser between here and the app may hold events back.
            resp.headers["cache-control"] = "no-cache"
            resp.headers["x-accel-buffering"] = "no"
        try:
            await resp.prepare(request)
        except ConnectionError:
            meter.fail("client_disconnect", "the app closed the connection")
            return resp
        loop = asyncio.get_running_loop()
        content = upr.content
        tally = meter.tally
        head = meter.head
        # Whole events go out, not raw reads, when one may be held back or rewritten.
        framed = is_sse and (strip or unmap is not None)
        decoder = SSEDecoder() if tally is not None or framed else None
        try:
            if start:
                meter.bytes += len(start)
                if head is not None:
                    head += start[:HEAD_BYTES]
                await _write(resp, start)
            async with asyncio.timeout(None) as idle:
                armed = -up.idle
                while True:
                    armed = push_deadline(idle, armed, loop.time(), up.idle)
                    chunk = await content.readany()
                    if not chunk:
                        break
                    meter.bytes += len(chunk)
                    if head is not None and len(head) < HEAD_BYTES:
                        head += chunk[:HEAD_BYTES]
                    if decoder is None:
                        await _write(resp, chunk)
                    elif framed:
                        out = []
                        for ev in decoder.feed(chunk):
                            if tally is not None:
                                kind = tally.add(ev)
                                if strip and kind is Kind.USAGE_ONLY:
                                    continue
                                meter.event(kind)
                            out.append(ev.raw if unmap is None else unmap(ev.raw))
                        if out:
                            await _write(resp, out[0] if len(out) == 1 else b"".join(out))
                    else:
                        # Nothing to strip or rewrite: the bytes go out as they came, then
                        # are parsed.
                        await _write(resp, chunk)
                        if tally is not None:
                            for ev in decoder.feed(chunk):
                                meter.event(tally.add(ev))
                if decoder is not None:
                    for ev in decoder.flush():  # an unterminated last event
                        kind = tally.add(ev) if tally is not None else Kind.OTHER
                        if framed and not (strip and kind is Kind.USAGE_ONLY):
                            await _write(resp, ev.raw if unmap is None else unmap(ev.raw))
        except _ClientGone:
            meter.fail("client_disconnect", "the app closed the connection mid-stream")
            upr.close()  # drop the upstream connection: that is how it learns to stop
            return resp
        except TimeoutError:
            reason = f"upstream {up.name!r} sent nothing for {up.idle:g} s mid-stream"
            meter.fail("timeout", reason)
            await _end_with_error(resp, reason, "upstream_timeout", is_sse)
            upr.close()
            return resp
        except aiohttp.ClientError as e:
            reason = f"upstream {up.name!r} broke off the stream: {type(e).__name__}"
            meter.fail("broken_stream" if is_sse else "connection", reason)
            await _end_with_error(resp, reason, "upstream_stream_broken", is_sse)
            return resp
        try:
            await resp.write_eof()
        except ConnectionError:
            meter.fail("client_disconnect", "the app closed the connection at the end")
        return resp

    def _log(
        self,
        enabled: bool,
        rid: str,
        route: str,
        upstream: str,
        model: str | None,
        status: int | None,
        t0: float,
    ) -> None:
        if enabled:
            ms = round((time.perf_counter() - t0) * 1000.0, 2)
            logs.request(rid, route, upstream, model, status, ms)


def response_headers(upr: aiohttp.ClientResponse, rid: str, upstream: str) -> CIMultiDict[str]:
    headers = forward_headers(upr.headers, RESPONSE_DROP)
    theirs = headers.popall("x-request-id", None)
    if theirs:
        headers["x-upstream-request-id"] = theirs[0]
    headers["x-request-id"] = rid
    headers["x-sidecar-upstream"] = upstream
    return headers


def _looks_like_json(request: web.BaseRequest, body: bytes) -> bool:
    headers = request.headers
    # The media type only; aiohttp's `content_type` runs the email header parser per request.
    raw = headers.get("content-type")
    ctype = "application/octet-stream" if raw is None else raw.split(";", 1)[0].strip().lower()
    # `curl -d '{...}'` labels JSON as a form; providers parse it as JSON all the same. An
    # unreadable label counts as text/plain, as HTTP's own parsers read it.
    return ctype.endswith("json") or (
        (ctype in _UNLABELLED or "/" not in ctype) and body[:1] == b"{"
    )


def _is_form(request: web.BaseRequest) -> bool:
    raw = request.headers.get("content-type")
    return raw is not None and raw[:19].lower() == "multipart/form-data"


_UNLABELLED = frozenset(
    {"application/x-www-form-urlencoded", "text/plain", "application/octet-stream"}
)


def _bufferable(upr: aiohttp.ClientResponse, ctype: str) -> bool:
    length = upr.content_length
    if length is not None:
        return length <= BUFFER_LIMIT
    # Chunked JSON is one document; chunked anything else (ndjson, audio) may be a stream.
    return ctype.startswith("application/json")


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except ConnectionError as e:  # aiohttp's ClientConnectionResetError is one too
        raise _ClientGone from e


async def _end_with_error(resp: web.StreamResponse, reason: str, code: str, is_sse: bool) -> None:
    """The headers are gone already: an SSE error event is the only way left to say it."""
    try:
        if is_sse:
            await resp.write(b"data: " + error_body(reason, "upstream_error", code) + b"\n\n")
        await resp.write_eof()
    except ConnectionError:
        pass
