"""Upstreams behind an HTTP proxy: `proxy: env` reads the variables curl does, or a URL is given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from yarl import URL

from proxy.fakes.provider import FakeProvider
from proxy.serve.upstream import proxy_for
from tests.conftest import OLD_KEY, base_config

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 that sends every `fake.test` host to 127.0.0.1."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (absolute URL, Proxy-Authorization)
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.ServerRunner(web.Server(self._handle))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        target = URL(request.raw_path)  # absolute-form: http://fake.test:PORT/v1/...
        self.seen.append((str(target), request.headers.get("Proxy-Authorization")))
        assert self._session is not None and target.host == "fake.test"
        headers = {k: v for k, v in request.headers.items() if not k.lower().startswith("proxy-")}
        async with self._session.request(
            request.method,
            target.with_host("127.0.0.1"),
            headers=headers,
            data=await request.read(),
        ) as upr:
            resp = web.StreamResponse(status=upr.status, headers=upr.headers)
            await resp.prepare(request)
            async for chunk in upr.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    fp = ForwardProxy()
    await fp.start()
    yield fp
    await fp.close()


def behind(fake: FakeProvider) -> str:
    return fake.url.replace("127.0.0.1", "fake.test")


def test_env_is_read_as_curl_reads_it_and_loopback_stays_direct(clean_env) -> None:
    assert proxy_for("https://api.openai.com/v1", "env") is None
    clean_env.setenv("HTTPS_PROXY", "http://corp:3128")
    clean_env.setenv("http_proxy", "corp-plain:8080")  # no scheme: http:// is meant
    assert proxy_for("https://api.openai.com/v1", "env") == URL("http://corp:3128")
    assert proxy_for("http://gateway.example/v1", "env") == URL("http://corp-plain:8080")
    for local in ("http://127.0.0.1:9101/v1", "http://localhost:9101/v1", "http://[::1]:1/v1"):
        assert proxy_for(local, "env") is None
    clean_env.setenv("NO_PROXY", "internal.example,.corp.example")
    assert proxy_for("https://llm.internal.example/v1", "env") is None
    assert proxy_for("https://gw.corp.example/v1", "env") is None
    assert proxy_for("https://api.openai.com/v1", "env") == URL("http://corp:3128")
    assert proxy_for("https://api.openai.com/v1", "none") is None
    assert proxy_for("https://api.openai.com/v1", "http://u:p@q:1") == URL("http://u:p@q:1")


async def test_requests_and_streams_go_through_the_configured_proxy(
    old, new, make_sidecar, sdk, forward_proxy, clean_env
) -> None:
    cfg = base_config(old, new)
    proxy_url = f"http://alice:s3cret@127.0.0.1:{forward_proxy.port}"
    cfg["upstreams"]["old"] = {"base_url": behind(old), "api_key": OLD_KEY, "proxy": proxy_url}
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == answer.choices[0].message.content
    assert [url.split("/v1")[0] for url, _ in forward_proxy.seen] == [
        f"http://fake.test:{URL(old.url).port}"
    ] * 2
    assert {auth for _, auth in forward_proxy.seen} == {
        aiohttp.encode_basic_auth("alice", "s3cret")
    }
    # The upstream got its own key, and no proxy credentials.
    for received in old.received:
        assert received.headers["authorization"] == f"Bearer {OLD_KEY}"
        assert "proxy-authorization" not in received.headers


async def test_env_proxy_is_used_and_a_dead_one_is_a_clear_502(
    old, new, make_sidecar, sdk, forward_proxy, clean_env
) -> None:
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{forward_proxy.port}")
    # As a user would: else the app's own SDK (httpx reads these too) would proxy the sidecar.
    clean_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    cfg = base_config(old, new)
    cfg["upstreams"]["old"] = {"base_url": behind(old), "api_key": OLD_KEY}  # proxy: env
    sc = await make_sidecar(cfg)
    await sdk(sc).models.list()
    assert len(forward_proxy.seen) == 1
    # The loopback upstream ("new", at 127.0.0.1) never goes through the proxy.
    cfg["split"] = {"old": 0, "new": 100}
    direct = await make_sidecar(cfg, name="direct.yaml")
    await sdk(direct).models.list()
    assert len(forward_proxy.seen) == 1 and new.received

    await forward_proxy.close()  # the proxy goes away
    with pytest.raises(openai.APIStatusError) as e:
        await sdk(sc).models.list()
    assert e.value.status_code == 502
    message = e.value.body["message"]  # type: ignore[index]
    assert f"via proxy 127.0.0.1:{forward_proxy.port}" in message
