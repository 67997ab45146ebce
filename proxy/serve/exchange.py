"""Exchange: one attempt sent to its upstream and its answer read, measured, and handed on.

This is the only code that talks to an upstream. It sends, holds the deadlines (first byte
for the headers and a plain answer, idle between a stream's chunks), reads the answer whole
or chunk by chunk (SSE parsed and tallied), and maps every failure to one error kind in one
place, `_failure`. What happens to the answer is the `Sink`'s business: the relay writes it
to the app; a shadow copy only measures it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict

from proxy.errors import ErrorAnswer, UpstreamTimeout, UpstreamUnreachable
from proxy.record.answers import error_kind_for_status
from proxy.record.meter import Meter
from proxy.record.rows import ErrorKind
from proxy.serve.affinity import HEAD_BYTES
from proxy.serve.plan import Attempt
from proxy.serve.upstream import BUFFER_LIMIT, push_deadline, read_upto
from proxy.sse import Event, SSEDecoder
from proxy.tally import Kind


class ClientGone(Exception):
    """The app closed its connection while the sidecar was writing to it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sink(Protocol):
    """Where an answer goes. Its methods may raise `ClientGone`."""

    @property
    def relays(self) -> bool:
        """Whether it writes the answer on to the app: then time to first byte, held-back
        chunks and model ids matter. A sink that does not reads plain answers whole."""

    @property
    def stop_at_done(self) -> bool:
        """Whether a stream is complete at `[DONE]`, without waiting for the upstream to end it."""

    def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """A plain answer, read whole (scrubbed of the sidecar's key, in the app's shape)."""

    async def begin(self, status: int, headers: Mapping[str, str], is_sse: bool) -> None:
        """A streamed (or too large to hold) answer starts."""

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    async def fail(self, failure: Failure) -> None:
        """The upstream failed; `failure.midway`: after `begin`, with the answer under way."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An upstream failure as the app and the record see it."""

    kind: ErrorKind
    error: ErrorAnswer  # its message is the record's reason; before `begin`, the app's answer
    midway: bool  # the answer had begun: the app has headers already
    is_sse: bool


async def exchange(attempt: Attempt, meter: Meter, sink: Sink) -> None:
    """Send `attempt`, hand its answer to `sink`, and measure it all on `meter`.

    Never raises for an upstream's failure (it is measured and given to `sink.fail`); the
    app leaving is measured as `client_disconnect`. Cancellation passes through.
    """
    up = attempt.upstream
    upr: aiohttp.ClientResponse | None = None
    began = is_sse = False  # what a failure means depends on how far the answer got
    try:
        # One deadline for the headers and a plain answer; a stream re-arms it per chunk.
        async with asyncio.timeout(up.first_byte) as deadline:
            upr = await up.send(attempt.method, attempt.tail, attempt.query, attempt.headers, attempt.body, attempt.rooted)  # fmt: skip
            try:
                ctype = upr.headers.get("content-type", "")
                is_sse = ctype.startswith("text/event-stream")
                meter.headers(upr.status, is_sse, attempt.parse_stream)
                start = b""
                if not is_sse and (not sink.relays or _bufferable(upr, ctype)):
                    data, whole = await read_upto(upr.content, BUFFER_LIMIT)
                    if whole:
                        meter.bytes = len(data)
                        await _whole(attempt, meter, sink, upr, up.scrub(upr.status, data))
                        return
                    start = data  # larger than it said, or than it could say: piped on
                deadline.reschedule(None)
                began = True
                await sink.begin(upr.status, upr.headers, is_sse)
                await _pump(attempt, meter, sink, upr, deadline, start, is_sse)
                await sink.end()
            finally:
                upr.release()
    except ClientGone as e:
        meter.fail("client_disconnect", e.reason)
        if upr is not None:
            upr.close()  # drop the upstream connection: that is how it learns to stop
    except (TimeoutError, ErrorAnswer, aiohttp.ClientError) as e:
        failure = _failure(e, attempt, began, is_sse)
        meter.fail(failure.kind, failure.error.message)
        if upr is not None and failure.kind == "timeout":
            upr.close()
        try:
            await sink.fail(failure)
        except ClientGone as gone:
            meter.fail("client_disconnect", gone.reason)


async def _whole(
    attempt: Attempt, meter: Meter, sink: Sink, upr: aiohttp.ClientResponse, body: bytes
) -> None:
    """A plain answer to the sink, through the adapter when the provider speaks another shape;
    recorded as the app gets it (less a key it quoted), so both sides compare alike."""
    translation = attempt.translation
    if translation is None:
        meter.body = body
        sink.whole(upr.status, upr.headers, body)
        return
    answer = translation.answer(upr.status, body, dict(upr.headers))
    if answer.fetch and answer.complete is not None:
        answer = answer.complete({url: await _fetch(attempt, url) for url in answer.fetch})
    if answer.status != upr.status:
        meter.status = answer.status
        meter.error_kind = error_kind_for_status(answer.status)
    headers = CIMultiDict(upr.headers)
    headers["content-type"] = "application/json"
    headers.update(answer.headers)
    meter.body = answer.body
    sink.whole(answer.status, headers, answer.body)


async def _fetch(attempt: Attempt, url: str) -> bytes:
    """A file the provider's answer links to (an image), within the first-byte deadline. The
    upstream's key is not sent: the link may be on another host."""
    up = attempt.upstream
    async with up.session.get(url, proxy=up.proxy, allow_redirects=True) as r:
        data, whole = await read_upto(r.content, BUFFER_LIMIT)
        if r.status != 200 or not whole:
            why = f"status {r.status}" if r.status != 200 else "over the size limit"
            raise UpstreamUnreachable(
                f"upstream {up.name!r} linked a file that could not be fetched ({why})"
            )
    return data


def _failure(exc: BaseException, attempt: Attempt, midway: bool, is_sse: bool) -> Failure:
    """The one mapping of an upstream failure to its error kind and message.

    `midway`: the answer had begun streaming; `is_sse`: it is an event stream.
    """
    up = attempt.upstream
    if isinstance(exc, UpstreamTimeout | UpstreamUnreachable):  # raised by `send`
        kind: ErrorKind = "timeout" if isinstance(exc, UpstreamTimeout) else "connection"
        return Failure(kind, exc, midway, is_sse)
    if isinstance(exc, TimeoutError):
        if midway:
            reason = f"upstream {up.name!r} sent nothing for {up.idle:g} s mid-stream"
        else:
            reason = f"upstream {up.name!r} ({up.host}) sent no answer within {up.first_byte:g} s"
        return Failure("timeout", UpstreamTimeout(reason), midway, is_sse)
    name = type(exc).__name__
    if midway:
        broken = UpstreamUnreachable(f"upstream {up.name!r} broke off the stream: {name}")
        return Failure("broken_stream" if is_sse else "connection", broken, midway, is_sse)
    reason = f"upstream {up.name!r} ({up.host}) broke off its answer: {name}"
    return Failure("connection", UpstreamUnreachable(reason), midway, is_sse)


async def _pump(
    attempt: Attempt,
    meter: Meter,
    sink: Sink,
    upr: aiohttp.ClientResponse,
    idle: asyncio.Timeout,
    start: bytes,
    is_sse: bool,
) -> None:
    """Hand the answer on chunk by chunk; an SSE stream is also parsed, and handed on event
    by event where a usage chunk is held back or a model id put back."""
    # Per chunk, everything is a local: this loop runs for every chunk of every stream.
    loop = asyncio.get_running_loop()
    every = attempt.upstream.idle
    content, write, stop = upr.content, sink.write, sink.stop_at_done
    tally, head = meter.tally, meter.head
    strip, unmap = attempt.strip_usage, attempt.unmap
    translation = attempt.translation
    translator = translation.stream() if translation is not None and is_sse else None
    # Whole events go out, not raw reads, when one may be held back, rewritten or translated.
    framed = is_sse and (translator is not None or (sink.relays and (strip or unmap is not None)))
    decoder = SSEDecoder() if tally is not None or framed else None
    if start:
        meter.bytes += len(start)
        if head is not None:
            head += start[:HEAD_BYTES]
        await write(start)
    armed = -every
    while True:
        armed = push_deadline(idle, armed, loop.time(), every)
        chunk = await content.readany()
        if not chunk:
            break
        meter.bytes += len(chunk)
        if head is not None and len(head) < HEAD_BYTES:
            head += chunk[:HEAD_BYTES]
        if decoder is None:
            await write(chunk)
        elif framed:
            events = decoder.feed(chunk)
            if translator is not None:
                events = [out for ev in events for out in translator.event(ev)]
            out = []
            for ev in events:
                kind = tally.add(ev) if tally is not None else Kind.OTHER
                meter.event(kind)
                if not (strip and kind is Kind.USAGE_ONLY):
                    out.append(ev.raw if unmap is None else unmap(ev.raw))
            if out:
                await write(out[0] if len(out) == 1 else b"".join(out))
            if stop and tally is not None and tally.done:
                upr.close()
                break
        else:
            # Nothing to hold back or rewrite: the bytes go out as they came, then are parsed.
            await write(chunk)
            for ev in decoder.feed(chunk):
                meter.event(tally.add(ev))  # type: ignore[union-attr]
            if stop and tally.done:  # type: ignore[union-attr]
                # Complete: an upstream slow to end its response after `[DONE]` (or
                # `response.completed`) must not make this a timeout.
                upr.close()
                break
    if decoder is not None:  # an unterminated last event
        events = decoder.flush()
        if translator is not None:
            events = [out for ev in events for out in translator.event(ev)] + translator.end()
        await _flush(attempt, meter, sink, events, framed)


async def _flush(
    attempt: Attempt, meter: Meter, sink: Sink, events: list[Event], framed: bool
) -> None:
    tally = meter.tally
    for ev in events:
        kind = tally.add(ev) if tally is not None else Kind.OTHER
        meter.event(kind)
        if framed and not (attempt.strip_usage and kind is Kind.USAGE_ONLY):
            unmap = attempt.unmap
            await sink.write(ev.raw if unmap is None else unmap(ev.raw))


def _bufferable(upr: aiohttp.ClientResponse, ctype: str) -> bool:
    length = upr.content_length
    if length is not None:
        return length <= BUFFER_LIMIT
    # Chunked JSON is one document; chunked anything else (ndjson, audio) may be a stream.
    return ctype.startswith("application/json")
