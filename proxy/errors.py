"""The sidecar's own errors, and the one place their OpenAI-shaped body is built.

SidecarError
 ├── ConfigError            a config file refused (file, key path, reason); never an HTTP answer
 └── ErrorAnswer            an HTTP error the sidecar answers itself (upstream errors pass through)
      ├── BadRequest        400  the request cannot be proxied as sent
      ├── Unauthorized      401  `listen.keys` is set and the call carries none of them
      ├── NotFound          404  no such path on the sidecar
      ├── BodyTimeout       408  the request body stopped arriving (`limits.body_timeout`)
      ├── BodyTooLarge      413  request body over `limits.max_body_bytes`
      ├── NotImplementedHere 501  a request the sidecar cannot relay (WebSocket upgrades)
      ├── UpstreamUnreachable  502  connect refused, reset, DNS, TLS; an answer broken off
      └── UpstreamTimeout   504  connect, first byte or idle timeout
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # imported where an answer is made: `report` and `judge` never make one
    from aiohttp import web


class SidecarError(Exception):
    """Base of everything the sidecar raises on purpose."""


class ConfigError(SidecarError):
    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems  # (key path, reason)
        lines = [
            f"{path}: {key}: {reason}" if key else f"{path}: {reason}" for key, reason in problems
        ]
        super().__init__("\n".join(lines))


class ErrorAnswer(SidecarError):
    """An error the sidecar answers with itself, OpenAI-shaped: raised, then `response()`."""

    status = 500
    type = "proxy_error"
    code = "proxy_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def response(self, request_id: str | None = None) -> web.Response:
        from aiohttp import web  # loaded by then: it is serving

        headers = {"x-request-id": request_id} if request_id else None
        return web.Response(
            status=self.status,
            body=error_body(self.message, self.type, self.code),
            content_type="application/json",
            headers=headers,
        )


class BadRequest(ErrorAnswer):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class Unauthorized(ErrorAnswer):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ErrorAnswer):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class NotImplementedHere(ErrorAnswer):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"


class BodyTimeout(ErrorAnswer):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(ErrorAnswer):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamUnreachable(ErrorAnswer):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(ErrorAnswer):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def parser_reason(message: str) -> str:
    """An HTTP parser's reason, without the bytes it quotes after it.

    The quote is a line of what the other side sent, and that goes into the app's error, the
    log and the record: an upstream that echoes request headers would put our key there.
    """
    line = message.strip().split("\n", 1)[0]
    for quote in (": b'", ': b"'):
        line = line.split(quote, 1)[0]
    return line.rstrip(": ") or "unparseable"


def error_body(message: str, type_: str, code: str) -> bytes:
    """The OpenAI error shape; `param` is there because the official SDKs read it."""
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": None}})
