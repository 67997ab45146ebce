"""The sidecar's own errors, and the one place their OpenAI-shaped body is built.

SidecarError
 ├── ConfigError            a config file refused (file, key path, reason); never an HTTP answer
 └── ProxyError             an HTTP answer the sidecar gives itself (upstream errors pass through)
      ├── BadRequest        400  the request cannot be proxied as sent
      ├── NotFound          404  no such path on the sidecar
      ├── BodyTooLarge      413  request body over `limits.max_body_bytes`
      ├── UpstreamUnreachable  502  connect refused, reset, DNS, TLS
      └── UpstreamTimeout   504  connect, first byte or idle timeout
"""

from __future__ import annotations

import orjson
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


class ProxyError(SidecarError):
    status = 500
    type = "proxy_error"
    code = "proxy_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def response(self, request_id: str | None = None) -> web.Response:
        headers = {"x-request-id": request_id} if request_id else None
        return web.Response(
            status=self.status,
            body=error_body(self.message, self.type, self.code),
            content_type="application/json",
            headers=headers,
        )


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class NotImplementedHere(ProxyError):
    status = 501
    type = "invalid_request_error"
    code = "not_implemented"


class BodyTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamUnreachable(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(message: str, type_: str, code: str) -> bytes:
    """The OpenAI error shape; `param` is there because the official SDKs read it."""
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": None}})
