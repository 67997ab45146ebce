"""Which provider shape takes which call: one table, no sockets."""

from __future__ import annotations

import pytest

from proxy.adapters import registry
from proxy.adapters.abstrakt import ImagesToRun
from proxy.adapters.anthropic import ChatToMessages


def test_openai_takes_everything_as_it_is_but_anthropic_s_path() -> None:
    assert registry.translation("openai", "POST", "/chat/completions") is None
    assert registry.translation("openai", "GET", "/v1beta/models") is None
    with pytest.raises(registry.CannotServe):
        registry.translation("openai", "POST", "/messages")


def test_anthropic_speaks_messages_and_translates_chat() -> None:
    assert registry.translation("anthropic", "POST", "/messages") is None
    assert registry.translation("anthropic", "POST", "/messages/count_tokens") is None
    assert registry.translation("anthropic", "GET", "/models") is None
    assert isinstance(
        registry.translation("anthropic", "POST", "/chat/completions"), ChatToMessages
    )
    with pytest.raises(registry.CannotServe):
        registry.translation("anthropic", "POST", "/embeddings")


def test_abstrakt_runs_models_and_translates_image_generations() -> None:
    assert registry.translation("abstrakt", "POST", "/models/flux-pro/run") is None
    assert isinstance(registry.translation("abstrakt", "POST", "/images/generations"), ImagesToRun)
    with pytest.raises(registry.CannotServe):
        registry.translation("abstrakt", "POST", "/chat/completions")


@pytest.mark.parametrize(
    ("api", "path", "ok"),
    [
        ("openai", "/v1/messages", False),
        ("anthropic", "/v1/messages", True),
        ("anthropic", "/v1/chat/completions", True),
        ("anthropic", "/v1/embeddings", False),
        ("abstrakt", "/v1/images/generations", True),
        ("openai", "/v1beta", True),
    ],
)
def test_a_route_s_path_is_served_or_not(api: registry.Api, path: str, ok: bool) -> None:
    assert registry.serves_path(api, path) is ok
