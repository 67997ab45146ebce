"""Calls the sidecar makes itself (a judge, a smoke test, a replay), through the same exchange
as an app's call: the upstream's key, model map, adapter, deadlines, pool and error kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from multidict import CIMultiDict

from proxy.adapters import registry
from proxy.adapters.base import AppCall, Unsupported
from proxy.errors import BadRequest, NotImplementedHere
from proxy.record.meter import Meter
from proxy.record.rows import Role
from proxy.serve.exchange import Failure, exchange
from proxy.serve.plan import Attempt
from proxy.serve.upstream import UpstreamClient

MAX_KEPT = 8 * 1024 * 1024  # of a streamed answer, kept for the caller to read


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: the status the app would have seen, the body in OpenAI's shape (a
    stream's raw events, joined), and the meter with timings, usage and the error kind."""

    status: int | None
    body: bytes
    meter: Meter
    error: str | None  # the sidecar's reason, when no answer (or a broken one) came


def attempt(
    up: UpstreamClient, method: str, tail: str, body: Mapping[str, Any], role: Role = "primary"
) -> Attempt:
    """An attempt for `up` of an OpenAI-shaped call the sidecar makes; `body["model"]` is the
    app's id, mapped by the upstream's `models:` as an app's would be. Raises `ErrorAnswer`
    when the upstream's shape cannot take it."""
    obj = dict(body)
    model = obj.get("model")
    sent = up.models.get(model, model) if isinstance(model, str) else None
    if sent is not None:
        obj["model"] = sent
    try:
        translation = registry.translation(up.api, method, tail)
    except registry.CannotServe as e:
        raise NotImplementedHere(f"upstream {up.name!r} (api: {up.api}) cannot serve {e}") from None
    headers: CIMultiDict[str] = CIMultiDict({"content-type": "application/json"})
    stream = obj.get("stream") is True
    raw = orjson.dumps(obj)
    if translation is not None:
        try:
            asked = translation.request(AppCall(method, tail, obj, sent, stream))
        except Unsupported as e:
            raise BadRequest(f"upstream {up.name!r} (api: {up.api}): {e}") from None
        method, tail, raw = asked.method, asked.tail, asked.body
        for name, value in asked.headers.items():
            headers.setdefault(name, value)
    headers.update(up.headers)
    return Attempt(
        role, up, method, tail, "", headers, raw, sent, False, "all", False, None, False,
        translation, False,
    )  # fmt: skip


class _Keep:
    """A sink that keeps the answer for the caller."""

    relays = False  # plain answers are read whole, streams end at [DONE]
    stop_at_done = True

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.failure: Failure | None = None

    def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.body[:] = body

    async def begin(self, status: int, headers: Mapping[str, str], is_sse: bool) -> None:
        self.status = status

    async def write(self, data: bytes) -> None:
        if len(self.body) + len(data) <= MAX_KEPT:
            self.body += data

    async def end(self) -> None:
        pass

    async def fail(self, failure: Failure) -> None:
        self.failure = failure
        if not failure.midway:
            self.status = failure.error.status


async def send(at: Attempt) -> Answer:
    """Make the call; never raises for the upstream's failures (see `Answer.error`)."""
    up = at.upstream
    meter = Meter(at.role, up.name, at.model_sent, at.json_mode)
    keep = _Keep()
    up.enter()
    try:
        await exchange(at, meter, keep)
    finally:
        up.leave()
        meter.done()
    error = (
        meter.error
        if meter.error_kind not in (None, "http_4xx", "http_5xx", "rate_limit")
        else None
    )
    return Answer(keep.status, bytes(keep.body), meter, error)
