"""The one place the sidecar reaches into aiohttp's private parts, and why.

aiohttp's server answers HTTP it cannot parse itself, in text/plain, and drops a request
body whose chunked framing breaks mid-read without a word. The SDKs expect OpenAI-shaped
errors, and a handler waiting on a dropped body would hang until its deadline. Both are
mended by subclassing the protocol (`web.RequestHandler`); `data_received` reads two
private fields, `_messages` and `_current_request`. `PRIVATE_FIELDS_PRESENT` says whether
this aiohttp still has them (tests/serve/test_protocol.py fails when an upgrade moves them;
the sidecar then keeps aiohttp's own behaviour rather than break).
"""

from __future__ import annotations

from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from proxy.errors import error_body

log = structlog.get_logger("proxy.app")

_parent_data_received = web.RequestHandler.data_received
PRIVATE_FIELDS_PRESENT = {"_messages", "_current_request"} <= set(
    getattr(web.RequestHandler, "__slots__", ())
)


class _Protocol(web.RequestHandler):
    """aiohttp answers HTTP it cannot parse itself, in text/plain; the SDKs expect the OpenAI shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Not super(): it logs the parser's message, which can quote a header's value (a key).
        if request.writer.output_size > 0:
            raise ConnectionError("a response had begun; the connection is closed instead")
        log.warning("unparseable request", status=status, kind=type(exc).__name__ if exc else None)
        headers = None
        if status >= 500:
            body = error_body(
                "the sidecar failed on this request; see its log", "proxy_error", "proxy_error"
            )
        elif isinstance(exc, ContentEncodingError):
            # Raised with the headers only for a coding that aiohttp has no decoder for (br
            # without Brotli, zstd without zstandard); its message names the coding, no more.
            status = 415
            headers = {"accept-encoding": "gzip, deflate"}
            body = error_body(
                f"the sidecar cannot decode this request body ({exc.message}); send it "
                "uncompressed, or as gzip or deflate",
                "invalid_request_error",
                "unsupported_content_encoding",
            )
        else:
            # The parser's own message can quote header values, keys among them: name the kind only.
            kind = type(exc).__name__ if exc is not None else HTTPStatus(status).phrase
            body = error_body(
                f"malformed HTTP request ({kind})", "invalid_request_error", "bad_request"
            )
        resp = web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )
        resp.force_close()
        return resp

    def data_received(self, data: bytes) -> None:
        # aiohttp's parser, on a framing error in a body it is still reading (a bad chunk
        # size), queues a 400 for after the request and drops that body without a word: the
        # handler would wait on it until limits.body_timeout. Tell the body instead, as
        # aiohttp itself does when the connection is lost. (On every read: no super(), no
        # getattr; `PRIVATE_FIELDS_PRESENT` checked the private fields once.)
        messages = self._messages
        queued = len(messages)
        _parent_data_received(self, data)
        if len(messages) > queued and self._current_request is not None:
            self._body_broken(self._current_request, messages[-1][0])

    @staticmethod
    def _body_broken(request: web.BaseRequest, info: object) -> None:
        exc = getattr(info, "exc", None)
        if isinstance(exc, HttpProcessingError) and not request.content.is_eof():
            error = RequestPayloadError("the request body's framing is broken")
            error.__cause__ = exc
            request.content.set_exception(error)

    if (
        not PRIVATE_FIELDS_PRESENT
    ):  # an aiohttp without those private fields keeps its own behaviour
        del data_received


class Server(web.Server):
    """aiohttp's low-level server, speaking through `_Protocol`."""

    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)
