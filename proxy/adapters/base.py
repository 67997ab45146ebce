"""What a provider-shape adapter is: pure translations, no I/O.

An app speaks OpenAI's API (or, to an Anthropic-shaped route, Anthropic's). When the upstream
serving a call speaks another shape, the plan step asks the adapter for the provider's
request (`Translation.request`), and the exchange hands the provider's answer back through
it (`Translation.answer`, or a `StreamTranslator` event by event), so the relay, the shadow
and the record all see the answer in the shape the app asked in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from proxy.errors import error_body
from proxy.sse import Event


class Unsupported(Exception):
    """The app's call uses something this provider shape cannot express: a clear 400."""


@dataclass(frozen=True, slots=True)
class AppCall:
    """The app's call as an adapter reads it."""

    method: str
    tail: str  # the path after /v1
    json: dict[str, Any] | None
    model: str | None  # the provider's id for the model, after the upstream's map
    stream: bool


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """The call as the provider is to get it."""

    method: str
    tail: str  # after the upstream's base_url
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # added to the upstream's own
    # How this call's answer is read, when that depends on what was asked (else the
    # translation's own `answer`).
    answer: Translation | None = None


@dataclass(frozen=True, slots=True)
class AppAnswer:
    """A provider's plain answer, as the app's SDK expects it."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # e.g. retry-after, kept
    # Files the answer only links to while the app asked for them inline (an image as
    # `b64_json`): the exchange fetches them and hands their bytes to `complete`.
    fetch: tuple[str, ...] = ()
    complete: Callable[[Mapping[str, bytes]], AppAnswer] | None = None


class StreamTranslator(Protocol):
    """Turns a provider's stream into the app's, event by event (it keeps state between)."""

    def event(self, ev: Event) -> list[Event]: ...

    def end(self) -> list[Event]:
        """What the app's stream still needs once the provider's ended (e.g. `[DONE]`)."""


class Translation(Protocol):
    """How one app call and its answer cross to a provider of another shape."""

    def request(self, call: AppCall) -> ProviderCall:
        """Raises `Unsupported` for what the provider cannot be asked."""

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> AppAnswer: ...

    def stream(self) -> StreamTranslator: ...


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> AppAnswer:
    """An error as the OpenAI SDKs read it (the one error body builder, `errors.error_body`)."""
    return AppAnswer(status, error_body(message, type_, code or type_))


def sse(obj: Any) -> Event:
    """An OpenAI-style `data:` event."""
    data = orjson.dumps(obj)
    return Event(b"data: " + data + b"\n\n", data, None)


DONE = Event(b"data: [DONE]\n\n", b"[DONE]", None)


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
