"""The app's request body, read whole within the size limit and the idle deadline."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from proxy.errors import BadRequest, BodyTimeout, BodyTooLarge, parser_reason


async def read_body(request: web.BaseRequest, limit: int, wait: float) -> bytes:
    """The body, whole; raises `BodyTooLarge`, `BodyTimeout` or `BadRequest`."""
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
        return await _read_chunks(content, limit)
    try:
        async with asyncio.timeout(None) as deadline:
            return await _read_chunks(content, limit, deadline, wait)
    except TimeoutError:
        raise BodyTimeout(
            f"the request body stopped arriving: nothing for {wait:g} s (limits.body_timeout)"
        ) from None


async def _read_chunks(
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
