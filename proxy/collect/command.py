"""`python -m proxy collect --from URL ... --out DIR`: each sidecar's recording, downloaded.

Each sidecar makes a consistent snapshot (`GET /_proxy/recording`, serve/snapshot.py); this
command saves it as DIR/<host>-<port>-<UTC time>.db, opens it as a recording, and prints
what it holds. A sidecar that fails is named with its reason, the others are still
collected, and the exit status says that one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from proxy.record.schema import StoreError, open_readonly

PATH: Final = "/_proxy/recording"
AT_ONCE: Final = 8  # sidecars downloaded from at the same time
CHUNK: Final = 1 << 20
# A snapshot of a big recording takes a while before its first byte (seconds a GB); past
# five minutes of silence the pod or the port-forward is taken as gone.
TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)


class CollectError(Exception):
    """One sidecar's recording could not be collected; the message says why."""


@dataclass(frozen=True, slots=True)
class Collected:
    source: str
    path: Path
    size: int
    exchanges: int
    first: float | None
    last: float | None


def base_url(source: str) -> str:
    """`host:port` or `http(s)://host:port[/...]` as the sidecar's base URL."""
    url = source if "://" in source else f"http://{source}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--from {source!r}: not a sidecar address (http://HOST:PORT)")
    return f"{parts.scheme}://{parts.netloc}"


def file_name(source: str, at: float) -> str:
    parts = urlsplit(base_url(source))
    host = re.sub(r"[^A-Za-z0-9._-]", "_", parts.hostname or "sidecar")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}-{port}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}.db"


def _error_message(status: int, body: bytes) -> str:
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace").strip() or "no message"
    if status == 401:
        message += " (pass the sidecar's key with --key-env VAR)"
    return f"HTTP {status}: {message}"


def inspect(path: Path) -> tuple[int, float | None, float | None]:
    """Exchanges and time span of a downloaded file; `StoreError` if it is no recording."""
    conn = open_readonly(str(path))
    try:
        count, first, last = conn.execute(
            "SELECT count(*), min(ts), max(ts) FROM exchanges"
        ).fetchone()
    finally:
        conn.close()
    return int(count), first, last


async def _download(session: aiohttp.ClientSession, source: str, out: Path) -> Collected:
    url = base_url(source) + PATH
    at = time.time()
    target = out / file_name(source, at)
    part = target.with_name(target.name + ".part")
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                raise CollectError(_error_message(resp.status, await resp.read()))
            f = await asyncio.to_thread(open, part, "wb")
            try:
                size = 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(f.write, chunk)
                    size += len(chunk)
            finally:
                await asyncio.to_thread(f.close)
            if resp.content_length is not None and size != resp.content_length:
                raise CollectError(f"cut short: {size} of {resp.content_length} bytes")
        count, first, last = await asyncio.to_thread(inspect, part)
        await asyncio.to_thread(os.replace, part, target)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CollectError(f"cannot fetch {url}: {e or type(e).__name__}") from e
    except StoreError as e:
        raise CollectError(f"not a readable recording: {e}") from e
    finally:
        await asyncio.to_thread(part.unlink, missing_ok=True)
    return Collected(source, target, size, count, first, last)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def describe(got: Collected) -> str:
    span = f"{_when(got.first)} .. {_when(got.last)} UTC" if got.exchanges else "no exchanges"
    return (
        f"{got.source}: {got.exchanges:,} exchanges, {span}, {got.size / 1e6:.1f} MB -> {got.path}"
    )


async def collect(sources: list[str], out: Path, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(source: str) -> Collected | CollectError:
        async with gate:
            try:
                return await _download(session, source, out)
            except CollectError as e:
                return e

    async with aiohttp.ClientSession(headers=headers, timeout=TIMEOUT) as session:
        results = await asyncio.gather(*(one(s) for s in sources))
    failed = 0
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, CollectError):
            failed += 1
            print(f"{source}: failed: {result}", file=sys.stderr)
        else:
            print(describe(result))
    total = len(sources) - failed
    print(f"collected {total} of {len(sources)} recordings into {out}")
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            print(f"error: --key-env {args.key_env}: that variable is not set", file=sys.stderr)
            return 2
    try:
        for source in args.sources:
            base_url(source)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --out {args.out}: cannot make the directory: {e.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(collect(args.sources, out, key))
