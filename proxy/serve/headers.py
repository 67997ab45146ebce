"""Which headers travel between the app and an upstream, in each direction."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

# RFC 9110 7.6.1 hop-by-hop headers, plus what the sidecar sets itself on the way out.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
# The client's credentials never travel on; aiohttp sets host and length; the sidecar
# decompresses upstream bodies itself, so it asks for its own encodings.
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "api-key",
    "x-api-key",
    "accept-encoding",
    "x-shadow",
    "expect",  # 100-continue is answered by the sidecar itself, not passed on
}
# The body reaches the app decompressed and re-framed, so its length and encoding change.
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding"}


def forward_headers(headers: Mapping[str, str], drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy minus `drop` (lower-case names) and whatever `Connection` names as hop-by-hop."""
    listed = headers.get("connection")
    if listed:
        drop = drop | {h.strip().lower() for h in listed.split(",")}
    # One constructor call over a list: multidict builds it in C, add() is a call per header.
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def response_headers(
    headers: Mapping[str, str], request_id: str, upstream: str
) -> CIMultiDict[str]:
    """An upstream's answer headers as the app gets them, with the sidecar's ids."""
    out = forward_headers(headers, RESPONSE_DROP)
    theirs = out.popall("x-request-id", None)
    if theirs:
        out["x-upstream-request-id"] = theirs[0]
    out["x-request-id"] = request_id
    out["x-sidecar-upstream"] = upstream
    return out
