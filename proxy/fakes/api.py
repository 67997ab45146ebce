"""What a provider's API shape is to the fake server, and the SSE framing the shapes share.

The server (`provider.py`) owns the behaviours: faults, latency, pacing, gzip, ids on the wire.
A shape owns its paths, its bodies and the wording of its refusals: `openai_api.py` is OpenAI's,
`anthropic_api.py` Anthropic's Messages API, `abstrakt_api.py` an image API with its own error
codes. Another provider's API is one more module whose class fits `Api`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson

# Leading whitespace stays with its word, as in OpenAI's tokens (" world"); trailing whitespace
# rides on the last word so that the pieces always join back into the whole text.
_WORD: Final = re.compile(r"\s*\S+(?:\s+$)?")
DONE: Final = b"data: [DONE]\n\n"


class Style(Protocol):
    """What shapes a reply, as a fake's `Behaviour` holds it."""

    @property
    def variant(self) -> int: ...
    @property
    def chunks(self) -> int | None: ...
    @property
    def tool_calls(self) -> bool: ...
    @property
    def usage(self) -> bool: ...
    @property
    def latency(self) -> float: ...
    @property
    def tool_json(self) -> Literal["valid", "broken"]: ...
    @property
    def refuse_tools(self) -> bool: ...
    @property
    def embedding_dims(self) -> int | None: ...
    @property
    def quality(self) -> Literal["good", "worse"]: ...


@dataclass(frozen=True, slots=True)
class Ask:
    """A request as a shape reads it: the server has read the body and tried it as JSON."""

    method: str
    path: str  # percent-decoded, as the router sees it
    json: Any | None  # None when the body is empty or not JSON
    parsed: bool  # the body was JSON, of whatever type
    body: bytes = b""  # as received, for the shapes that read forms
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive on the server


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed reply: its SSE events in order; `done` ends it with OpenAI's `data: [DONE]`.

    `trailing`: how many of the last events (the usage chunk) follow the one before without a
    pause. Generating tokens takes time, reporting usage afterwards does not: OpenAI sends the
    usage chunk and `[DONE]` right after the finish chunk.
    """

    events: Sequence[bytes]
    done: bool
    trailing: int = 0
    first: int = 0  # the first event with generated content: `first_token_delay` waits before it


@dataclass(frozen=True, slots=True)
class Body:
    """A plain answer that is not JSON, or that carries headers of its own."""

    data: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error answer in the shape's wording: its status, JSON body and extra headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Api(Protocol):
    """One provider's API, for one fake: its models, its key and its ids are the shape's to keep."""

    @property
    def paths(self) -> Sequence[str]:
        """Exact paths the server routes before its catch-all (only spares a regex match)."""
        ...

    @property
    def request_id_header(self) -> str:
        """The response header that carries the request's id (`x-request-id`, `request-id`)."""
        ...

    def unauthorized(self, headers: Mapping[str, str]) -> Refusal | None:
        """The refusal of a request without the fake's key; None when it may pass."""
        ...

    def unreadable(self) -> Refusal:
        """The refusal of a body that does not decode (a content-encoding gone wrong)."""
        ...

    def bad_request(self, message: str) -> Refusal:
        """A 400 for a problem only the server sees, such as a bad pacing header."""
        ...

    def failure(self, status: int) -> Refusal:
        """The answer with an error `status` that a fault forces or the error rate draws."""
        ...

    def stream_failure(self, status: int) -> bytes:
        """The event that ends a stream breaking off with `status` after it began."""
        ...

    def reply(self, ask: Ask, style: Style) -> bytes | Body | Stream | Refusal:
        """The answer to `ask`; bytes are a JSON body."""
        ...


# --- SSE framing -------------------------------------------------------------------------------


def data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def event(obj: dict[str, Any]) -> bytes:
    kind: str = obj["type"]
    return b"event: " + kind.encode() + b"\n" + data(obj)


def truncated(frame: bytes) -> bytes:
    """The event cut halfway through its JSON, still framed as a complete event."""
    start = frame.index(b"data: ") + 6
    return frame[: (start + len(frame) - 2) // 2] + b"\n\n"


def pieces(text: str, count: int | None) -> list[str]:
    """Stream pieces that join back into `text`: words, grouped or split to `count` pieces."""
    words = _WORD.findall(text) or ([text] if text else [])
    if count is None or count == len(words):
        return words
    if count < len(words):
        k = len(words)
        return ["".join(words[i * k // count : (i + 1) * k // count]) for i in range(count)]
    n = min(count, len(text))
    return [text[i * len(text) // n : (i + 1) * len(text) // n] for i in range(n)]
