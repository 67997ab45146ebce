"""What a configuration costs in instructions, not seconds: the sidecar under callgrind.

CPU time on a shared 2-core VM moves by 20% from one window to the next; instruction counts
from valgrind's callgrind repeat to about 0.1%, so they show what one change to the request
path saves. This starts one fake upstream and, per configuration, a sidecar under
`valgrind --tool=callgrind`; it sends warm-up requests, zeroes the counters
(`callgrind_control --zero`), sends N requests one after another on one connection, dumps the
counters (`callgrind_control --dump`) and divides the total by N.

What it does not see: kernel work (syscalls, I/O) and cache misses. At one request at a
time the recorder writes batches of a few records, so its per-batch costs weigh more than
under load. Under valgrind a sidecar starts in ~40 s and runs ~50x slower.

    .venv/bin/python scripts/count_instructions.py sidecar record     # ~2 minutes
    .venv/bin/python scripts/count_instructions.py --requests 500 record record+shadow
    .venv/bin/python scripts/count_instructions.py --keep /tmp/cg sidecar record
    .venv/bin/python scripts/count_instructions.py --concurrency 16 sidecar record  # batches as under load
    .venv/bin/python scripts/count_instructions.py --load bursts bare sidecar record  # per stream
    callgrind_annotate --inclusive=yes /tmp/cg/callgrind.record | head -60
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the bench's process handling and configurations, reused as-is

TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


def post_many(url: str, n: int, stream: bool = False, concurrency: int = 1) -> None:
    if concurrency > 1:
        # Each worker its own connection; under valgrind the sidecar is the bottleneck, so
        # requests queue as under load and the recorder's batches fill as they do there.
        share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        with ThreadPoolExecutor(concurrency) as pool:
            for done in [pool.submit(post_many, url, k, stream) for k in share if k]:
                done.result()
        return
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    headers = {"content-type": "application/json", "authorization": f"Bearer {bench.KEY_CLIENT}"}
    data = bench.STREAM_BODY if stream else bench.CHAT_BODY
    try:
        for _ in range(n):
            conn.request("POST", f"{parts.path}/chat/completions", data, headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or (stream and b"data: [DONE]" not in body):
                raise bench.BenchError(f"the proxy answered {resp.status}: {body[:300]!r}")
    finally:
        conn.close()


def settle(url: str) -> None:
    # Shadow copies answered and records written, so that their work lands in this count.
    bench.settle(url, timeout=60.0)
    time.sleep(0.5)  # past the recorder's linger


def count(
    fleet: bench.Fleet,
    tmp: Path,
    setup: bench.Setup,
    a_url: str,
    b_url: str,
    n: int,
    keep: Path | None = None,
    stream: bool = False,
    concurrency: int = 1,
) -> int:
    out = tmp / f"cg-{bench._slug(setup.name)}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--"]
    if setup.bare:
        argv += [bench.PY, str(bench.ROOT / "scripts" / "bare_proxy.py"), a_url, bench.KEY_A]
    else:
        cfg = bench.sidecar_config(setup, a_url, b_url, tmp / f"{bench._slug(setup.name)}.db")
        path = tmp / f"{bench._slug(setup.name)}.yaml"
        path.write_bytes(orjson.dumps(cfg))
        argv += [bench.PY, "-m", "proxy", "serve", "--config", str(path)]
    fleet.spawn(setup.name, argv)
    fleet.wait_ready([setup.name], re.compile(r"listening on (http://\S+)"), 300)
    proc = fleet.procs[setup.name]
    post_many(proc.url, 20, stream)
    settle(proc.url)
    subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, check=True)
    post_many(proc.url, n, stream, concurrency)
    settle(proc.url)
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
    dumps = sorted(tmp.glob(f"{out.name}.{proc.pid}.*"))
    if not dumps:
        raise bench.BenchError(f"callgrind wrote no dump for {setup.name}")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dumps[-1], keep / f"callgrind.{bench._slug(setup.name)}")
    m = TOTALS.search(dumps[-1].read_bytes())
    if m is None:
        raise bench.BenchError(f"no totals in {dumps[-1]}")
    return int(m.group(1))


def main() -> int:
    names = [s.name for s in bench.SETUPS if s.sidecar]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", choices=names, metavar="CONFIG", help=", ".join(names))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument(
        "--load",
        choices=("requests", "bursts"),
        default="requests",
        help="plain answers, or streams of bench.CHUNKS events sent back to back (per stream)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight at once (default 1: one after another on one connection)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        help="copy each configuration's dump here, as callgrind.NAME, for callgrind_annotate",
    )
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install valgrind", file=sys.stderr)
            return 2
    results: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sidecar-instructions-") as tmp_name,
        bench.Fleet(Path(tmp_name)) as fleet,
    ):
        tmp = Path(tmp_name)
        fake = [bench.PY, "-m", "proxy", "fake", "--port", "0", "--chunks", str(bench.CHUNKS)]
        fake += ["--models"]
        fleet.spawn("upstream-a", [*fake, bench.MODEL, "--name", "a", "--api-key", bench.KEY_A])
        fleet.spawn(
            "upstream-b",
            [*fake, f"openai/{bench.MODEL}", "--name", "b", "--api-key", bench.KEY_B],
        )
        fleet.wait_ready(["upstream-a", "upstream-b"], re.compile(r"^(http://\S+)$", re.M), 60)
        a_url, b_url = fleet.procs["upstream-a"].url, fleet.procs["upstream-b"].url
        for name in args.configs:
            total = count(
                fleet,
                tmp,
                bench.BY_NAME[name],
                a_url,
                b_url,
                args.requests,
                args.keep,
                args.load == "bursts",
                args.concurrency,
            )
            results[name] = total / args.requests
            unit = "stream" if args.load == "bursts" else "request"
            print(f"{name}: {results[name]:,.0f} instructions per {unit}", flush=True)
    first = args.configs[0]
    for name in args.configs[1:]:
        print(f"{name} vs {first}: {results[name] / results[first]:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
