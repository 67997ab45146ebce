"""What the counts a recording keeps per minute (proxy/record/rollups.py) cost its writer, and
what migrating a recording to them takes.

    .venv/bin/python scripts/measure_minutes.py [--exchanges 100000] [--runs 3]
        [--migrate /tmp/r1m.db] [--out FILE]

Records the same exchanges (tests/report/fleet.py: shadow and noise copies, bodies as
hashes) through the real Recorder, with its triggers and with them dropped, alternating, and
prints the process's CPU seconds for each (the writer's thread included). With --migrate,
copies that recording, takes it back to the version before the counts (their tables, triggers
and index dropped) and times the migration the sidecar runs at start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.record.schema import ROLLUPS_SINCE  # noqa: E402  (the repository's root, just added)
from proxy.record.writer import Recorder, WriterSettings  # noqa: E402
from tests.report.fleet import rows  # noqa: E402

_ADDED = ("table", "trigger", "index")


def _added(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """The tables, triggers and index the counts' migration made."""
    names = con.execute(
        "SELECT type, name FROM sqlite_master WHERE name LIKE '%minutes' OR name LIKE "
        "'primary_latency' OR type = 'trigger' OR name = 'responses_embedding_dims'"
    ).fetchall()
    return [(kind, name) for kind, name in names if kind in _ADDED]


async def _record(path: str, n: int, triggers: bool) -> float:
    """CPU seconds to record `n` exchanges into a new file at `path` (not there yet)."""
    recorder = Recorder(path, WriterSettings(queue_size=20_000))
    await recorder.start()
    if not triggers:
        con = sqlite3.connect(path)
        for kind, name in _added(con):
            if kind == "trigger":
                con.execute(f"DROP TRIGGER {name}")
        con.commit()
        con.close()
    data = rows("x", n, seed=1)
    started = time.process_time()
    for row in data:
        while recorder.stats().queue_depth >= 19_000:  # noqa: ASYNC110  (the queue has no event)
            await asyncio.sleep(0.005)
        recorder.submit(row)
    await recorder.close(timeout=600)
    return time.process_time() - started


def _fresh(path: str) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    return path


async def _migrate(source: str, work: str) -> tuple[float, int]:
    """Seconds the migration to the counts takes on a copy of `source`, and its exchanges."""
    path = os.path.join(work, "migrate.db")
    con = sqlite3.connect(source)
    copy = sqlite3.connect(path)
    con.backup(copy)
    con.close()
    for kind, name in _added(copy):
        copy.execute(f"DROP {kind.upper()} IF EXISTS {name}")
    copy.execute(f"PRAGMA user_version = {ROLLUPS_SINCE - 1}")
    copy.commit()
    exchanges = int(copy.execute("SELECT count(*) FROM exchanges").fetchone()[0])
    copy.close()
    recorder = Recorder(path, WriterSettings())
    started = time.perf_counter()
    await recorder.start()
    took = time.perf_counter() - started
    await recorder.close()
    return took, exchanges


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exchanges", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--migrate", help="a recording to time the migration on (a copy of it)")
    p.add_argument("--out", help="also write the figures to this file")
    args = p.parse_args()
    lines = [
        "# scripts/measure_minutes.py " + " ".join(sys.argv[1:]),
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}",
        f"recording {args.exchanges:,} exchanges through the Recorder (default batching), "
        "CPU seconds of the whole process:",
    ]
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "r.db")
        for run in range(args.runs):
            with_ = asyncio.run(_record(_fresh(path), args.exchanges, triggers=True))
            without = asyncio.run(_record(_fresh(path), args.exchanges, triggers=False))
            per = (with_ - without) / args.exchanges * 1e6
            lines.append(f"run {run + 1}: with the counts {with_:.2f} s, without {without:.2f} s: "
                         f"{per:+.1f} us per exchange")  # fmt: skip
        if args.migrate:
            took, n = asyncio.run(_migrate(args.migrate, work))
            lines.append(f"migration of a copy of {args.migrate} ({n:,} exchanges) to the "
                         f"counts: {took:.1f} s")  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
