"""What the operator reads off the sidecar's admin endpoints: `/_proxy/health` and
`/_proxy/stats`, cut down to the parts the story tells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.demo.errors import DemoError


@dataclass(frozen=True, slots=True)
class Health:
    """The parts of `GET /_proxy/health` the story tells."""

    revision: str
    rollback: bool
    split: str  # "old 90% / new 10%"
    reload_error: str | None


@dataclass(frozen=True, slots=True)
class Counts:
    """The parts of `GET /_proxy/stats` the story tells; counters since the sidecar started."""

    shadow_sent: int  # shadow and noise copies
    shadow_failed: int
    records_written: int
    records_dropped: int


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise DemoError(f"GET {url} answered {resp.status}: {(await resp.text())[:200]}")
        return orjson.loads(await resp.read())


async def health(session: aiohttp.ClientSession, admin: str) -> Health:
    h = await _get(session, f"{admin}/_proxy/health")
    split = " / ".join(f"{name} {share:.0%}" for name, share in h["split"].items())
    err = h.get("last_reload_error")
    return Health(h["revision"], bool(h["rollback"]), split, err["message"] if err else None)


async def counts(session: aiohttp.ClientSession, admin: str) -> Counts:
    s = await _get(session, f"{admin}/_proxy/stats")
    records = s.get("records") or {}
    return Counts(
        shadow_sent=int(s["shadow"]["sent"]),
        shadow_failed=int(s["shadow"]["failed"]),
        records_written=int(records.get("written", 0)),
        records_dropped=int(records.get("dropped", 0)),
    )
