"""Measures one upstream call (timings, bytes, stream tally) and turns it into a `records.Response`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.config import BodyPolicy
from proxy.record import answers
from proxy.record.rows import ErrorKind, Reading, Response, Role
from proxy.tally import Kind, StreamTally


class Meter:
    __slots__ = (
        "_t0",
        "body",
        "bytes",
        "error",
        "error_kind",
        "head",
        "json_mode",
        "model_sent",
        "role",
        "status",
        "tally",
        "total_ms",
        "ts",
        "ttfb_ms",
        "ttft_ms",
        "upstream",
        "usage",
    )

    def __init__(self, role: Role, upstream: str, model_sent: str | None, json_mode: bool) -> None:
        self._t0 = time.perf_counter()
        self.ts = time.time()
        self.role = role
        self.upstream = upstream
        self.model_sent = model_sent
        self.json_mode = json_mode
        self.status: int | None = None
        self.error_kind: ErrorKind | None = None
        self.error: str | None = None
        self.ttfb_ms: float | None = None
        self.ttft_ms: float | None = None
        self.total_ms: float | None = None
        self.bytes = 0
        self.tally: StreamTally | None = None
        self.body: bytes | None = None
        # The start of a streamed answer, kept when something reads it (see `affinity`).
        self.head: bytearray | None = None
        self.usage: tuple[int, int] | None = None  # a plain answer's tokens, once read

    def tokens(self) -> tuple[int, int]:
        """Input and output tokens, 0 for what the answer didn't say: from the stream's tally,
        or read once from a plain body (the record, metrics and quotas each ask)."""
        tally = self.tally
        if tally is not None:
            return tally.prompt_tokens or 0, tally.completion_tokens or 0
        usage = self.usage
        if usage is None:
            usage = self.usage = answers.usage_in(self.body)
        return usage

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000.0

    def headers(self, status: int, stream: bool, reading: Reading = "all") -> None:
        """`reading`: how much of a stream is parsed: all of it (to be recorded), its counts
        only (first token, usage: for metrics, guard, quotas), or none of it."""
        self.ttfb_ms = self.elapsed_ms()
        self.status = status
        self.error_kind = answers.error_kind_for_status(status)
        if stream and reading != "none":
            self.tally = StreamTally(light=reading == "counts")

    def event(self, kind: Kind) -> None:
        if kind is Kind.CONTENT and self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def fail(self, kind: ErrorKind, reason: str) -> None:
        if kind == "client_disconnect" and self.tally is not None and self.tally.done:
            # The app had the whole stream: the SDKs close at `[DONE]`, and an upstream that
            # is slow to end its response after it does not make that a failure.
            return
        # The first failure is the cause; a later one (e.g. the client leaving) is a consequence.
        if self.error is None or self.error_kind in (None, "http_4xx", "http_5xx", "rate_limit"):
            self.error_kind = kind
            self.error = reason

    def done(self) -> None:
        if self.total_ms is None:
            self.total_ms = self.elapsed_ms()
        tally = self.tally
        if tally is not None and self.error_kind is None and not tally.done:
            self.error_kind = "broken_stream"
            self.error = tally.error or "stream ended without [DONE]"

    def record(self, exchange_id: str, policy: BodyPolicy, paired: bool = True) -> Response:
        """Everything the report needs; runs after the app has its answer.

        `paired`: a shadow or noise copy exists to compare this answer with. Shape, tool calls
        and the text hash only serve that comparison, and the shape walk is the dearest part
        of a record (~30 us), so an answer with nothing to compare against skips them.
        """
        usage = answers.usage_of(None)
        finish = shape = tool_calls = text_sha = images = dims = None
        json_ok = done = None
        body = self.body
        tally = self.tally
        if tally is not None:
            usage = tally.usage
            finish = tally.finish_reason
            done = tally.done
            text = tally.text
            json_ok = answers.json_ok(text, self.json_mode)
            if paired:
                shape = answers.stream_shape(tally)
                tool_calls = answers.tool_calls_json(tally.tool_calls)
                text_sha = answers.text_sha256(text) if text or not tally.tool_calls else None
            if policy != "none":
                body = answers.stream_body(tally)
        elif body:
            parsed: Any = _loads(body)
            if parsed is not None:
                usage = answers.usage_of(parsed)
                self.usage = (usage.prompt or 0, usage.completion or 0)
                images = answers.images_of(parsed)
                dims = answers.embedding_dims(parsed)
                if paired or self.json_mode:
                    answer = answers.answer_of(parsed)
                    finish = answer.finish_reason
                    json_ok = answers.json_ok(answer.text, self.json_mode)
                    if paired:
                        shape = answers.shape_of(parsed)
                        tool_calls = answers.tool_calls_json(answer.tool_calls)
                        text_sha = answers.text_sha256(answer.text)
                else:
                    finish = answers.finish_of(parsed)  # the text is read by nothing
        # Positional, in field order: with 23 keywords the call cost 2.2 us, this 0.8.
        return Response(
            exchange_id,
            self.role,
            self.upstream,
            self.model_sent,
            self.ts,
            self.status,
            self.error_kind,
            self.error,
            self.ttfb_ms,
            self.ttft_ms,
            self.total_ms,
            self.bytes,
            usage.prompt,  # prompt_tokens
            usage.completion,  # completion_tokens
            usage.total,  # total_tokens
            finish,  # finish_reason
            done,  # stream_done
            shape,
            tool_calls,
            json_ok,
            text_sha,  # text_sha256
            body if policy == "full" else None,  # response_body
            # response_sha256: under "full" the body itself is kept, and a digest of it would
            # cost each recorded answer ~7 us under load for a column nothing reads.
            answers.sha256_hex(body) if body is not None and policy == "hash" else None,
            usage.cached,  # cached_tokens
            images,
            dims,  # embedding_dims
        )


def refused(exchange_id: str, ts: float, status: int, reason: str, total_ms: float) -> Response:
    """The record of a request the sidecar answered itself, sent to no upstream."""
    return Response(
        exchange_id, "primary", "-", None, ts, status, "proxy", reason, None, None, total_ms, 0,
        None, None, None, None, None, None, None, None, None, None, None,
    )  # fmt: skip


def retry_of(headers: Mapping[str, str]) -> tuple[str | None, int | None]:
    """`Exchange.retry_key` and `retry_count` from the app's request headers (a
    case-insensitive mapping, as aiohttp's): the official SDKs send the same
    `Idempotency-Key` on every attempt of one POST, and `x-stainless-retry-count`. The key is
    kept as 16 hex digits of its SHA-256: enough to link attempts, nothing to replay."""
    key = headers.get("Idempotency-Key")
    count = headers.get("x-stainless-retry-count")
    retries = int(count) if count is not None and count.isdigit() and len(count) < 6 else None
    return (answers.sha256_hex(key.encode())[:16] if key else None), retries


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
