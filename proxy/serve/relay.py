"""Relay: the sink that writes an upstream's answer to the app, whole or as it streams."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from proxy.errors import ErrorAnswer, error_body
from proxy.serve.exchange import ClientGone, Failure
from proxy.serve.headers import response_headers
from proxy.serve.plan import Attempt


class Relay:
    """Holds the app's request and, once the answer is known, the response to return."""

    __slots__ = ("_attempt", "_call_id", "_request", "_stream", "response")

    _stream: web.StreamResponse  # the streamed answer: set by `begin`, before any write
    relays = True
    stop_at_done = False  # the app gets the stream as the upstream ends it

    def __init__(self, request: web.BaseRequest, call_id: str, attempt: Attempt) -> None:
        self._request = request
        self._call_id = call_id
        self._attempt = attempt
        self.response: web.StreamResponse | None = None

    @property
    def began(self) -> bool:
        """Whether the app has had bytes of the answer (a stream's headers at least)."""
        return self.response is not None and self.response.prepared

    def answer(self) -> web.StreamResponse:
        """The response the handler returns; every exchange ends having made one."""
        if self.response is None:  # a bug: still an answer the app's SDK understands
            return ErrorAnswer("the sidecar made no answer; see its log").response(self._call_id)
        return self.response

    def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        unmap = self._attempt.unmap
        if unmap is not None and "json" in headers.get("content-type", ""):
            body = unmap(body)
        out = response_headers(headers, self._call_id, self._attempt.upstream.name)
        self.response = web.Response(status=status, body=body, headers=out)

    async def begin(self, status: int, headers: Mapping[str, str], is_sse: bool) -> None:
        out = response_headers(headers, self._call_id, self._attempt.upstream.name)
        if self._attempt.translation is not None and is_sse:
            out.popall("content-type", None)
            out["content-type"] = "text/event-stream; charset=utf-8"
        resp = self.response = self._stream = web.StreamResponse(status=status, headers=out)
        if is_sse:
            # No proxy or browser between here and the app may hold events back.
            resp.headers["cache-control"] = "no-cache"
            resp.headers["x-accel-buffering"] = "no"
        try:
            await resp.prepare(self._request)
        except ConnectionError:
            raise ClientGone("the app closed the connection") from None

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except ConnectionError:  # aiohttp's ClientConnectionResetError is one too
            raise ClientGone("the app closed the connection mid-stream") from None

    async def end(self) -> None:
        try:
            await self._stream.write_eof()
        except ConnectionError:
            raise ClientGone("the app closed the connection at the end") from None

    async def fail(self, failure: Failure) -> None:
        error = failure.error
        if not failure.midway:
            self.response = error.response(self._call_id)
            return
        # The headers are gone already: an SSE error event is the only way left to say it.
        resp = self._stream
        code = "upstream_timeout" if failure.kind == "timeout" else "upstream_stream_broken"
        try:
            if failure.is_sse:
                await resp.write(b"data: " + error_body(error.message, "upstream_error", code) + b"\n\n")  # fmt: skip
            await resp.write_eof()
        except ConnectionError:
            pass
