"""One pooled client session per upstream, with its URL, auth and headers built once."""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.request
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.config import UpstreamConfig
from proxy.errors import UpstreamTimeout, UpstreamUnreachable, parser_reason
from proxy.serve.rewrite import model_id_unmapper

_URL_CACHE = 256  # upstream URLs kept per client
# Non-SSE answers up to this size (decompressed) are read whole, to be measured; larger ones
# are piped to the app as they come.
BUFFER_LIMIT = 32 * 1024 * 1024
MIN_REDACTED_KEY = 8
REDACTED = b"[key redacted by the sidecar]"


def push_deadline(timer: asyncio.Timeout, armed: float, now: float, idle: float) -> float:
    """Move a stream's idle deadline on, at most once per tenth of `idle`; returns when it last moved.

    Rescheduling on every chunk cost 6% of a stream's CPU. This way a stream is cut after
    between 0.9 and 1.0 times `idle` of silence.
    """
    if now - armed >= idle * 0.1:
        timer.reschedule(now + idle)
        return now
    return armed


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(base_url: str, setting: str) -> URL | None:
    """The proxy an upstream's connections go through, or None for direct.

    "env" reads the variables curl does (HTTPS_PROXY for https://, HTTP_PROXY for http://,
    ALL_PROXY for either, in either case; NO_PROXY exempts hosts and domains), except that a
    loopback host is always direct: a proxy variable set for the outside world must not take
    the sidecar's local fakes or gateways with it.
    """
    if setting == "none":
        return None
    if setting != "env":
        return URL(setting)
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()  # lower-case names win, as with curl
    found = proxies.get(parts.scheme) or proxies.get("all")
    if not found or urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    return URL(found if "://" in found else f"http://{found}")


async def read_upto(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """An answer's body, decompressed, and True; or, once it passes `limit`, what was read so
    far and False. A length header does not bound it: a small gzip body can inflate to
    gigabytes, and a chunked one may never end."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), True


class UpstreamClient:
    """Lives as long as its settings do: a reload that leaves them alone keeps the pool."""

    def __init__(self, name: str, cfg: UpstreamConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.base = cfg.base_url
        parts = urlsplit(cfg.base_url)
        self.host = parts.netloc
        self.origin = f"{parts.scheme}://{parts.netloc}"  # for paths outside /v1/ (see routes)
        self.api = cfg.api
        self.models = cfg.models
        # Its model list and model objects, with the ids the app asks for (see `rewrite`).
        self.unmap_ids = model_id_unmapper(cfg.models)
        self._urls: dict[tuple[str, str, bool], URL] = {}
        self.inject_usage = cfg.inject_usage
        self.proxy = proxy_for(cfg.base_url, cfg.proxy)
        # For messages: where the proxy is, never its credentials.
        self.via = "" if self.proxy is None else f" via proxy {self.proxy.host}:{self.proxy.port}"
        self.first_byte = cfg.timeouts.first_byte
        self.idle = cfg.timeouts.idle
        headers = dict(cfg.headers)
        self._key: bytes | None = None
        if cfg.api_key is not None:
            key = cfg.api_key.get_secret_value()
            # Shorter than this it is a placeholder, and replacing it could mangle a body.
            self._key = key.encode() if len(key) >= MIN_REDACTED_KEY else None
            header = cfg.key_header
            headers[header] = f"Bearer {key}" if header == "authorization" else key
        self.headers = headers
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def scrub(self, status: int, body: bytes) -> bytes:
        """An error answer that quotes the key the sidecar sent (some gateways echo it whole in
        a 401) has it replaced: the app never had that key, and the record must not keep it."""
        key = self._key
        if key is None or status < 400 or key not in body:
            return body
        return body.replace(key, REDACTED)

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.cfg.pool.size,
                    keepalive_timeout=self.cfg.pool.keepalive,
                    ttl_dns_cache=300,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self.cfg.timeouts.connect
                ),
                auto_decompress=True,
                trust_env=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def url(self, tail: str, query: str, rooted: bool = False) -> URL:
        # An app calls a handful of paths: their URLs are built once (yarl parses the string
        # each time, ~4 us). Bounded, so that ids in paths or queries can't grow it forever.
        key = (tail, query, rooted)
        url = self._urls.get(key)
        if url is None:
            # encoded=True keeps the app's own percent-encoding byte for byte.
            base = self.origin if rooted else self.base
            text = f"{base}{tail}?{query}" if query else f"{base}{tail}"
            url = URL(text, encoded=True)
            if len(self._urls) < _URL_CACHE:
                self._urls[key] = url
        return url

    async def send(
        self,
        method: str,
        tail: str,
        query: str,
        headers: CIMultiDict[str],
        body: bytes,
        rooted: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response headers; connection failures become `UpstreamUnreachable`.

        `headers` already carry this upstream's key (see `plan`). The caller owns the
        first-byte deadline (it covers this call).
        """
        try:
            return await self.session.request(
                method,
                self.url(tail, query, rooted),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                proxy=self.proxy,
            )
        except aiohttp.ServerTimeoutError as e:
            raise UpstreamTimeout(
                f"upstream {self.name!r} ({self.host}){self.via}: connect timed out"
            ) from e
        except aiohttp.ClientConnectorError as e:
            raise UpstreamUnreachable(
                f"upstream {self.name!r} ({self.host}){self.via} is unreachable: "
                f"{e.os_error.strerror or e.os_error}"
            ) from e
        except aiohttp.ClientHttpProxyError as e:
            raise UpstreamUnreachable(
                f"upstream {self.name!r} ({self.host}){self.via}: the proxy answered "
                f"{e.status} {e.message}"
            ) from e
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            raise UpstreamUnreachable(
                f"upstream {self.name!r} ({self.host}){self.via} closed the connection before "
                f"answering: {type(e).__name__}"
            ) from e
        except aiohttp.ClientResponseError as e:
            raise UpstreamUnreachable(
                f"upstream {self.name!r} ({self.host}) sent a malformed response: "
                f"{parser_reason(e.message)}"
            ) from e

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def close(self, grace: float = 0.0) -> None:
        """Close once in-flight requests ended, or after `grace` seconds, whichever is first."""
        if grace > 0 and self.in_flight:
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None
