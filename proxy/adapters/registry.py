"""Which provider shape takes which app call, and how: the one place adapters are registered.

`api: openai` (the default) is OpenAI's own shape: calls pass through as they are. Another
shape passes through the calls it speaks natively and translates the ones it can take from an
OpenAI app; any other call it cannot serve.
"""

from __future__ import annotations

from typing import Final, Literal

from proxy.adapters.abstrakt import ImagesToRun
from proxy.adapters.anthropic import ChatToMessages
from proxy.adapters.base import Translation

Api = Literal["openai", "anthropic", "abstrakt"]
APIS: Final[tuple[Api, ...]] = ("openai", "anthropic", "abstrakt")

_CHAT_TO_MESSAGES: Final = ChatToMessages()
_IMAGES_TO_RUN: Final = ImagesToRun()
# (method, path after /v1) an adapter translates, per provider shape.
_TRANSLATED: Final[dict[Api, dict[tuple[str, str], Translation]]] = {
    "openai": {},
    "anthropic": {("POST", "/chat/completions"): _CHAT_TO_MESSAGES},
    "abstrakt": {("POST", "/images/generations"): _IMAGES_TO_RUN},
}


def _native(api: Api, method: str, tail: str) -> bool:
    """Calls the provider's own API takes as the app sent them."""
    if api == "openai":
        return not _under(tail, "/messages")  # Anthropic's path: no OpenAI provider has it
    if api == "anthropic":
        return _under(tail, "/messages") or (method == "GET" and _under(tail, "/models"))
    return _under(tail, "/models") and tail.endswith("/run")  # abstrakt


def _under(tail: str, prefix: str) -> bool:
    return tail == prefix or tail.startswith(prefix + "/")


class CannotServe(Exception):
    """This upstream's provider shape has no way to take the call."""


def translation(api: Api, method: str, tail: str) -> Translation | None:
    """How a call reaches a provider of shape `api`: None, as it is; raises `CannotServe`."""
    found = _TRANSLATED[api].get((method, tail))
    if found is not None:
        return found
    if _native(api, method, tail):
        return None
    raise CannotServe(f"{method} /v1{tail}")


def serves(api: Api, method: str, tail: str) -> bool:
    return (method, tail) in _TRANSLATED[api] or _native(api, method, tail)


def serves_path(api: Api, prefix: str) -> bool:
    """Whether a route for `prefix` (e.g. "/v1/messages") can be served by this shape at all:
    what `check` and a load ask of a route's upstreams."""
    tail = prefix[3:] if prefix.startswith("/v1/") else prefix
    return any(serves(api, m, tail) for m in ("POST", "GET"))
