"""A simulated day of one pod's recording under retention: does the file stay under the cap?

The real `Recorder` takes the rows a sidecar would record (an `Exchange` and its primary
`Response` per call, a shadow `Response` for a share of them, full answer bodies of a chat
call's size; request bodies hashed, as deploy/kubernetes/config.yaml has them, or full)
through `Recorder.submit`, and runs its real retention round every `--interval` simulated
seconds (the sidecar's default is 60). The clock is compressed: a simulated
interval's calls are submitted as fast as the writer takes them, then the round runs. The
file (main + WAL) is measured on disk after each interval's writes and after each round.

    python scripts/simulate_day.py                         # the fleet example's day
    python scripts/simulate_day.py --request-bodies full --shadow 0.25   # bigger rows
    python scripts/simulate_day.py --seconds 3600 --max-size 200MB
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ByteSize, TypeAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.record.rows import Exchange, Response
from proxy.record.writer import Recorder, WriterSettings

# fmt: off
_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by", "this",
    "be", "are", "from", "at", "or", "an", "it", "not", "which", "model", "answer", "request",
    "customer", "order", "invoice", "refund", "account", "shipping", "address", "product",
    "summary", "policy", "support", "ticket", "status", "delivery", "payment", "error",
    "retry", "latency", "token",
)
# fmt: on


@dataclass(frozen=True, slots=True, kw_only=True)
class Day:
    rate: float = 20.0  # calls a second, one pod
    seconds: int = 86_400  # simulated
    interval: float = 60.0  # simulated seconds between retention rounds
    max_size: int = 2 << 30
    max_age_days: float | None = 7.0
    shadow: float = 0.1  # share of calls shadowed (deploy/kubernetes/config.yaml: 0.1)
    request_bodies: str = "hash"  # "full" or "hash" (the fleet example: hash)
    seed: int = 21


@dataclass(slots=True)
class Run:
    exchanges: int = 0
    rounds: int = 0
    peak_disk: int = 0  # main file + WAL, on disk, largest sample
    peak_used: int = 0  # pages in use + WAL, largest sample
    round_growth: int = 0  # largest growth of (pages in use + WAL) over one interval's writes
    bytes_per_exchange: float = 0.0  # pages in use per exchange, before anything was deleted
    final_disk: int = 0
    final_rows: int = 0
    dropped: int = 0
    deleted: int = 0  # exchanges, by retention
    longest_round: float = 0.0  # seconds of wall time
    longest_wait: float = 0.0  # seconds the database was held from the writer, at most
    newest: list[str] = field(default_factory=list)  # ids of the last interval's exchanges


def _bodies(rng: random.Random, n: int, low: int, high: int, wrap: str) -> list[bytes]:
    out = []
    for _ in range(n):
        size = rng.randint(low, high)
        words: list[str] = []
        length = 0
        while length < size:
            w = rng.choice(_WORDS)
            words.append(w)
            length += len(w) + 1
        out.append(wrap.replace("TEXT", " ".join(words)).encode())
    return out


def _disk(path: str) -> int:
    total = 0
    for name in (path, path + "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(name).st_size
    return total


async def simulate(path: str, day: Day, progress: Callable[[str], None] | None = None) -> Run:
    """Runs `day` into a new recording at `path`; returns what was measured."""
    rng = random.Random(day.seed)
    # A chat request and a chat.completion, ~1.2 KB and ~0.9 KB: with both kept and a quarter
    # shadowed, ~3.4 KB an exchange on disk with its rows and indexes, near the 3.2 KB
    # issue 21 measured on real traffic with full bodies.
    requests = _bodies(
        rng, 256, 400, 1800,
        '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"TEXT"}],"stream":true}',
    )  # fmt: skip
    answers = _bodies(
        rng, 256, 200, 1200,
        '{"id":"chatcmpl-x","object":"chat.completion","model":"gpt-4o-mini","choices":'
        '[{"index":0,"message":{"role":"assistant","content":"TEXT"},"finish_reason":"stop"}],'
        '"usage":{"prompt_tokens":412,"completion_tokens":188,"total_tokens":600}}',
    )  # fmt: skip
    settings = WriterSettings(
        max_size=day.max_size,
        max_age_days=day.max_age_days,
        retention_interval=1e9,  # rounds run on the simulated clock, below
        linger=0.0,  # no wait for a full batch at the end of each interval's writes
    )
    recorder = Recorder(path, settings)
    await recorder.start()
    run = Run()
    start = time.time() - day.seconds  # the day just ended: nothing in it is 7 days old
    per_round = max(1, round(day.rate * day.interval))
    total = int(day.rate * day.seconds)
    after = await recorder.footprint()
    hour = 0
    try:
        while run.exchanges < total:
            n = min(per_round, total - run.exchanges)
            newest = []
            for i in range(run.exchanges, run.exchanges + n):
                ts = start + i / day.rate
                rid = f"req_{int(ts * 1e6):x}5e1d{i & 0xFFFF:04x}"
                newest.append(rid)
                body = requests[i % 256] if day.request_bodies == "full" else None
                recorder.submit(_exchange(rid, ts, body))
                recorder.submit(_response(rid, ts, "primary", answers[i % 256]))
                if rng.random() < day.shadow:
                    recorder.submit(_response(rid, ts + 0.5, "shadow", answers[(i * 7) % 256]))
                if i % 2000 == 1999:  # within the queue's 10,000
                    await recorder.idle()
            await recorder.idle()
            run.exchanges += n
            before = await recorder.footprint()
            run.peak_disk = max(run.peak_disk, _disk(path))
            run.peak_used = max(run.peak_used, before.total)
            run.round_growth = max(run.round_growth, before.total - after.total)
            if not run.bytes_per_exchange and before.total > day.max_size * 0.8:
                run.bytes_per_exchange = before.used / run.exchanges
            began = time.monotonic()
            stop = asyncio.Event()
            probe = asyncio.create_task(_probe(recorder, stop))
            try:
                run.deleted += await recorder.retain()
            finally:
                stop.set()
                run.longest_wait = max(run.longest_wait, await probe)
            run.longest_round = max(run.longest_round, time.monotonic() - began)
            run.rounds += 1
            after = await recorder.footprint()
            run.peak_disk = max(run.peak_disk, _disk(path))
            run.newest = newest
            if progress is not None and (run.exchanges / day.rate) // 3600 > hour:
                hour = int(run.exchanges / day.rate) // 3600
                progress(
                    f"{hour:>4}  {run.exchanges:>10,}  {_disk(path) / 1e6:>10.1f}"
                    f"  {after.used / 1e6:>10.1f}  {after.wal / 1e6:>8.1f}"
                )
    finally:
        run.dropped = recorder.stats().dropped
        await recorder.close()
    run.final_disk = _disk(path)
    return run


async def _probe(recorder: Recorder, stop: asyncio.Event) -> float:
    """How long a batch would wait for the database while a round runs: the footprint takes
    the lock the writer and retention share, as a batch does, and costs well under 1 ms."""
    worst = 0.0
    while not stop.is_set():
        began = time.monotonic()
        await recorder.footprint()
        worst = max(worst, time.monotonic() - began)
        await asyncio.sleep(0.005)
    return worst


def _exchange(rid: str, ts: float, body: bytes | None) -> Exchange:
    digest = None if body is not None else "cd" * 32  # under "hash", the SHA-256 only
    return Exchange(
        rid, ts, "chat", "POST", "/v1/chat/completions", "gpt-4o-mini", True, "1-5e1d0001",
        None, body, digest, None, 0,
    )  # fmt: skip


def _response(rid: str, ts: float, role: str, body: bytes) -> Response:
    upstream = "old" if role == "primary" else "new"
    return Response(
        rid, role, upstream, "gpt-4o-mini", ts, 200, None, None, 180.0, 240.0, 2100.0,  # type: ignore[arg-type]
        len(body), 412, 188, 600, "stop", True, "{choices:[{message:{content:str}}]}", None,
        None, "ab" * 32, body, None,
    )  # fmt: skip


def _parse() -> tuple[Day, str | None, str | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=20.0, help="calls a second (default 20)")
    p.add_argument("--seconds", type=int, default=86_400, help="simulated (default a day)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between rounds")
    p.add_argument("--max-size", default="2GiB", help="the cap, e.g. 500MB, 2GiB")
    p.add_argument("--max-age-days", type=float, default=7.0)
    p.add_argument("--shadow", type=float, default=0.1, help="share of calls shadowed")
    p.add_argument("--request-bodies", choices=("full", "hash"), default="hash")
    p.add_argument("--db", help="the recording to make (default: in a temporary directory)")
    p.add_argument("--out", help="also write the output to this file")
    a = p.parse_args()
    size = int(TypeAdapter(ByteSize).validate_python(a.max_size))
    day = Day(
        rate=a.rate,
        seconds=a.seconds,
        interval=a.interval,
        max_size=size,
        max_age_days=a.max_age_days,
        shadow=a.shadow,
        request_bodies=a.request_bodies,
    )
    return day, a.db, a.out


def main() -> int:
    day, db, out = _parse()
    # Each round that deletes logs a line; the figures below say what those would.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    say(f"# {' '.join(['python', *sys.argv])}")
    say(f"simulate_day {now}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    say(
        f"rate {day.rate:g}/s for {day.seconds:,} s = {int(day.rate * day.seconds):,} exchanges, "
        f"shadowed {day.shadow:.0%}, request bodies {day.request_bodies}, response bodies full, "
        f"retention every {day.interval:g} simulated s, "
        f"max_size {day.max_size:,} B, max_age_days {day.max_age_days}"
    )
    say("hour   exchanges     disk MB     used MB   wal MB   (after each hour's last round)")
    with tempfile.TemporaryDirectory() as tmp:
        path = db or os.path.join(tmp, "sidecar.db")
        began = time.monotonic()
        run = asyncio.run(simulate(path, day, say))
        wall = time.monotonic() - began
    say(
        f"peak on disk (main + WAL): {run.peak_disk:,} B = {run.peak_disk / day.max_size:.1%} of the cap"
    )
    say(f"peak in use (pages in use + WAL): {run.peak_used:,} B")
    say(f"largest growth over one interval's writes: {run.round_growth:,} B")
    say(f"pages in use per exchange before the cap: {run.bytes_per_exchange:,.0f} B")
    say(f"on disk at the end: {run.final_disk:,} B; records dropped: {run.dropped}")
    say(f"exchanges deleted by retention: {run.deleted:,}; longest round {run.longest_round:.2f} s")
    say(f"longest a write waited for the database during a round: {run.longest_wait * 1e3:.1f} ms")
    say(f"{run.rounds:,} rounds, {run.exchanges:,} exchanges in {wall:,.0f} s wall")
    verdict = "UNDER" if run.peak_disk <= day.max_size else "OVER"
    say(f"{verdict} the cap")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    return 0 if verdict == "UNDER" else 1


if __name__ == "__main__":
    raise SystemExit(main())
