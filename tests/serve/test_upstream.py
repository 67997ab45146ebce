"""Upstream helpers: header forwarding and the stream idle deadline."""

from __future__ import annotations

import asyncio

from multidict import CIMultiDict

from proxy.config import UpstreamConfig
from proxy.serve.headers import REQUEST_DROP, forward_headers
from proxy.serve.upstream import UpstreamClient, push_deadline


def test_hop_by_hop_and_credentials_are_dropped_whatever_their_case() -> None:
    out = forward_headers(
        CIMultiDict(
            {
                "Authorization": "Bearer sk-app",
                "X-Api-Key": "k",
                "Connection": "keep-alive, X-Private",
                "X-Private": "1",
                "Content-Length": "3",
                "OpenAI-Beta": "assistants=v2",
            }
        ),
        REQUEST_DROP,
    )
    assert dict(out) == {"OpenAI-Beta": "assistants=v2"}


async def test_idle_deadline_moves_at_most_once_per_tenth_of_idle() -> None:
    async with asyncio.timeout(None) as timer:
        armed = push_deadline(timer, -10.0, 100.0, 10.0)
        assert armed == 100.0 and timer.when() == 110.0
        assert push_deadline(timer, armed, 100.5, 10.0) == 100.0  # too soon: left alone
        assert timer.when() == 110.0
        armed = push_deadline(timer, armed, 101.0, 10.0)
        assert armed == 101.0 and timer.when() == 111.0
        timer.reschedule(None)
        await asyncio.sleep(0)


def test_upstream_urls_keep_the_apps_encoding_and_are_built_once() -> None:
    up = UpstreamClient("u", UpstreamConfig(base_url="http://127.0.0.1:9/v1", api_key="k"))
    url = up.url("/models/a%2Fb/run", "x=1%202")
    assert str(url) == "http://127.0.0.1:9/v1/models/a%2Fb/run?x=1%202"
    assert up.url("/models/a%2Fb/run", "x=1%202") is url
    assert str(up.url("/chat/completions", "")) == "http://127.0.0.1:9/v1/chat/completions"
    # Paths that differ every time (ids) are still answered, without growing the cache forever.
    for i in range(1000):
        assert up.url(f"/files/{i}", "").path == f"/v1/files/{i}"
    assert len(up._urls) <= 256
