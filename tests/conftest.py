"""Fixtures: real fake providers and the real sidecar on 127.0.0.1, the official SDK as the app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiohttp import web
from hypothesis import settings

from proxy import config as config_mod
from proxy.fakes.provider import FakeProvider
from proxy.serve.app import Sidecar

# Property tests draw the same examples on every run and have no deadline: CI must fail on a
# behaviour, never on a loaded machine's timing or a rare draw (a fresh clone once hit
# hypothesis's FlakyStrategyDefinition). HYPOTHESIS_PROFILE=default searches afresh locally.
settings.register_profile("sidecar", derandomize=True, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sidecar"))

OLD_KEY = "sk-test-old-provider-key-0000"
NEW_KEY = "sk-test-new-provider-key-1111"
CLIENT_KEY = "sk-test-client-key-should-never-travel"


@pytest.fixture
async def old() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(
        name="old", api_key=OLD_KEY, models=("gpt-4o-mini", "text-embedding-3-small", "flux")
    )
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def new() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(
        name="new",
        api_key=NEW_KEY,
        models=("prov/gpt-4o-mini", "prov/text-embedding-3-small", "black-forest/flux"),
    )
    await fake.start()
    yield fake
    await fake.close()


def base_config(old: FakeProvider, new: FakeProvider, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstreams": {
            "old": {"base_url": old.url, "api_key": OLD_KEY},
            "new": {
                "base_url": new.url,
                "api_key": NEW_KEY,
                "models": {
                    "gpt-4o-mini": "prov/gpt-4o-mini",
                    "text-embedding-3-small": "prov/text-embedding-3-small",
                    "flux": "black-forest/flux",
                },
            },
        },
        "primary": "old",
        "split": {"old": 100, "new": 0},
        "record": {"enabled": False},
        "log": {"requests": False},
    }
    cfg.update(overrides)
    return cfg


SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def factory(
        cfg: dict[str, Any], *, watch: bool = False, name: str = "config.yaml"
    ) -> Sidecar:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        parsed, text = config_mod.load(str(path))
        sidecar = Sidecar(parsed, text, str(path), watch=watch)
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield factory
    for sidecar in started:
        await sidecar.stop()


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[Sidecar], openai.AsyncOpenAI]]:
    clients: list[openai.AsyncOpenAI] = []

    def make(sidecar: Sidecar) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=sidecar.url,
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=20,
            # Plain http to 127.0.0.1: skipping the TLS context saves 0.1 s per client.
            http_client=openai.DefaultAsyncHttpxClient(verify=False),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def send_in_pieces(
    request: web.Request, data: bytes, content_type: str, piece: int
) -> web.StreamResponse:
    """Answer with `data` in writes of `piece` bytes, chunked: a provider streaming its answer."""
    resp = web.StreamResponse(headers={"content-type": content_type})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(data), piece):
        await resp.write(data[i : i + piece])
    await resp.write_eof()
    return resp


async def serve(path: str, handler: Any) -> tuple[web.AppRunner, int]:
    """A hand-written upstream on 127.0.0.1, for answers the fake provider does not give."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]
