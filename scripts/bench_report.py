"""How long `python -m proxy report` takes on a big recording, and its peak memory.

    .venv/bin/python scripts/bench_report.py 1000000 [--keep /tmp/r1m.db] [--out FILE]

Makes the recording through the real recorder (`tests/report/fleet.py`: rows from
proxy.record.rows fed to proxy.record.writer.Recorder, with shadow and noise pairs, bodies as
hashes), then runs the report in a fresh process under /usr/bin/time (wall seconds and peak
resident memory), three times, and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.report.fleet import record  # noqa: E402  (the repository's root, just added)


def _report(path: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (KiB) of one `report --json` run."""
    started = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "proxy", "report", "--db", path, "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    wall = time.perf_counter() - started
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", out.stderr)[1])  # type: ignore[index]
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", out.stderr)[1])  # type: ignore[index]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)[1])  # type: ignore[index]
    return wall, user + sys_, rss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exchanges", type=int)
    p.add_argument("--keep", help="the recording's path (reused if it exists)")
    p.add_argument("--out", help="also write the figures to this file")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    path = args.keep or f"/tmp/bench-report-{args.exchanges}.db"
    lines = [
        f"# scripts/bench_report.py {args.exchanges}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    ]
    if not Path(path).exists():
        started = time.perf_counter()
        asyncio.run(record(path, "x", args.exchanges, seed=1))
        lines.append(f"recorded {args.exchanges:,} exchanges through the Recorder in "
                     f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    else:
        lines.append("recording reused (--keep): made earlier by this script's recorder")
    lines.append(f"recording: {path}, {Path(path).stat().st_size / 1e6:,.0f} MB")
    for run in range(args.runs):
        # Other jobs on the machine take cores from the report's two threads: the load
        # average before each run says how shared it was; CPU seconds don't depend on it.
        load = os.getloadavg()[0]
        wall, cpu, rss = _report(path)
        lines.append(f"report run {run + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                     f"peak RSS {rss / 1024:,.0f} MiB (load average {load:.1f} before)")  # fmt: skip
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
