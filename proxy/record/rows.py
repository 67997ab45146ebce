"""What the sidecar records: one `Exchange` per client request, one `Response` per upstream answer.

Named tuples, not dataclasses: a frozen dataclass sets each of a Response's 24 fields through
`object.__setattr__` (~20 us a record on the request path), a tuple is built in C, and it is
already the row `writer` binds. `report` reads the same columns back.
"""

from __future__ import annotations

import builtins
from typing import Literal, NamedTuple

Role = Literal["primary", "shadow", "noise", "failover", "replay"]
# How much of an answer is read: all of it (it is recorded), its counts only (first token and
# usage, for metrics, the guard and quotas), or none of it (relayed unread).
Reading = Literal["all", "counts", "none"]

# Error kinds, shared by the recorder and the report. `None` means success (2xx).
ErrorKind = Literal[
    "http_4xx",  # a 4xx other than 429
    "rate_limit",  # 429
    "http_5xx",
    "timeout",  # connect, first byte or idle-between-chunks timeout
    "connection",  # refused, reset, DNS, TLS
    "broken_stream",  # a stream that ended without [DONE] or with an error event
    "client_disconnect",  # the app went away before the answer was complete
    "proxy",  # the sidecar refused the request itself (413, 400, 404)
]


class Exchange(NamedTuple):
    """One request as the app sent it."""

    id: str  # the x-request-id the sidecar gave it
    ts: float  # unix seconds, when the request arrived
    route: str
    method: str
    path: str
    model: str | None  # the model the app asked for, before any mapping
    stream: bool
    revision: str  # config revision in force when the request arrived
    sticky_key: str | None  # SHA-256 prefix of the sticky key, never the key itself
    request_body: bytes | None  # only under body policy "full"
    request_sha256: str | None  # only under "hash" (under "full" the body itself is kept)
    # The SDKs retry a failed call (429, 5xx, a lost connection) twice by default, each
    # attempt its own request: the same `Idempotency-Key` (POSTs) and a growing
    # `x-stainless-retry-count`. Fields added later come last, with defaults, so that rows
    # built positionally before they existed still are whole (see `meter.retry_of`).
    # One key per call: 16 hex digits of the Idempotency-Key's SHA-256, or (the openai SDK
    # sends none) the request id of the call's first attempt (`serve.pipeline.RetryChains`).
    retry_key: str | None = None
    retry_count: int | None = None  # x-stainless-retry-count: 0 on the first attempt


class Response(NamedTuple):
    """One upstream's answer to an exchange, as the primary or as a shadow copy."""

    exchange_id: str
    role: Role
    upstream: str
    model_sent: str | None
    ts: float  # unix seconds, when the upstream request was sent
    status: int | None  # None when no HTTP response arrived
    error_kind: ErrorKind | None
    error: str | None  # a short reason, never a key
    ttfb_ms: float | None  # time to response headers
    ttft_ms: float | None  # time to the first content token (streams only)
    total_ms: float | None
    bytes: int  # body bytes received (decompressed)
    prompt_tokens: int | None  # None when the provider sent no usage
    completion_tokens: int | None
    total_tokens: int | None
    finish_reason: str | None
    stream_done: bool | None  # streams: saw `data: [DONE]` (or response.completed)
    shape: str | None  # JSON shape signature of the answer, see `answers.shape_of`
    tool_calls: str | None  # JSON list of {"name", "keys", "valid"} per tool call
    json_ok: bool | None  # JSON mode asked: did the content parse; else None
    text_sha256: str | None  # of the normalised answer text, for exact-match rates
    response_body: builtins.bytes | None  # under "full": the body (streams: reassembled JSON)
    response_sha256: str | None  # only under "hash"
    cached_tokens: int | None = None  # prompt tokens read from the provider's cache
    images: int | None = None  # images in an image answer; None for any other answer
    embedding_dims: int | None = None  # an embeddings answer's vector length


class Revision(NamedTuple):
    """A config revision coming into force (start-up or reload)."""

    revision: str
    ts: float
    rollback: bool
    split: str  # JSON of the effective default split
    path: str  # the config file


class StoredObject(NamedTuple):
    """An object an upstream made (a stored response, a file, a batch), for `affinity`."""

    id: str
    upstream: str
    ts: float


class GuardTrip(NamedTuple):
    """The guard took an upstream out of rotation (see `serve.guard`): when, and why."""

    upstream: str
    rule: str  # "error_rate" or "ttft_p90"
    figures: str  # the evidence, in words
    ts: float
    revision: str
