"""Gateways with one known defect each: an aiohttp app on 127.0.0.1 in front of a fake provider
that passes every call through but the one it gets wrong."""

from __future__ import annotations

from typing import Final, Literal

import aiohttp
import orjson
from aiohttp import web

from proxy.fakes.provider import FakeProvider

Defect = Literal["stream_without_usage", "html_for_wrong_model", "echoes_key"]
HTML: Final = b"<html><body><h1>500 Internal Server Error</h1><p>nginx</p></body></html>"


class Gateway:
    def __init__(self, fake: FakeProvider, defect: Defect, key: str) -> None:
        self.fake = fake
        self.defect = defect
        self.key = key
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.defect == "echoes_key" and sent != self.key:
            message = f"Incorrect API key provided: {sent}. Find your key in the dashboard."
            error = {"error": {"message": message, "type": "invalid_request_error"}}
            return web.json_response(error, status=401)
        if self.defect == "html_for_wrong_model" and body:
            model = orjson.loads(body).get("model")
            if model not in self.fake.models:
                return web.Response(status=500, body=HTML, content_type="text/html")
        if self._session is None:
            raise RuntimeError("not started")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        url = self.fake.url_root + request.path
        async with self._session.request(request.method, url, data=body, headers=headers) as r:
            data = await r.read()
            ctype = r.headers.get("content-type", "application/json")
        if self.defect == "stream_without_usage" and ctype.startswith("text/event-stream"):
            data = _without_usage(data)
        return web.Response(status=r.status, body=data, headers={"content-type": ctype})


def _without_usage(stream: bytes) -> bytes:
    """A chat stream less its usage chunk (a Responses stream keeps its usage)."""
    kept = []
    for event in stream.split(b"\n\n"):
        if event.startswith(b"data: {"):
            chunk = orjson.loads(event.removeprefix(b"data: "))
            if chunk.get("object") == "chat.completion.chunk" and chunk.get("usage"):
                continue
        if event:
            kept.append(event + b"\n\n")
    return b"".join(kept)
