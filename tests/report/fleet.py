"""Recordings made the way a sidecar makes them: rows from `proxy.record.rows` fed to the real
`Recorder`, with shadow and noise pairs and bodies kept as hashes. For the tests and for
`scripts/bench_report.py`."""

from __future__ import annotations

import asyncio
import hashlib
import random

from proxy.record.rows import Exchange, Response, Revision
from proxy.record.writer import Recorder, WriterSettings

T0 = 1_700_000_000.0
SHADOW = 0.23  # of exchanges copied to the new upstream
NOISE = 0.05  # copied to the primary again
CANARY = 0.08  # served by the new upstream


def _response(
    x: Exchange, role: str, upstream: str, rng: random.Random, *, slower: float, text: int
) -> Response:
    ok = rng.random() > 0.02
    total = rng.lognormvariate(6.0, 0.6) * slower
    ttft = total * rng.uniform(0.1, 0.4) if x.stream and ok else None
    prompt, completion = rng.randint(50, 900), rng.randint(5, 400)
    tools = '[{"name": "f", "keys": ["a"], "valid": true}]' if text % 31 == 0 else None
    return Response(
        exchange_id=x.id,
        role=role,  # type: ignore[arg-type]
        upstream=upstream,
        model_sent=x.model,
        ts=x.ts + 0.001,
        status=200 if ok else 503,
        error_kind=None if ok else "http_5xx",
        error=None if ok else "503 from the upstream",
        ttfb_ms=total * 0.05,
        ttft_ms=ttft,
        total_ms=total,
        bytes=400,
        prompt_tokens=prompt if ok else None,
        completion_tokens=completion if ok else None,
        total_tokens=prompt + completion if ok else None,
        finish_reason="stop" if ok else None,
        stream_done=(ok or None) if x.stream else None,
        shape="chat" if ok else None,
        tool_calls=tools if ok else None,
        json_ok=None,
        text_sha256=hashlib.sha256(str(text).encode()).hexdigest() if ok else None,
        response_body=None,
        response_sha256=hashlib.sha256(str(text).encode()).hexdigest() if ok else None,
        cached_tokens=None,
        images=None,
        embedding_dims=None,
    )


def rows(prefix: str, n: int, seed: int, first: int = 0) -> list[Exchange | Response | Revision]:
    """`n` exchanges from number `first` and their answers, in the order a sidecar submits
    them; the config revision with the first."""
    rng = random.Random(seed + first)
    out: list[Exchange | Response | Revision] = []
    if first == 0:
        out.append(Revision("r1", T0, False, '{"old": 0.92, "new": 0.08}', "config.yaml"))
    for i in range(first, first + n):
        x = Exchange(
            f"{prefix}{i:09d}", T0 + i * 0.05, "chat", "POST", "/v1/chat/completions",
            "gpt-4o-mini", i % 5 < 2, "r1", None, None, None, None, None,
        )  # fmt: skip
        text = rng.randrange(1000)
        primary = "new" if rng.random() < CANARY else "old"
        out.append(x)
        out.append(_response(x, "primary", primary, rng, slower=1.0, text=text))
        if rng.random() < SHADOW:
            changed = text if rng.random() < 0.6 else text + 1
            out.append(_response(x, "shadow", "new", rng, slower=1.1, text=changed))
        if rng.random() < NOISE:
            changed = text if rng.random() < 0.7 else text + 1
            out.append(_response(x, "noise", primary, rng, slower=1.0, text=changed))
    return out


async def record(path: str, prefix: str, n: int, seed: int, *, block: int = 50_000) -> None:
    """Records `n` exchanges into `path` through the real recorder, generated `block`
    exchanges at a time (so memory stays flat), waiting for its queue as a sidecar's
    traffic would."""
    recorder = Recorder(path, WriterSettings(queue_size=20_000, batch_size=2_000, linger=0.01))
    await recorder.start()
    try:
        for start in range(0, n, block):
            for row in rows(prefix, min(block, n - start), seed, start):
                while recorder.stats().queue_depth >= 19_000:
                    await asyncio.sleep(0.005)
                recorder.submit(row)
    finally:
        await recorder.close(timeout=600)
    if recorder.stats().dropped:
        raise RuntimeError(f"the recorder dropped {recorder.stats().dropped} records")
