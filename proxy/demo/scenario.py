"""The story: the canary half, split and shadowed; the rollback flipped while requests are in
flight; the rolled-back half. Told on stdout as it happens."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import openai

from proxy.demo.admin import Health, counts, health
from proxy.demo.config_file import set_rollback
from proxy.demo.errors import DemoError
from proxy.demo.together import both
from proxy.demo.traffic import APP_KEY, CONCURRENCY, KINDS, Call, Outcome, Traffic

RELOAD_TIMEOUT: Final = 10.0  # the sidecar polls its config four times a second


def say(text: str = "") -> None:
    """Progress on stdout, flushed per line so that a pipe sees it as it happens."""
    print(text, flush=True)


@dataclass(frozen=True, slots=True)
class Flip:
    """The rollback as the operator saw it."""

    seconds: float  # from the rename until /_proxy/health showed the new revision
    in_flight: int  # requests running at the moment of the write
    health: Health


async def flip_when(
    handed_out: asyncio.Event,
    traffic: Traffic,
    session: aiohttp.ClientSession,
    admin: str,
    config_path: Path,
    before: Health,
) -> Flip:
    """Once the canary's last request has started, roll back and wait until the sidecar says so."""
    await handed_out.wait()
    in_flight = traffic.in_flight
    written = await asyncio.to_thread(set_rollback, config_path)
    while True:
        h = await health(session, admin)
        if h.revision != before.revision and h.rollback:
            return Flip(time.perf_counter() - written, in_flight, h)
        if h.reload_error:
            raise DemoError(f"the sidecar refused the edited config: {h.reload_error}")
        if time.perf_counter() - written > RELOAD_TIMEOUT:
            raise DemoError(f"the sidecar did not apply rollback within {RELOAD_TIMEOUT:g} s")
        await asyncio.sleep(0.02)


def _served(outcomes: Sequence[Outcome]) -> str:
    by = Counter(o.upstream for o in outcomes)
    return ", ".join(
        f"{name} {by[name]}" for name in ("old", "new", *sorted(set(by) - {"old", "new"}))
    )


def _errors(outcomes: Sequence[Outcome]) -> str:
    errs = Counter(f"{o.upstream}: {o.error}" for o in outcomes if o.error)
    if not errs:
        return "no errors"
    listed = ", ".join(f"{n} x {what}" for what, n in sorted(errs.items()))
    return f"{sum(errs.values())} error(s) reached the app ({listed})"


def _kinds(outcomes: Sequence[Outcome]) -> str:
    by = Counter(o.kind for o in outcomes)
    return ", ".join(f"{by[k]} {k}" for k in KINDS if by[k])


async def scenario(sidecar_url: str, config_path: Path, calls: list[Call]) -> list[str]:
    """The app's traffic and the operator's rollback, told as it happens; returns the problems
    seen (a product bug, not bad luck: the demo then exits non-zero)."""
    admin = sidecar_url.removesuffix("/v1")
    half = len(calls) // 2
    problems: list[str] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        openai.AsyncOpenAI(
            base_url=sidecar_url, api_key=APP_KEY, max_retries=0, timeout=30
        ) as client,
    ):
        first = await health(session, admin)
        traffic = Traffic(client, CONCURRENCY)

        say(
            f"\nPhase 1, canary (split {first.split}, every old request shadowed to new): "
            f"{half} requests, {CONCURRENCY} at a time"
        )
        handed_out = asyncio.Event()
        canary, flip = await both(
            traffic.run(calls[:half], handed_out),
            flip_when(handed_out, traffic, session, admin, config_path, first),
        )
        after_canary = await counts(session, admin)
        say(f"  sent {_kinds(canary)}")
        say(f"  served by {_served(canary)}; {_errors(canary)}")
        say(
            f"  shadow and noise copies sent: {after_canary.shadow_sent}, of which "
            f"{after_canary.shadow_failed} failed (recorded for the report, never seen by the app)"
        )

        say(
            f"\nRollback: wrote `rollback: true` into {config_path.name} "
            f"with {flip.in_flight} request(s) in flight"
        )
        say(
            f"  /_proxy/health showed revision {flip.health.revision} (rollback, split "
            f"{flip.health.split}) {flip.seconds:.2f} s after the write"
        )

        rest = len(calls) - half
        say(f"\nPhase 2, rolled back: {rest} requests")
        back = await traffic.run(calls[half:], asyncio.Event())
        after = await counts(session, admin)
        say(f"  served by {_served(back)}; {_errors(back)}")
        copies = after.shadow_sent - after_canary.shadow_sent
        say(f"  shadow and noise copies sent: {copies} (shadowing pauses while rolled back)")
        strays = [o for o in back if o.upstream != "old"]
        if strays:
            problems.append(f"{len(strays)} request(s) after the rollback were not served by old")
        else:
            say("  every request after the flip went to old")
        if after.records_dropped:
            problems.append(f"the sidecar dropped {after.records_dropped} record(s)")
    return problems
