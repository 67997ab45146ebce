"""The floor the benchmark compares the sidecar against: a bare aiohttp passthrough proxy.

What any aiohttp reverse proxy must do and nothing more: aiohttp's low-level server and
one pooled ClientSession on uvloop; the body is read and sent on as bytes (no JSON parse,
no model mapping, no routing, no record); the Authorization header is swapped for the
upstream's key; the answer is relayed with `readany()`/`write()`, so a stream goes chunk by
chunk. It answers `/_proxy/stats` with a request count, the one thing the bench reads.

    python scripts/bare_proxy.py UPSTREAM_BASE_URL API_KEY   (prints "listening on URL")

Not part of the product and not for use: no timeouts, no error shaping, no limits.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import orjson
import uvloop
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself.
_DROP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "host", "content-length", "authorization", "accept-encoding",
        "content-encoding",
    }
)  # fmt: skip


async def main(base: str, key: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256),
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )
    auth = f"Bearer {key}"
    base = base.rstrip("/").removesuffix("/v1")
    served = 0

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal served
        if request.path == "/_proxy/stats":
            stats = {"requests": {"a": served}, "shadow": {"in_flight": 0}, "records": None}
            return web.Response(body=orjson.dumps(stats), content_type="application/json")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        headers["Authorization"] = auth
        async with session.request(
            request.method, base + request.rel_url.raw_path_qs, data=body, headers=headers
        ) as upr:
            out = {k: v for k, v in upr.headers.items() if k.lower() not in _DROP}
            out["x-sidecar-upstream"] = "a"  # the bench checks that a proxy answered
            resp = web.StreamResponse(status=upr.status, headers=out)
            await resp.prepare(request)
            while chunk := await upr.content.readany():
                await resp.write(chunk)
            await resp.write_eof()
        served += 1
        return resp

    server = web.Server(handle)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, "127.0.0.1", 0, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    srv.close()
    await server.shutdown(1.0)
    await session.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    uvloop.run(main(sys.argv[1], sys.argv[2]))
