"""Where the sidecar's CPU goes: one configuration under load, sampled by py-spy.

Starts a fake upstream and one sidecar as scripts/bench.py does, drives load at it (wrk for
plain requests, the bench's Python generator for streams), records the sidecar with py-spy,
and prints the functions that hold the most samples (own and inclusive) and the share per
module. py-spy is a developer tool, not a dependency: `.venv/bin/pip install py-spy`.

    .venv/bin/python scripts/profile_sidecar.py --config record --load requests --seconds 10
    .venv/bin/python scripts/profile_sidecar.py --config sidecar --load streams
    .venv/bin/python scripts/profile_sidecar.py --config record --sampler perf  # native code
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the bench's process handling, reused as-is

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" else tail
    return path


def module_of(path: str) -> str:
    p = short(path)
    if p.startswith("proxy/"):
        return p
    return p.split("/", 1)[0] if "/" in p else p


# py-spy takes an idle ThreadPoolExecutor worker, blocked in its queue's get(), for a busy
# one on this kernel; those samples are waiting, not work.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",)


def thread_kind(frames: list[tuple[str, str]]) -> str:
    files = " ".join(f"{func} {file}" for func, file in frames[:6])
    if "_connection_worker_thread" in files:
        return "SQLite writer thread (aiosqlite)"
    if "concurrent/futures/thread.py" in files:
        return "executor threads (asyncio.to_thread)"
    return "event loop thread"


def parse(raw: str) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    """Collapsed stacks into (samples, own samples per function, inclusive per function,
    own samples per module, samples per thread kind)."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    mods: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit() or stack.endswith(IDLE_LEAVES):
            continue
        count = int(n)
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            if m is not None and not f.startswith("thread ("):
                frames.append((m["func"], m["file"]))
        if not frames:
            continue
        total += count
        threads[thread_kind(frames)] += count
        names = [f"{short(file)}:{func}" for func, file in frames]
        own[names[-1]] += count
        mods[module_of(frames[-1][1])] += count
        for name in set(names):
            incl[name] += count
    return total, own, incl, mods, threads


def thread_cpu(pid: int) -> dict[int, tuple[float, int]]:
    """(CPU seconds, context switches) per OS thread: exact, where py-spy's idle detection
    is not. Switches show GIL hand-offs between the event loop and the SQLite thread."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            with open(task / "stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
        out[int(task.name)] = ((int(rest[11]) + int(rest[12])) / bench.TICK, switches)
    return out


def perf_report(data: Path, top: int) -> str:
    """perf's samples by library, then by library and symbol: where native time goes."""
    if not data.exists():
        print("perf recorded nothing (kernel.perf_event_paranoid?)", file=sys.stderr)
        return ""
    parts = []
    for sort in ("dso", "dso,sym"):
        cmd = ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit"]
        cmd += ["0.3"]
        text = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        rows = [line.rstrip() for line in text.splitlines() if line.strip() and line[0] != "#"]
        parts.append(f"\nperf samples by {sort.replace(',', ' and ')}\n" + "\n".join(rows[:top]))
    return "\n".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", choices=[s.name for s in bench.SETUPS if s.sidecar], default="record"
    )
    p.add_argument("--load", choices=("requests", "streams", "bursts"), default="requests")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--raw", help="also keep py-spy's collapsed stacks (or perf.data) here")
    p.add_argument(
        "--sampler",
        choices=("py-spy", "perf", "none"),
        default="py-spy",
        help="py-spy: Python functions; perf: native code by library and symbol (the "
        "interpreter, SQLite, the kernel); none: only the exact per-thread CPU, unperturbed",
    )
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.sampler == "py-spy" and not Path(spy).exists():
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    if args.sampler == "perf" and shutil.which("perf") is None:
        print("perf is missing: apt-get install linux-perf", file=sys.stderr)
        return 2
    setup = bench.BY_NAME[args.config]
    bench.raise_nofile()
    with (
        tempfile.TemporaryDirectory(prefix="sidecar-profile-") as tmp_name,
        bench.Fleet(Path(tmp_name)) as fleet,
        bench.Generator(bench.find_wrk(install=False), Path(tmp_name)) as gen,
    ):
        tmp = Path(tmp_name)
        fake = [bench.PY, "-m", "proxy", "fake", "--port", "0", "--chunks", "20"]
        fake += ["--chunk-delay", str(bench.CHUNK_GAP), "--models", bench.MODEL]
        fleet.spawn("upstream-a", [*fake, "--name", "a", "--api-key", bench.KEY_A])
        fleet.spawn(
            "upstream-b",
            [*fake[:-1], f"openai/{bench.MODEL}", "--name", "b", "--api-key", bench.KEY_B],
        )
        fleet.wait_ready(["upstream-a", "upstream-b"], re.compile(r"^(http://\S+)$", re.M), 60)
        cfg = bench.sidecar_config(
            setup, fleet.procs["upstream-a"].url, fleet.procs["upstream-b"].url, tmp / "rec.db"
        )
        (tmp / "config.yaml").write_bytes(orjson.dumps(cfg))
        if setup.bare:  # the reference floor, profiled the same way
            argv = [bench.PY, str(bench.ROOT / "scripts" / "bare_proxy.py")]
            argv += [fleet.procs["upstream-a"].url, bench.KEY_A]
        else:
            argv = [bench.PY, "-m", "proxy", "serve", "--config", str(tmp / "config.yaml")]
        fleet.spawn("sidecar", argv)
        fleet.wait_ready(["sidecar"], re.compile(r"listening on (http://\S+)"), 60)
        url, a_url = fleet.procs["sidecar"].url, fleet.procs["upstream-a"].url
        _, _, body = bench.http_call(
            a_url, "POST", "/chat/completions", bench.CHAT_BODY, bench.KEY_A
        )
        expect = orjson.loads(body)["choices"][0]["message"]["content"]
        out = tmp / "stacks.txt"
        # Sample a little inside the load window, so that ramp-up and ramp-down stay out.
        pid_s = str(fleet.procs["sidecar"].pid)
        if args.sampler == "py-spy":
            spy_cmd = [spy, "record", "-p", pid_s, "-r", "250"]
            spy_cmd += ["-d", str(args.seconds), "-f", "raw", "-o", str(out)]
        elif args.sampler == "perf":
            spy_cmd = ["perf", "record", "-e", "cpu-clock", "-F", "1000", "-p", pid_s]
            spy_cmd += ["-o", str(tmp / "perf.data"), "--", "sleep", str(args.seconds)]
        else:
            spy_cmd = ["sleep", str(args.seconds)]
        recorder = threading.Timer(
            0.5, lambda: subprocess.run(spy_cmd, capture_output=True, check=False)
        )
        pid = fleet.procs["sidecar"].pid
        cpu0 = bench.cpu_seconds(pid)
        threads0 = thread_cpu(pid)
        recorder.start()
        if args.load == "requests":
            load = gen.requests(url, bench.KEY_CLIENT, args.concurrency, args.seconds + 1)
        else:
            spec = {
                "mode": "closed",
                "stream": True,
                "chunks": bench.CHUNKS,
                "seconds": args.seconds + 1,
                "concurrency": args.concurrency,
                "headers": bench.BURST_HEADERS if args.load == "bursts" else {},
            }
            load = gen.python(spec, url, bench.KEY_CLIENT, expect)
        recorder.join()
        stats = bench.settle(url)
        cpu = bench.cpu_seconds(pid) - cpu0
        threads1 = thread_cpu(pid)
        served = max(sum(stats["requests"].values()), 1)
        by_thread = sorted(
            (
                (t, cpu1 - threads0.get(t, (0.0, 0))[0], n1 - threads0.get(t, (0.0, 0))[1])
                for t, (cpu1, n1) in threads1.items()
            ),
            key=lambda x: -x[1],
        )
        raw = out.read_text() if out.exists() else ""
        if args.raw and args.sampler == "py-spy":
            Path(args.raw).write_text(raw)
        native = ""
        if args.sampler == "perf":
            native = perf_report(tmp / "perf.data", args.top)
            if args.raw and (tmp / "perf.data").exists():
                shutil.copy(tmp / "perf.data", args.raw)
    total, own, incl, mods, threads = parse(raw)
    print(
        f"{args.config}, {args.load} at concurrency {args.concurrency}: {load.requests} done, "
        f"{load.errors} errors, sidecar {cpu / served * 1e6:.0f} us CPU per request; "
        f"{total} samples (percentages below are of all threads' samples)"
    )
    print("\nCPU per request by OS thread (/proc/PID/task, exact)")
    for tid, spent, switches in by_thread:
        if spent > 0:
            label = "event loop (main)" if tid == pid else f"thread {tid}"
            print(
                f"  {spent / served * 1e6:7.1f} us  {switches / served:6.2f} context switches"
                f"  {label}"
            )
    if args.sampler == "perf":
        print(native)
        return 0 if native else 1
    if args.sampler == "none":
        return 0
    if not total:
        print("py-spy recorded nothing (is ptrace allowed?)", file=sys.stderr)
        return 1
    sections = (
        ("samples by thread", threads),
        ("own samples by module", mods),
        ("own samples by function", own),
    )
    for title, counter in sections:
        print(f"\n{title}")
        for name, n in counter.most_common(args.top):
            print(f"  {n / total * 100:5.1f}%  {name}")
    print("\ninclusive samples, proxy/ functions")
    for name, n in [(k, v) for k, v in incl.most_common() if k.startswith("proxy/")][: args.top]:
        print(f"  {n / total * 100:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
