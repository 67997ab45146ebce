"""Read: an app's request, refused or read once into a `Call` that every later step shares."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import NotFound, NotImplementedHere, Unauthorized
from proxy.record import answers
from proxy.serve.body import read_body
from proxy.serve.headers import REQUEST_DROP, forward_headers
from proxy.serve.rewrite import ModelAt, multipart_model, path_model

if TYPE_CHECKING:
    from proxy.serve.router import Route
    from proxy.serve.runtime import Runtime

# Content codings aiohttp's server decodes before the handler reads the body (it parses
# Content-Encoding the same way: one coding, case-insensitive).
DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
_UNLABELLED = frozenset(
    {"application/x-www-form-urlencoded", "text/plain", "application/octet-stream"}
)

# Ids sort by time: SQLite appends to the primary-key B-tree instead of inserting at random
# pages (43 us vs 107 us per exchange at 100k rows), and no syscall is needed per id.
_ID_PREFIX = secrets.token_hex(3)  # tells two sidecar processes writing one db apart
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"req_{time.time_ns() // 1000:x}{_ID_PREFIX}{next(_id_counter) & 0xFFFF:04x}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Arrival(NamedTuple):
    """What is known of a request before its body is read: enough to refuse and record it."""

    id: str
    ts: float  # unix seconds
    t0: float  # perf_counter, for durations
    runtime: Runtime  # the config revision it arrived under, for its whole life


class Call(NamedTuple):
    """One app request, read: later steps make new values from it, never change it.

    The request path's values (`Arrival`, `Call`, `Choice`, `Attempt`) are named tuples, as
    immutable as a frozen dataclass, and built in C: a frozen dataclass sets each field
    through `object.__setattr__`, which for these four cost about 25,000 instructions a
    request, 4% of the sidecar's own (scripts/count_instructions.py).
    """

    arrival: Arrival
    method: str
    path: str  # decoded, as routes and the record name it
    tail: str  # the raw path after "/v1": the app's percent-encoding is kept
    query: str
    headers: CIMultiDict[str]  # to forward: hop-by-hop, credentials and codings dropped
    body: bytes
    json: dict[str, Any] | None  # the body, when it is a JSON object and something reads it
    model: str | None  # as the app asked for it
    model_at: ModelAt
    stream: bool
    json_mode: bool  # JSON mode or structured output asked for
    sticky: str | None  # the sticky key's value
    route: Route
    shadow: bool  # False when the app said `x-shadow: off`
    rooted: bool  # a path outside /v1/ (allowed by a route): `tail` is the whole path

    @property
    def id(self) -> str:
        return self.arrival.id


async def read_call(request: web.BaseRequest, arrival: Arrival) -> Call:
    """Validate, read the body, and sniff what the call asks for; raises `ErrorAnswer`."""
    rt = arrival.runtime
    path = request.path
    refuse_early(request, path, rt)
    body = await read_body(request, rt.max_body, rt.body_timeout)
    headers = forward_headers(request.headers, REQUEST_DROP)
    # aiohttp has already decoded a body sent as gzip, deflate, br or zstd: it goes on
    # plain, readable like any other (a mapped model id must be rewritten in it too).
    coding = request.headers.get("content-encoding")
    decoded = coding is not None and coding.strip().lower() in DECODED
    if decoded:
        headers.popall("content-encoding")
    readable = rt.inspect_bodies and bool(body) and (coding is None or decoded)
    rooted = not path.startswith("/v1/")
    raw_path = request.rel_url.raw_path
    tail = raw_path if rooted else raw_path[3:]  # "/v1" is 3 characters
    obj = _json_object(request, body) if readable else None
    model, at = _model(request, tail, obj, body, readable, rt.inspect_bodies)
    return Call(
        arrival,
        request.method,
        path,
        tail,
        request.rel_url.raw_query_string,
        headers,
        body,
        obj,
        model,
        at,
        obj is not None and obj.get("stream") is True,
        obj is not None and answers.wants_json(obj),
        _sticky(rt, request, obj),
        rt.table.match(path, model),
        request.headers.get("x-shadow") != "off",
        rooted,
    )


def refuse_early(request: web.BaseRequest, path: str, rt: Runtime) -> None:
    """What is refused on the request line and headers alone, before the body is read."""
    if rt.keys and not authorized(request.headers, rt.keys):
        raise Unauthorized(
            "this sidecar takes calls with one of its keys (listen.keys) only: set the app's "
            "API key (OPENAI_API_KEY, or ANTHROPIC_API_KEY) to one of them"
        )
    if not rt.table.accepts(path):
        raise NotFound(
            f"no such path on the sidecar: {path!r}; the API lives under /v1/ "
            "(set OPENAI_BASE_URL=http://host:port/v1; a path outside /v1/ needs a route)"
        )
    if request.method == "GET" and "websocket" in request.headers.get("upgrade", "").lower():
        # Dropping the hop-by-hop Upgrade header would send the provider a plain GET, and the
        # app a confusing failure from there.
        raise NotImplementedHere(
            f"the sidecar does not relay WebSocket connections ({path}, e.g. the "
            "Realtime API); connect to the provider directly for those"
        )


def authorized(headers: Mapping[str, str], keys: tuple[bytes, ...]) -> bool:
    """Whether the call carries one of the sidecar's keys: as a bearer token (the openai SDK),
    or in `x-api-key` / `api-key` (the anthropic SDK, Azure-style clients). Each key is
    compared in constant time, and all of them are, so timing tells nothing either."""
    given = headers.get("authorization")
    if given is not None and given[:7].lower() == "bearer ":
        token = given[7:].strip()
    else:
        token = headers.get("x-api-key") or headers.get("api-key") or ""
    presented = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


def _json_object(request: web.BaseRequest, body: bytes) -> dict[str, Any] | None:
    if not _looks_like_json(request, body):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # forwarded as sent: the upstream's 400 is the truthful answer
    return parsed if isinstance(parsed, dict) else None


def _model(
    request: web.BaseRequest,
    tail: str,
    obj: dict[str, Any] | None,
    body: bytes,
    readable: bool,
    inspect: bool,
) -> tuple[str | None, ModelAt]:
    """The model the call names, and where: its JSON body, a form field, or its path."""
    if obj is not None:
        m = obj.get("model")
        if isinstance(m, str):
            return m, "body"
    elif readable and _is_form(request):
        # An audio upload names its model in a form field; found, it is mapped like any.
        found = multipart_model(request.headers["content-type"], body)
        if found is not None:
            return found
    if inspect:
        model = path_model(tail)
        if model is not None:
            return model, "path"
    return None, "body"


def _sticky(rt: Runtime, request: web.BaseRequest, obj: dict[str, Any] | None) -> str | None:
    s = rt.table.sticky
    if s is None:
        return None
    key = request.headers.get(s.header) if s.header else None
    if key is None and s.body_field and obj is not None:
        v = obj.get(s.body_field)
        key = str(v) if v is not None else None
    return key


def _looks_like_json(request: web.BaseRequest, body: bytes) -> bool:
    # The media type only; aiohttp's `content_type` runs the email header parser per request.
    raw = request.headers.get("content-type")
    ctype = "application/octet-stream" if raw is None else raw.split(";", 1)[0].strip().lower()
    # `curl -d '{...}'` labels JSON as a form; providers parse it as JSON all the same. An
    # unreadable label counts as text/plain, as HTTP's own parsers read it.
    return ctype.endswith("json") or (
        (ctype in _UNLABELLED or "/" not in ctype) and body[:1] == b"{"
    )


def _is_form(request: web.BaseRequest) -> bool:
    raw = request.headers.get("content-type")
    return raw is not None and raw[:19].lower() == "multipart/form-data"
