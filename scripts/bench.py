"""The benchmark: what the sidecar costs per request, in CPU, latency and memory, beside its upstream.

Everything runs on 127.0.0.1 in one run: fake upstreams (`proxy.fakes`), one sidecar
process per configuration, and the load generator (wrk, or a Python process when wrk is
missing), each in a process of its own so that the CPU time read from /proc is each one's own.
Configurations are measured round-robin over several rounds, so that drift on a shared machine
hits them all alike, and every round after the first runs fresh proxy processes (see
`Bench.fresh_proxies`). The headline is the sidecar's CPU per request divided by the fake
upstream's, both read in the same window: a ratio that survives a noisy 2-core machine.

    scripts/bench                        # the full run, about 4.5 minutes on 2 cores
    scripts/bench --quick                # about 20 s: one short round (what the test runs)
    scripts/bench --compare A.json B.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import importlib.metadata
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from proxy.fakes.provider import CHUNK_DELAY_HEADER

ROOT: Final = Path(__file__).resolve().parent.parent
PY: Final = sys.executable
TICK: Final = os.sysconf("SC_CLK_TCK")

MODEL: Final = "gpt-4o-mini"
CHUNKS: Final = 20  # content chunks per stream; a stream is CHUNKS + 1 relayed events with [DONE]
# Between two events of a stream, as a provider paces tokens: each event reaches the sidecar
# in a read of its own (without a gap they coalesce, and the relay's cost per chunk would look
# smaller than it is), and 16 streams stay well below saturation on 2 cores, so that time to
# first chunk measures the sidecar's hop rather than a queue.
CHUNK_GAP: Final = 0.01
# "Bursts" are the same streams with no gap (the fake's per-request pacing header): events
# arrive together, as from a provider that buffers, and what a stream costs beyond a request
# is the relay's own work rather than one wake-up per event.
BURST_HEADERS: Final = {CHUNK_DELAY_HEADER: "0"}
# Stream windows: (kind, concurrency, headers). "single" is one stream at a time, back to
# back: its time to first chunk is the hop itself, with no queue behind other streams.
STREAM_KINDS: Final = ("streams", "bursts", "single")
# Recording off, then on (or on, then off), in the one `record` process, switched by a config
# reload: the on/off ratio without the ~15-25% by which two processes of one configuration
# differ on this VM. Non-streaming, at the first concurrency.
TOGGLE_KINDS: Final = ("toggle-off", "toggle-on")
KEY_A: Final = "sk-bench-upstream-a"
KEY_B: Final = "sk-bench-upstream-b"
KEY_CLIENT: Final = "sk-bench-client"  # what the app sends the sidecar; never forwarded

CHAT: Final[dict[str, Any]] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant for a travel booking site."},
        {
            "role": "user",
            "content": "Which documents do I need to fly from Lisbon to Toronto "
            "with a Portuguese passport?",
        },
    ],
    "temperature": 0.2,
    "max_tokens": 256,
    "user": "user-4821",
}
CHAT_BODY: Final = orjson.dumps(CHAT)
STREAM_BODY: Final = orjson.dumps({**CHAT, "stream": True})


# --- what is measured ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """One configuration under test; each sidecar one gets a process and a config file of its own."""

    name: str
    description: str
    sidecar: bool = True
    record: bool = False
    shadow: bool = False
    split: bool = False
    log: bool = False
    metrics: bool = False  # `metrics.enabled`: /metrics and the dashboard's window count calls
    bare: bool = False  # scripts/bare_proxy.py instead of the sidecar

    @property
    def baseline(self) -> tuple[str, ...]:
        """The fakes whose CPU per request the sidecar's is divided by: those that serve the
        app's answers. A shadow copy's upstream is not one of them."""
        return ("a", "b") if self.split else ("a",)


SETUPS: Final = (
    Setup("direct", "load straight to the fake upstream, no sidecar", sidecar=False),
    Setup("sidecar", "through the sidecar: recording off, no shadow, request log off"),
    Setup(
        "sidecar+log", "as `sidecar`, plus one JSON log line per request (to /dev/null)", log=True
    ),
    Setup(
        "sidecar+metrics",
        "as `sidecar`, plus metrics on (Prometheus counters and the dashboard's window)",
        metrics=True,
    ),
    Setup("record", "recording on (SQLite, full bodies), no shadow", record=True),
    Setup(
        "record+metrics",
        "as `record` (the defaults, but for the log), plus metrics on",
        record=True,
        metrics=True,
    ),
    Setup(
        "record+shadow",
        "recording on, and every request also shadowed to a second fake upstream",
        record=True,
        shadow=True,
    ),
    Setup("split", "50/50 split across two fake upstreams, recording off", split=True),
    Setup(
        "bare",
        "a bare aiohttp passthrough proxy (scripts/bare_proxy.py): the floor, for reference",
        bare=True,
    ),
)
BY_NAME: Final = {s.name: s for s in SETUPS}
STREAM_SETUPS: Final = ("direct", "bare", "sidecar", "record")
RATE_SETUPS: Final = ("direct", "bare", "sidecar", "record", "record+shadow")
OPEN_STREAMS: Final = "open-streams"  # the sidecar for the many-open-streams check


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    seconds: int  # one non-streaming window (wrk takes whole seconds)
    stream_seconds: float
    rate_seconds: float
    concurrencies: tuple[int, ...]
    stream_concurrency: int
    rate: int  # requests per second of the open-loop latency probe
    open_streams: int
    # The streams open over `open_ramp` seconds (a burst of 1,000 connects at once overflows
    # a listen backlog of 128 and measures SYN retries instead); the slow fake waits
    # `open_latency` before each stream's first event, longer than the ramp, so all overlap.
    open_ramp: float
    open_latency: float
    open_gap: float
    warmup: bool

    @classmethod
    def full(cls, rounds: int, seconds: int) -> Plan:
        return cls(rounds, seconds, seconds, seconds, (16, 64), 16, 200, 1000, 2.0, 3.0, 0.05, True)

    @classmethod
    def quick(cls) -> Plan:
        return cls(1, 1, 0.5, 0.5, (16,), 16, 100, 100, 0.2, 0.5, 0.01, False)


@dataclass(frozen=True, slots=True)
class Window:
    """One configuration under load for one measurement window, with what each process spent."""

    kind: str  # "requests" (closed loop), "streams" (paced), "bursts" (unpaced), "rate" (open loop)
    setup: str
    concurrency: int
    round: int
    requests: int  # completed and verified by the load generator
    errors: int
    error_samples: list[str]
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # p50, p90, p99, max, mean; streams: whole stream
    ttfc_ms: dict[str, float] | None  # streams: time to the first event
    served: dict[str, int]  # requests per upstream, as the sidecar counted them
    cpu_s: dict[str, float]  # CPU seconds spent in the window, per process
    sidecar_cpu_us: float | None  # per request (or per stream)
    upstream_cpu_us: float | None  # per request, the baseline fakes only
    shadow_cpu_us: float | None  # the shadow fake, per copy it answered
    cpu_ratio: float | None  # sidecar / upstream
    shadow_sent: int | None
    shadow_skipped: int | None
    records_written: int | None
    records_dropped: int | None


@dataclass(frozen=True, slots=True)
class Load:
    """What a load generator reported for one window."""

    requests: int
    errors: int
    error_samples: list[str]
    seconds: float
    latency_ms: dict[str, float]
    ttfc_ms: dict[str, float] | None = None
    peak_open: int = 0
    sent: int | None = None  # every request the upstream saw, warm-ups and failures included
    samples_ms: list[float] | None = None  # the Python generator's raw latencies, for pooling
    ttfc_samples_ms: list[float] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    limit: float
    unit: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Samples:
    latency_ms: list[float]
    ttfc_ms: list[float]


class BenchError(Exception):
    """A process would not start, or a load generator failed outright."""


# --- processes ----------------------------------------------------------------------------------


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 1,000 streams need 2,000 sockets in the sidecar."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    # An unprivileged container may refuse; the many-streams check then shows the errors.
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (the recorder's SQLite thread included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # Fields after the command name, which may itself hold spaces and parentheses.
    rest = data[data.rindex(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def status_mb(pid: int, key: str) -> float | None:
    """VmHWM (peak RSS) or VmRSS from /proc/PID/status, in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@dataclass(slots=True)
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path | None
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid


def _slug(name: str) -> str:
    return name.replace("+", "-")


class Fleet:
    """Every process the bench starts, each in its own process group, all stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, Proc] = {}

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: list[str], *, quiet: bool = False) -> None:
        out = self.tmp / f"{_slug(name)}.out"
        err = None if quiet else self.tmp / f"{_slug(name)}.err"
        with open(out, "wb") as o, open(err or os.devnull, "wb") as e:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
                cwd=ROOT,
                start_new_session=True,  # a process group of its own: Ctrl-C is ours to relay
                preexec_fn=raise_nofile,
            )
        self.procs[name] = Proc(name, popen, out, err)

    def wait_ready(self, names: Sequence[str], pattern: re.Pattern[str], timeout: float) -> None:
        """Each process prints its URL on stdout once it listens."""
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.procs[name]
            while True:
                text = proc.out.read_text(errors="replace")
                m = pattern.search(text)
                if m is not None:
                    proc.url = m.group(1)
                    break
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    why = proc.err.read_text(errors="replace")[-2000:] if proc.err else ""
                    raise BenchError(f"{name} did not start (exit {proc.popen.poll()}):\n{why}")
                time.sleep(0.02)

    def stop_one(self, name: str, timeout: float = 8.0) -> None:
        proc = self.procs.pop(name)
        if proc.popen.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.popen.wait()

    def stop(self) -> None:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop()
        finally:
            signal.signal(signal.SIGINT, old)

    def _stop(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        # Sidecars drain within their shutdown and shadow grace (2 s each here).
        deadline = time.monotonic() + 8.0
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait()
        self.procs.clear()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def sidecar_config(
    setup: Setup, a_url: str, b_url: str, db: Path, *, pool: int = 256
) -> dict[str, Any]:
    upstreams: dict[str, Any] = {"a": {"base_url": a_url, "api_key": KEY_A, "pool": {"size": pool}}}
    if setup.shadow or setup.split:
        # The second upstream names its models differently, as a new gateway would: the
        # sidecar rewrites the body's model for it, which is part of what is measured.
        upstreams["b"] = {
            "base_url": b_url,
            "api_key": KEY_B,
            "models": {MODEL: f"openai/{MODEL}"},
            "pool": {"size": pool},
        }
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstreams": upstreams,
        "primary": "a",
        "split": {"a": 50, "b": 50} if setup.split else {"a": 100},
        "record": {"enabled": setup.record, "path": str(db)},
        "limits": {"shutdown_grace": 2, "shadow_grace": 2},
        "log": {"requests": setup.log},
        "metrics": {"enabled": setup.metrics},
    }
    if setup.shadow:
        # A cap above any concurrency here, so that 100% really is every request.
        cfg["shadow"] = {"upstream": "b", "sample": 1.0, "max_in_flight": 4096}
    return cfg


# --- HTTP from the orchestrator (tiny, synchronous) ---------------------------------------------


def http_call(
    base: str, method: str, path: str, body: bytes | None = None, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    try:
        conn.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def admin_root(url: str) -> str:
    return url.removesuffix("/v1")


def sidecar_stats(url: str) -> dict[str, Any]:
    status, _, body = http_call(admin_root(url), "GET", "/_proxy/stats")
    if status != 200:
        raise BenchError(f"/_proxy/stats answered {status}")
    stats: dict[str, Any] = orjson.loads(body)
    return stats


def settle(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until shadow copies are answered and every record is written, so that the
    window's CPU includes the work its requests caused after the load stopped."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        stats = sidecar_stats(url)
        recs = stats.get("records")
        written = recs["written"] + recs["dropped"] if recs else 0
        idle = stats["shadow"]["in_flight"] == 0 and (recs is None or recs["queue_depth"] == 0)
        if (idle and written == last) or time.monotonic() > deadline:
            return stats
        last = written if idle else -1
        time.sleep(0.06)  # longer than the recorder's 50 ms linger


# --- load generators ----------------------------------------------------------------------------

_WRK_LUA: Final = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = [==[%(body)s]==]
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def find_wrk(install: bool) -> str | None:
    path = shutil.which("wrk")
    if path is not None or not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return path
    print("wrk is missing: installing the Debian package (apt-get install wrk) ...", flush=True)
    install_wrk = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install_wrk, capture_output=True, timeout=300, check=False).returncode:
        # A machine whose package lists were never fetched knows no wrk yet.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300, check=False)
        subprocess.run(install_wrk, capture_output=True, timeout=300, check=False)
    return shutil.which("wrk")


class Generator:
    """Runs one window of load in a separate process and returns what it measured."""

    def __init__(self, wrk: str | None, tmp: Path) -> None:
        self.wrk = wrk
        self.tmp = tmp
        self.name = "wrk" if wrk else "python"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def requests(self, url: str, key: str, concurrency: int, seconds: int) -> Load:
        if self.wrk is None:
            return self.python(
                {"mode": "closed", "stream": False, "seconds": seconds, "concurrency": concurrency},
                url,
                key,
            )
        script = self.tmp / f"wrk-{key}.lua"
        if not script.exists():
            script.write_text(_WRK_LUA % {"key": key, "body": CHAT_BODY.decode()})
        cmd = [self.wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
        cmd += ["-s", str(script), f"{url}/chat/completions"]
        out = subprocess.run(
            cmd, capture_output=True, timeout=seconds + 60, preexec_fn=raise_nofile, check=False
        )
        text = out.stdout.decode(errors="replace")
        m = re.search(r"^BENCH (\{.*\})$", text, re.MULTILINE)
        if out.returncode != 0 or m is None:
            raise BenchError(f"wrk failed ({out.returncode}): {text}{out.stderr.decode()}")
        r = orjson.loads(m.group(1))
        errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
        samples = [
            f"{k}: {r[k]}" for k in ("connect", "read", "write", "status", "timeout") if r[k]
        ]
        return Load(
            requests=r["requests"] - r["status"],  # wrk counts non-2xx answers as requests too
            errors=errors,
            error_samples=samples,
            seconds=r["duration_us"] / 1e6,
            latency_ms={
                "p50": r["p50"] / 1000,
                "p90": r["p90"] / 1000,
                "p99": r["p99"] / 1000,
                "max": r["max"] / 1000,
                "mean": r["mean"] / 1000,
            },
        )

    def python(self, spec: dict[str, Any], url: str, key: str, expect: str = "") -> Load:
        """One window of the Python generator, which runs in a process of its own that stays
        up between windows (so its start-up is paid once)."""
        spec = {**spec, "url": f"{url}/chat/completions", "key": key, "expect": expect}
        proc = self._loader()
        if proc.stdin is None or proc.stdout is None:
            raise BenchError("the load generator has no pipes")
        proc.stdin.write(orjson.dumps(spec) + b"\n")
        proc.stdin.flush()
        budget = float(spec.get("seconds", 0)) + float(spec.get("timeout", 60)) + 30.0
        ready, _, _ = select.select([proc.stdout], [], [], budget)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise BenchError(f"the load generator gave no answer (exit {proc.poll()})")
        r = orjson.loads(line)
        if "fatal" in r:
            raise BenchError(f"the load generator failed: {r['fatal']}")
        return Load(
            requests=r["requests"],
            errors=r["errors"],
            error_samples=r["error_samples"],
            seconds=r["seconds"],
            latency_ms=r["latency_ms"],
            ttfc_ms=r["ttfc_ms"],
            peak_open=r["peak_open"],
            sent=r["sent"],
            samples_ms=r["samples_ms"],
            ttfc_samples_ms=r["ttfc_samples_ms"],
        )

    def _loader(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [PY, str(Path(__file__).resolve()), "_load"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=raise_nofile,
            )
        return self._proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of input: the generator exits
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _rank(xs: list[float], q: str) -> float:
    """Nearest-rank percentile ("p99") of unsorted values."""
    ys = sorted(xs)
    return round(ys[min(len(ys) - 1, max(0, math.ceil(float(q[1:]) / 100 * len(ys)) - 1))], 3)


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {
            "p50": math.nan,
            "p90": math.nan,
            "p99": math.nan,
            "max": math.nan,
            "mean": math.nan,
        }
    xs = sorted(seconds)
    n = len(xs)

    def rank(q: float) -> float:
        return xs[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0  # nearest rank

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": xs[-1] * 1000.0,
        "mean": sum(xs) / n * 1000.0,
    }


class _Verify(Exception):
    """A response that came back, but not as it should have."""


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    """The Python load generator: closed loop, open loop at a fixed rate, or a burst of streams.

    Closed and open loops first send one untimed request per connection: steady state is
    measured, not TCP handshakes (an app keeps its connections alive).
    """
    import aiohttp  # only the load generator's process needs it

    url: str = spec["url"]
    streaming: bool = spec["stream"]
    expect: str = spec["expect"]
    body = STREAM_BODY if streaming else CHAT_BODY
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {spec['key']}",
        **spec.get("headers", {}),
    }
    latencies: list[float] = []
    firsts: list[float] = []
    errors: list[str] = []
    sent = 0
    open_now = peak = 0

    async def request(session: aiohttp.ClientSession, start: float) -> float | None:
        async with session.post(url, data=body, headers=headers) as r:
            data = await r.read()
            if r.status != 200 or b'"choices"' not in data:
                raise _Verify(f"status {r.status}: {data[:200]!r}")
        return None

    async def stream(session: aiohttp.ClientSession, start: float) -> float | None:
        nonlocal open_now, peak
        first: float | None = None
        pieces: list[str] = []
        finish = None
        done = False
        async with session.post(url, data=body, headers=headers) as r:
            if r.status != 200 or not r.content_type.startswith("text/event-stream"):
                raise _Verify(f"status {r.status} {r.content_type}: {(await r.read())[:200]!r}")
            open_now += 1
            peak = max(peak, open_now)
            try:
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    if first is None:
                        first = time.perf_counter() - start
                    payload = line[5:].strip()
                    if done:
                        raise _Verify("an event after [DONE]")
                    if payload == b"[DONE]":
                        done = True
                        continue
                    obj = orjson.loads(payload)
                    choices = obj.get("choices")
                    if not choices:
                        raise _Verify(f"an event without choices: {payload[:200]!r}")
                    content = choices[0].get("delta", {}).get("content")
                    if content:
                        pieces.append(content)
                    finish = choices[0].get("finish_reason") or finish
            finally:
                open_now -= 1
        text = "".join(pieces)
        if not done or len(pieces) != spec["chunks"] or text != expect or finish != "stop":
            raise _Verify(
                f"incomplete or out of order: done={done} chunks={len(pieces)} "
                f"finish={finish} text_ok={text == expect}"
            )
        return first

    one = stream if streaming else request

    async def timed(
        session: aiohttp.ClientSession, start: float | None = None, keep: bool = True
    ) -> None:
        nonlocal sent
        t = time.perf_counter() if start is None else start
        try:
            first = await one(session, t)
        except (aiohttp.ClientError, TimeoutError, _Verify, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            return
        finally:
            sent += 1
        if keep:
            latencies.append(time.perf_counter() - t)
            if first is not None:
                firsts.append(first)

    mode = spec["mode"]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 60)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if mode == "closed":
            concurrency = int(spec["concurrency"])
            w0 = time.perf_counter()
            await asyncio.gather(*(timed(session, keep=False) for _ in range(concurrency)))
            # Streams last about the same time, so workers started together stay in lockstep:
            # every stream would begin in a burst of `concurrency` requests, and time to first
            # chunk would measure that queue. Spread the starts over one stream's duration.
            spread = (time.perf_counter() - w0) / concurrency if streaming else 0.0
            t0 = time.perf_counter()
            deadline = t0 + float(spec["seconds"])

            async def worker(i: int) -> None:
                await asyncio.sleep(i * spread)
                while time.perf_counter() < deadline:
                    await timed(session)

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elif mode == "rate":
            for _ in range(4):
                await timed(session, keep=False)
            # Open loop: latency counts from when a request was due, not from when it was
            # sent, so a stall in the generator or the server is not hidden (no coordinated
            # omission).
            rate = float(spec["rate"])
            tasks: list[asyncio.Task[None]] = []
            t0 = time.perf_counter()
            for i in range(int(rate * float(spec["seconds"]))):
                due = t0 + i / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(timed(session, due)))
            await asyncio.gather(*tasks)
        else:  # "ramp": `count` streams started evenly over `ramp` seconds, all left open
            count, ramp = int(spec["count"]), float(spec["ramp"])
            t0 = time.perf_counter()

            async def opener(i: int) -> None:
                await asyncio.sleep(ramp * i / count)
                await timed(session)

            await asyncio.gather(*(opener(i) for i in range(count)))
        elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "sent": sent,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "seconds": elapsed,
        "latency_ms": percentiles(latencies),
        "ttfc_ms": percentiles(firsts) if streaming else None,
        "peak_open": peak,
        "samples_ms": [round(x * 1000.0, 3) for x in latencies],
        "ttfc_samples_ms": [round(x * 1000.0, 3) for x in firsts],
    }


async def _serve_load() -> None:
    """One JSON spec per line on stdin, one JSON result per line on stdout, until EOF."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
        try:
            result = await _load(orjson.loads(line))
        except Exception as e:  # reported to the orchestrator, which stops the run
            result = {"fatal": f"{type(e).__name__}: {e}"}
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        sys.stdout.buffer.flush()


def loader_main() -> int:
    try:
        import uvloop  # the same event loop the sidecar runs on, when installed
    except ImportError:
        asyncio.run(_serve_load())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_load())
    return 0


# --- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, fleet: Fleet, gen: Generator, tmp: Path) -> None:
        self.plan = plan
        self.fleet = fleet
        self.gen = gen
        self.tmp = tmp
        self.windows: list[Window] = []
        # The Python generator's raw samples per (kind, configuration), pooled over rounds:
        # a p99 of 1,200 samples says more than the median of three p99s of 400.
        self.samples: dict[tuple[str, str], Samples] = {}
        self.expect = ""
        self.proxies: dict[str, list[str]] = {}  # every proxy process's command line
        self.configs: dict[str, dict[str, Any]] = {}  # every sidecar's config, as written
        # Per configuration, the highest peak RSS of the processes that ran it.
        self.peaks: dict[str, float] = {}

    # processes

    def start(self) -> None:
        fake = [PY, "-m", "proxy", "fake", "--port", "0", "--chunks", str(CHUNKS)]
        fakes = {
            "upstream-a": [
                *fake, "--name", "a", "--api-key", KEY_A, "--models", MODEL,
                "--chunk-delay", str(CHUNK_GAP),
            ],
            "upstream-b": [
                *fake, "--name", "b", "--api-key", KEY_B, "--models", f"openai/{MODEL}",
                "--chunk-delay", str(CHUNK_GAP), "--variant", "1",
            ],
            "upstream-slow": [
                *fake, "--name", "slow", "--api-key", KEY_A, "--models", MODEL,
                "--latency", str(self.plan.open_latency),
                "--chunk-delay", str(self.plan.open_gap),
            ],
        }  # fmt: skip
        for name, argv in fakes.items():
            self.fleet.spawn(name, argv)
        self.fleet.wait_ready(list(fakes), re.compile(r"^(http://\S+)$", re.MULTILINE), 60)
        a_url = self.fleet.procs["upstream-a"].url
        b_url = self.fleet.procs["upstream-b"].url
        sidecars: dict[str, dict[str, Any]] = {}
        for s in SETUPS:
            if s.sidecar and not s.bare:
                sidecars[s.name] = sidecar_config(s, a_url, b_url, self.tmp / f"{_slug(s.name)}.db")
        # Recording on, as shipped; a pool wide enough that every stream has its own
        # upstream connection (the default of 256 would queue the rest inside the sidecar).
        slow_url = self.fleet.procs["upstream-slow"].url
        sidecars[OPEN_STREAMS] = sidecar_config(
            Setup(OPEN_STREAMS, "", record=True),
            slow_url,
            slow_url,
            self.tmp / "open-streams.db",
            pool=self.plan.open_streams + 64,
        )
        for name, cfg in sidecars.items():
            self.configs[name] = cfg
            self.proxies[name] = [PY, "-m", "proxy", "serve", "--config", str(self._write(name))]
        for s in SETUPS:
            if s.bare:
                self.proxies[s.name] = [PY, str(ROOT / "scripts" / "bare_proxy.py"), a_url, KEY_A]
        self._spawn_proxies(list(self.proxies))

    def _write(self, name: str) -> Path:
        path = self.tmp / f"{_slug(name)}.yaml"
        path.write_bytes(
            orjson.dumps(self.configs[name], option=orjson.OPT_INDENT_2)
        )  # JSON is YAML
        return path

    def set_recording(self, name: str, on: bool) -> None:
        """Switch a running sidecar's recording by editing its config and asking for a reload."""
        self.configs[name]["record"]["enabled"] = on
        self._write(name)
        status, _, body = http_call(admin_root(self.url(name)), "POST", "/_proxy/reload")
        if status != 200:
            raise BenchError(f"sidecar {name!r} refused the reload: {status} {body[:300]!r}")
        settle(self.url(name))

    def _spawn_proxies(self, names: list[str]) -> None:
        for name in names:
            self.fleet.spawn(name, self.proxies[name], quiet=name == "sidecar+log")
        self.fleet.wait_ready(names, re.compile(r"listening on (http://\S+)"), 60)

    def fresh_proxies(self) -> None:
        """New processes for every measured proxy configuration (not the fakes).

        One process's CPU per request holds steady over its life (within ~5% round to round)
        but differs by up to ~15% from another process of the same configuration on this VM,
        the same code: placement and memory layout, not the work. With the processes kept for
        the whole run, every round sampled one pair of processes and the run's ratio was that
        pair's (recording on vs off: 1.04x in one run, 1.33x in the next). Fresh ones each
        round make the median over rounds a median over processes.
        """
        names = [n for n in self.proxies if n != OPEN_STREAMS]
        for name in names:
            self._note_peak(name)
            self.fleet.stop_one(name)
        self._spawn_proxies(names)
        self.check()
        if self.plan.warmup:
            for setup in SETUPS:
                if setup.name in names:
                    self.gen.requests(self.url(setup.name), self.key(setup.name), 64, 1)
                    if setup.sidecar:
                        settle(self.url(setup.name))

    def _note_peak(self, name: str) -> None:
        peak = status_mb(self.fleet.procs[name].pid, "VmHWM")
        if peak is not None:
            self.peaks[name] = max(peak, self.peaks.get(name, 0.0))

    def url(self, setup: str) -> str:
        name = "upstream-a" if setup == "direct" else setup
        return self.fleet.procs[name].url

    def key(self, setup: str) -> str:
        return KEY_A if setup == "direct" else KEY_CLIENT

    def check(self) -> None:
        """One request per configuration, before any timing: each answers, and as configured."""
        status, _, body = http_call(
            self.url("direct"), "POST", "/chat/completions", CHAT_BODY, KEY_A
        )
        if status != 200:
            raise BenchError(f"the fake upstream answered {status}: {body[:300]!r}")
        # Answers are pure functions of the request, so this is every stream's text too.
        self.expect = orjson.loads(body)["choices"][0]["message"]["content"]
        for name in [*BY_NAME, OPEN_STREAMS]:
            if name == "direct":
                continue
            status, headers, body = http_call(
                self.url(name), "POST", "/chat/completions", CHAT_BODY, KEY_CLIENT
            )
            if status != 200 or "x-sidecar-upstream" not in headers:
                raise BenchError(f"sidecar {name!r} answered {status}: {body[:300]!r}")

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p.pid) for name, p in self.fleet.procs.items()}

    # windows

    def measure(self, kind: str, setup: Setup, concurrency: int, rnd: int) -> Window:
        url, key = self.url(setup.name), self.key(setup.name)
        stats0 = sidecar_stats(url) if setup.sidecar else None
        cpu0 = self.cpu()
        if kind == "requests" or kind in TOGGLE_KINDS:
            load = self.gen.requests(url, key, concurrency, self.plan.seconds)
        elif kind in STREAM_KINDS:
            spec = {
                "mode": "closed",
                "stream": True,
                "chunks": CHUNKS,
                "seconds": self.plan.stream_seconds,
                "concurrency": concurrency,
                "headers": {} if kind == "streams" else BURST_HEADERS,
            }
            load = self.gen.python(spec, url, key, self.expect)
        else:
            spec = {
                "mode": "rate",
                "stream": False,
                "seconds": self.plan.rate_seconds,
                "rate": self.plan.rate,
            }
            load = self.gen.python(spec, url, key)
        if load.samples_ms is not None:
            pool = self.samples.setdefault((kind, setup.name), Samples([], []))
            pool.latency_ms.extend(load.samples_ms)
            pool.ttfc_ms.extend(load.ttfc_samples_ms or [])
        stats1 = settle(url) if setup.sidecar else None
        if not setup.sidecar:
            time.sleep(0.05)  # the fake finishes what the generator left in flight
        cpu1 = self.cpu()
        window = self._window(kind, setup, concurrency, rnd, load, stats0, stats1, cpu0, cpu1)
        self.windows.append(window)
        return window

    def _window(
        self,
        kind: str,
        setup: Setup,
        concurrency: int,
        rnd: int,
        load: Load,
        stats0: dict[str, Any] | None,
        stats1: dict[str, Any] | None,
        cpu0: dict[str, float],
        cpu1: dict[str, float],
    ) -> Window:
        spent = {name: round(cpu1[name] - cpu0[name], 4) for name in cpu0}
        served: dict[str, int]
        shadow_sent = shadow_skipped = written = dropped = None
        if stats0 is not None and stats1 is not None:
            # The sidecar's own count, which includes the requests wrk abandons at the end
            # of its window: the sidecar and the fake did serve them.
            served = {u: n - stats0["requests"].get(u, 0) for u, n in stats1["requests"].items()}
            sh0, sh1 = stats0["shadow"], stats1["shadow"]
            if setup.shadow:
                shadow_sent = sh1["sent"] - sh0["sent"]
                shadow_skipped = sh1["skipped_in_flight_cap"] - sh0["skipped_in_flight_cap"]
            if stats1["records"] is not None:
                written = stats1["records"]["written"] - stats0["records"]["written"]
                dropped = stats1["records"]["dropped"] - stats0["records"]["dropped"]
            sidecar_n = sum(served.values())
            sidecar_cpu = _per(spent[setup.name], sidecar_n)
        else:
            served = {"a": load.sent if load.sent is not None else load.requests}
            sidecar_cpu = None
        upstream_n = sum(served.get(u, 0) for u in setup.baseline)
        upstream_cpu = _per(sum(spent[f"upstream-{u}"] for u in setup.baseline), upstream_n)
        shadow_cpu = _per(spent["upstream-b"], shadow_sent) if setup.shadow else None
        ratio = (
            round(sidecar_cpu / upstream_cpu, 3)
            if sidecar_cpu is not None and upstream_cpu
            else None
        )
        return Window(
            kind=kind,
            setup=setup.name,
            concurrency=concurrency,
            round=rnd,
            requests=load.requests,
            errors=load.errors,
            error_samples=load.error_samples,
            seconds=round(load.seconds, 3),
            rps=round(load.requests / load.seconds, 1) if load.seconds else 0.0,
            latency_ms=_rounded(load.latency_ms),
            ttfc_ms=_rounded(load.ttfc_ms) if load.ttfc_ms is not None else None,
            served=served,
            cpu_s=spent,
            sidecar_cpu_us=sidecar_cpu,
            upstream_cpu_us=upstream_cpu,
            shadow_cpu_us=shadow_cpu,
            cpu_ratio=ratio,
            shadow_sent=shadow_sent,
            shadow_skipped=shadow_skipped,
            records_written=written,
            records_dropped=dropped,
        )

    def warmup(self) -> None:
        """Fill connection pools and first-use caches, so that round 1 is not the odd one out."""
        for setup in SETUPS:
            self.gen.requests(self.url(setup.name), self.key(setup.name), 64, 1)
            if setup.sidecar:
                settle(self.url(setup.name))

    def rounds(self, progress: Callable[[str], None]) -> None:
        n = len(SETUPS)
        for rnd in range(self.plan.rounds):
            if rnd > 0:
                progress(f"round {rnd + 1}: fresh proxy processes")
                self.fresh_proxies()
            # Round-robin, each round starting one configuration later, so that neither the
            # order nor drift favours one of them.
            order = [SETUPS[(i + rnd) % n] for i in range(n)]
            for c in self.plan.concurrencies:
                for setup in order:
                    w = self.measure("requests", setup, c, rnd)
                    progress(f"round {rnd + 1} c={c} {setup.name}: {w.rps:.0f} req/s")
            for setup in order:
                if setup.name in STREAM_SETUPS:
                    for kind in STREAM_KINDS:
                        c = 1 if kind == "single" else self.plan.stream_concurrency
                        w = self.measure(kind, setup, c, rnd)
                        progress(f"round {rnd + 1} {kind} {setup.name}: {w.rps:.0f} streams/s")
            # Alternating which goes first, so that drift within a round favours neither.
            for kind in TOGGLE_KINDS if rnd % 2 == 0 else TOGGLE_KINDS[::-1]:
                self.set_recording("record", kind == "toggle-on")
                w = self.measure(kind, BY_NAME["record"], self.plan.concurrencies[0], rnd)
                progress(f"round {rnd + 1} record, {kind}: {w.rps:.0f} req/s")
            self.set_recording("record", True)
            for setup in order:
                if setup.name in RATE_SETUPS:
                    w = self.measure("rate", setup, 0, rnd)
                    progress(
                        f"round {rnd + 1} {self.plan.rate}/s {setup.name}: "
                        f"p99 {w.latency_ms['p99']:.2f} ms"
                    )

    def open_streams(self) -> dict[str, Any]:
        proc = self.fleet.procs[OPEN_STREAMS]
        url = proc.url
        rss_before = status_mb(proc.pid, "VmRSS")
        cpu0 = cpu_seconds(proc.pid)
        spec = {
            "mode": "ramp",
            "stream": True,
            "chunks": CHUNKS,
            "count": self.plan.open_streams,
            "ramp": self.plan.open_ramp,
            "timeout": 120,
        }
        overflows0 = listen_overflows()
        load = self.gen.python(spec, url, KEY_CLIENT, self.expect)
        overflows = listen_overflows() - overflows0
        stats = settle(url)
        peak = status_mb(proc.pid, "VmHWM")
        count = self.plan.open_streams
        return {
            "streams": count,
            "verified": load.requests,
            "errors": load.errors,
            "error_samples": load.error_samples,
            "peak_open": load.peak_open,
            "seconds": round(load.seconds, 3),
            "ttfc_ms": _rounded(load.ttfc_ms) if load.ttfc_ms else None,
            "total_ms": _rounded(load.latency_ms),
            "rss_before_mb": _r(rss_before),
            "peak_rss_mb": _r(peak),
            "sidecar_cpu_us_per_stream": _per(cpu_seconds(proc.pid) - cpu0, count),
            "records_dropped": stats["records"]["dropped"] if stats["records"] else None,
            "listen_overflows": overflows,
            "ramp_s": self.plan.open_ramp,
            "upstream_latency_s": self.plan.open_latency,
            "upstream_chunk_delay_s": self.plan.open_gap,
            "nofile_soft_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }

    def processes(self) -> dict[str, dict[str, Any]]:
        """The last process of each configuration; peak RSS is the highest of all of them."""
        for name in self.fleet.procs:
            if name in self.proxies:
                self._note_peak(name)
        return {
            name: {
                "pid": p.pid,
                "peak_rss_mb": _r(
                    self.peaks.get(name) if name in self.peaks else status_mb(p.pid, "VmHWM")
                ),
                "cpu_s": round(cpu_seconds(p.pid), 2),
            }
            for name, p in self.fleet.procs.items()
        }


def listen_overflows() -> int:
    """Connections dropped machine-wide because a listen backlog was full (SYNs then retry
    after 1, 2, 4 ... s): the sign of a backlog too short for a burst of connects."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def _per(cpu: float, n: int | None) -> float | None:
    return round(cpu / n * 1e6, 1) if n else None


def _r(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in d.items()}


# --- summary and targets -----------------------------------------------------------------------


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return round(statistics.median(vals), 3) if vals else None


def summarise(
    windows: list[Window],
    kind: str,
    concurrency: int | None,
    samples: dict[tuple[str, str], Samples] | None = None,
) -> dict[str, Any]:
    """Medians over rounds per configuration; throughput ratios pair each round with its own
    `direct` window. Latency percentiles come from the pooled samples where there are some
    (the Python generator's windows); wrk's are medians over rounds."""
    mine = [w for w in windows if w.kind == kind and concurrency in (None, w.concurrency)]
    direct = {w.round: w for w in mine if w.setup == "direct"}
    out: dict[str, Any] = {}
    for name in [s.name for s in SETUPS]:
        ws = [w for w in mine if w.setup == name]
        if not ws:
            continue
        row: dict[str, Any] = {
            "rounds": len(ws),
            "requests": sum(w.requests for w in ws),
            "errors": sum(w.errors for w in ws),
            "error_samples": sorted({e for w in ws for e in w.error_samples})[:5],
            "rps": _median([w.rps for w in ws]),
            "x_direct": _median(
                [
                    w.rps / direct[w.round].rps
                    for w in ws
                    if direct.get(w.round) and direct[w.round].rps
                ]
            ),
            "p50_ms": _median([w.latency_ms["p50"] for w in ws]),
            "p90_ms": _median([w.latency_ms["p90"] for w in ws]),
            "p99_ms": _median([w.latency_ms["p99"] for w in ws]),
            "p99_spread_ms": round(
                max(w.latency_ms["p99"] for w in ws) - min(w.latency_ms["p99"] for w in ws), 3
            ),
            "sidecar_cpu_us": _median([w.sidecar_cpu_us for w in ws]),
            "upstream_cpu_us": _median([w.upstream_cpu_us for w in ws]),
            "cpu_ratio": _median([w.cpu_ratio for w in ws]),
            "shadow_cpu_us": _median([w.shadow_cpu_us for w in ws]),
            "served": {u: sum(w.served.get(u, 0) for w in ws) for u in ws[0].served},
        }
        if ws[0].shadow_sent is not None:
            row["shadow_sent"] = sum(w.shadow_sent or 0 for w in ws)
            row["shadow_skipped"] = sum(w.shadow_skipped or 0 for w in ws)
        if ws[0].records_written is not None:
            row["records_written"] = sum(w.records_written or 0 for w in ws)
            row["records_dropped"] = sum(w.records_dropped or 0 for w in ws)
        if kind in STREAM_KINDS:
            row["verified"] = row["requests"]
            row["ttfc_p50_ms"] = _median([w.ttfc_ms["p50"] for w in ws if w.ttfc_ms])
            row["ttfc_p99_ms"] = _median([w.ttfc_ms["p99"] for w in ws if w.ttfc_ms])
        pooled = (samples or {}).get((kind, name))
        if pooled is not None and pooled.latency_ms:
            row["pooled_samples"] = len(pooled.latency_ms)
            for q in ("p50", "p90", "p99"):
                row[f"{q}_ms"] = _rank(pooled.latency_ms, q)
            if pooled.ttfc_ms:
                row["ttfc_p50_ms"] = _rank(pooled.ttfc_ms, "p50")
                row["ttfc_p99_ms"] = _rank(pooled.ttfc_ms, "p99")
        if kind in STREAM_KINDS and row["sidecar_cpu_us"] is not None:
            row["sidecar_cpu_us_per_chunk"] = round(row["sidecar_cpu_us"] / (CHUNKS + 1), 2)
        out[name] = row
    return out


def _target(name: str, value: float | None, limit: float, unit: str, detail: str) -> Target:
    passed = value is not None and not math.isnan(value) and value <= limit
    return Target(name, None if value is None else round(value, 3), limit, unit, passed, detail)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_round(windows: Sequence[Window], c: int, a: str, b: str) -> list[float]:
    """CPU per request of `a` over `b`, round by round (their windows ran back to back): the
    spread shows how much of a difference between two configurations is this machine."""
    by_round: dict[int, dict[str, float]] = {}
    for w in windows:
        if w.kind == "requests" and w.concurrency == c and w.sidecar_cpu_us is not None:
            by_round.setdefault(w.round, {})[w.setup] = w.sidecar_cpu_us
    return [
        round(r[a] / r[b], 2) for _, r in sorted(by_round.items()) if a in r and b in r and r[b]
    ]


def _toggle_rounds(windows: Sequence[Window]) -> list[float]:
    """Recording on over off in the one `record` process, round by round."""
    by_round: dict[int, dict[str, float]] = {}
    for w in windows:
        if w.kind in TOGGLE_KINDS and w.sidecar_cpu_us is not None:
            by_round.setdefault(w.round, {})[w.kind] = w.sidecar_cpu_us
    return [
        round(r["toggle-on"] / r["toggle-off"], 3)
        for _, r in sorted(by_round.items())
        if r.get("toggle-off") and "toggle-on" in r
    ]


def targets(
    summary: dict[str, Any], open_streams: dict[str, Any], windows: Sequence[Window] = ()
) -> list[Target]:
    out: list[Target] = []
    for c, rows in summary["requests"].items():
        rec, off, sh = (
            rows.get("record", {}),
            rows.get("sidecar", {}),
            rows.get("record+shadow", {}),
        )
        out.append(
            _target(
                f"record: sidecar CPU/request vs upstream's (c={c})",
                rec.get("cpu_ratio"),
                3.0,
                "x",
                "sidecar CPU per request / fake upstream CPU per request, same window",
            )
        )
        out.append(
            _target(
                f"recording on vs off: CPU/request (c={c})",
                _ratio(rec.get("sidecar_cpu_us"), off.get("sidecar_cpu_us")),
                1.15,
                "x",
                f"{rec.get('sidecar_cpu_us')} us vs {off.get('sidecar_cpu_us')} us; round by "
                f"round {_per_round(windows, int(c), 'record', 'sidecar')}",
            )
        )
        for on, off_name, label in (
            ("sidecar+metrics", "sidecar", "metrics on vs off"),
            ("record+metrics", "record", "metrics on vs off, recording on"),
        ):
            met, base = rows.get(on, {}), rows.get(off_name, {})
            out.append(
                _target(
                    f"{label}: CPU/request (c={c})",
                    _ratio(met.get("sidecar_cpu_us"), base.get("sidecar_cpu_us")),
                    1.05,
                    "x",
                    f"{met.get('sidecar_cpu_us')} us vs {base.get('sidecar_cpu_us')} us; round "
                    f"by round {_per_round(windows, int(c), on, off_name)}",
                )
            )
        out.append(
            _target(
                f"100% shadow vs unshadowed (both recording): CPU/request (c={c})",
                _ratio(sh.get("sidecar_cpu_us"), rec.get("sidecar_cpu_us")),
                2.2,
                "x",
                f"{sh.get('sidecar_cpu_us')} us vs {rec.get('sidecar_cpu_us')} us; round by "
                f"round {_per_round(windows, int(c), 'record+shadow', 'record')}",
            )
        )
    toggle = summary.get("toggle", {})
    if toggle:
        rounds = _toggle_rounds(windows)
        out.append(
            _target(
                "recording on vs off, one process switched by reload: CPU/request "
                f"(c={toggle['concurrency']})",
                _median(rounds),
                1.15,
                "x",
                f"median of rounds {rounds}; {toggle['on'].get('sidecar_cpu_us')} us on vs "
                f"{toggle['off'].get('sidecar_cpu_us')} us off (medians)",
            )
        )
    rate = summary["fixed_rate"]
    rec, sh = rate.get("record", {}), rate.get("record+shadow", {})
    if rec.get("p99_ms") is not None and sh.get("p99_ms") is not None:
        # "Within noise": 20% of the unshadowed p99, or the spread its own rounds showed.
        band = max(0.2 * rec["p99_ms"], rec["p99_spread_ms"])
        out.append(
            _target(
                "100% shadow: primary p99 change at a fixed rate",
                sh["p99_ms"] - rec["p99_ms"],
                round(band, 3),
                "ms",
                f"p99 {sh['p99_ms']} ms with shadow vs {rec['p99_ms']} ms without; "
                "limit = noise band (max of 20% and round-to-round spread)",
            )
        )
    streams, bursts = summary["streams"], summary.get("bursts", {})
    single = summary.get("single", {})
    direct = streams.get("direct", {}).get("ttfc_p50_ms")
    direct1 = single.get("direct", {}).get("ttfc_p50_ms")
    bare = streams.get("bare", {}).get("sidecar_cpu_us_per_chunk")
    for name in ("sidecar", "record"):
        row = streams.get(name, {})
        ttfc = row.get("ttfc_p50_ms")
        out.append(
            _target(
                f"streams through {name}: time to first chunk p50 over direct",
                ttfc - direct if ttfc is not None and direct is not None else None,
                1.5,
                "ms",
                f"{ttfc} ms vs {direct} ms direct (bare aiohttp relay: "
                f"{streams.get('bare', {}).get('ttfc_p50_ms')} ms), concurrency 16",
            )
        )
        ttfc1 = single.get(name, {}).get("ttfc_p50_ms")
        out.append(
            _target(
                f"one stream at a time through {name}: time to first chunk p50 over direct",
                ttfc1 - direct1 if ttfc1 is not None and direct1 is not None else None,
                1.5,
                "ms",
                f"{ttfc1} ms vs {direct1} ms direct (bare aiohttp relay: "
                f"{single.get('bare', {}).get('ttfc_p50_ms')} ms)",
            )
        )
        # The per-chunk formula: a whole stream of CHUNKS + 1 events within 1.3x of
        # one request. Met where events arrive together (bursts); paced events cost a wake-up
        # each, so for those the yardstick is the bare aiohttp relay's cost per chunk.
        nonstream = summary["requests"].get("16", {}).get(name, {}).get("sidecar_cpu_us")
        per_chunk = bursts.get(name, {}).get("sidecar_cpu_us_per_chunk")
        limit = 1.3 * nonstream / (CHUNKS + 1) if nonstream else None
        out.append(
            _target(
                f"bursts through {name}: CPU per relayed chunk vs 1.3x non-stream/(chunks+1)",
                _ratio(per_chunk, limit / 1.3 if limit else None),
                1.3,
                "x",
                f"{per_chunk} us per chunk; limit {limit and round(limit, 2)} us "
                f"(1.3 x {nonstream} us / {CHUNKS + 1})",
            )
        )
        paced = row.get("sidecar_cpu_us_per_chunk")
        out.append(
            _target(
                f"paced streams through {name}: CPU per relayed chunk vs the bare aiohttp relay's",
                _ratio(paced, bare),
                1.3,
                "x",
                f"{paced} us vs {bare} us per chunk, 10 ms between events",
            )
        )
    count = open_streams["streams"]
    ok = (
        open_streams["errors"] == 0
        and open_streams["verified"] == open_streams["peak_open"] == count
    )
    rss = open_streams["peak_rss_mb"]
    t = _target(
        f"{open_streams['streams']} concurrent open streams: sidecar peak RSS, no error",
        rss,
        150.0,
        "MB",
        f"{open_streams['verified']}/{open_streams['streams']} verified, "
        f"{open_streams['errors']} errors, peak open {open_streams['peak_open']}",
    )
    out.append(Target(t.name, t.value, t.limit, t.unit, t.passed and ok, t.detail))
    return out


# --- output -------------------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


Column = tuple[str, str, str]  # header, key in a summary row, format

REQUEST_COLUMNS: Final[list[Column]] = [
    ("req/s", "rps", "{:.0f}"),
    ("x direct", "x_direct", "{:.2f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("sidecar us/req", "sidecar_cpu_us", "{:.0f}"),
    ("upstream us/req", "upstream_cpu_us", "{:.0f}"),
    ("sidecar/upstream", "cpu_ratio", "{:.2f}"),
    ("errors", "errors", "{}"),
]
STREAM_COLUMNS: Final[list[Column]] = [
    ("streams/s", "rps", "{:.0f}"),
    ("ttfc p50", "ttfc_p50_ms", "{:.2f}"),
    ("ttfc p99", "ttfc_p99_ms", "{:.2f}"),
    ("total p50", "p50_ms", "{:.2f}"),
    ("total p99", "p99_ms", "{:.2f}"),
    ("sidecar us/stream", "sidecar_cpu_us", "{:.0f}"),
    ("us/chunk", "sidecar_cpu_us_per_chunk", "{:.1f}"),
    ("upstream us/stream", "upstream_cpu_us", "{:.0f}"),
    ("verified", "verified", "{}"),
    ("errors", "errors", "{}"),
]
RATE_COLUMNS: Final[list[Column]] = [
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("sidecar us/req", "sidecar_cpu_us", "{:.0f}"),
    ("errors", "errors", "{}"),
]


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _rows(rows: dict[str, Any], columns: list[Column]) -> str:
    return _table(
        ["config", *(h for h, _, _ in columns)],
        [[name, *(_f(r.get(k), fmt) for _, k, fmt in columns)] for name, r in rows.items()],
    )


def render(result: dict[str, Any]) -> str:
    meta, plan, summary = result["meta"], result["plan"], result["summary"]
    m = meta["machine"]
    load = "/".join(f"{x:.1f}" for x in m["loadavg_start"][:1] + m.get("loadavg_end", [])[:1])
    out = [
        f"llm-sidecar bench {meta['started']}: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"load generator {meta['generator']}, {plan['rounds']} round(s), medians",
        f"machine: load average {load} (start/end), one sleep-and-wake costs "
        f"{m['wakeup_cpu_us']} us of CPU here (a few us on bare metal)",
        "",
    ]
    for c, rows in summary["requests"].items():
        out.append(f"Non-streaming POST /v1/chat/completions, concurrency {c}")
        out.append(_rows(rows, REQUEST_COLUMNS))
        sh = rows.get("record+shadow")
        if sh is not None:
            out.append(
                "  record+shadow: upstream = the primary fake only; the shadow fake (a process "
                f"of its own) spent {_f(sh['shadow_cpu_us'], '{:.0f}')} us per copy "
                f"({sh.get('shadow_sent')} sent, {sh.get('shadow_skipped')} skipped)"
            )
        sp = rows.get("split")
        if sp is not None:
            out.append(f"  split: upstream = both fakes; served {sp['served']}")
        out.append("")
    out.append(
        f"Streams of {CHUNKS} content chunks + [DONE], concurrency {plan['stream_concurrency']}, "
        "each verified complete and in order (times in ms)"
    )
    out.append(_rows(summary["streams"], STREAM_COLUMNS))
    out.append("")
    if summary.get("bursts"):
        out.append("The same streams as bursts: no gap between events (x-fake-chunk-delay: 0)")
        out.append(_rows(summary["bursts"], STREAM_COLUMNS))
        out.append("")
    if summary.get("single"):
        out.append("One burst at a time (concurrency 1): the hop's own time to first chunk")
        out.append(_rows(summary["single"], STREAM_COLUMNS))
        out.append("")
    toggle = summary.get("toggle")
    if toggle:
        out.append(
            f"Recording switched off and on by reload in the one `record` process, concurrency "
            f"{toggle['concurrency']}: {_f(toggle['off']['sidecar_cpu_us'], '{:.0f}')} us/req off, "
            f"{_f(toggle['on']['sidecar_cpu_us'], '{:.0f}')} us/req on "
            f"({toggle['off']['errors'] + toggle['on']['errors']} errors)"
        )
        out.append("")
    out.append(f"Open loop at {plan['rate']} req/s (latency counted from when a request was due)")
    out.append(_rows(summary["fixed_rate"], RATE_COLUMNS))
    o = result["open_streams"]
    out += [
        "",
        f"{o['streams']} concurrent streams through one sidecar (recording on): "
        f"{o['verified']}/{o['streams']} verified, {o['errors']} errors, peak open "
        f"{o['peak_open']}, sidecar RSS {_f(o['rss_before_mb'])} MB before, peak "
        f"{_f(o['peak_rss_mb'])} MB, {o['seconds']:.1f} s",
        "",
        "Peak RSS (VmHWM) per process: "
        + ", ".join(f"{n} {_f(p['peak_rss_mb'])} MB" for n, p in result["processes"].items()),
        "",
        "Targets (informational)",
    ]
    for t in result["targets"]:
        value = _f(t["value"], "{:.2f}")
        out.append(
            f"  {'PASS' if t['passed'] else 'MISS'}  {t['name']}: {value} {t['unit']} "
            f"(limit {t['limit']}) - {t['detail']}"
        )
    return "\n".join(out)


def _delta(x: Any, y: Any) -> str:
    if isinstance(x, int | float) and isinstance(y, int | float) and x:
        return f"{(y - x) / x * 100:+.0f}%"
    return "-"


def compare(a_path: str, b_path: str) -> str:
    """Two result files side by side: each cell is `A -> B (change)`."""
    a, b = (orjson.loads(Path(p).read_bytes()) for p in (a_path, b_path))
    out = [f"A: {a_path} ({a['meta']['started']})", f"B: {b_path} ({b['meta']['started']})", ""]
    keys = {"rps", "p50_ms", "p99_ms", "ttfc_p50_ms", "sidecar_cpu_us", "cpu_ratio"}
    keys |= {"sidecar_cpu_us_per_chunk"}
    sections: list[tuple[str, dict[str, Any], dict[str, Any], list[Column]]] = [
        (f"requests, concurrency {c}", rows, b["summary"]["requests"].get(c, {}), REQUEST_COLUMNS)
        for c, rows in a["summary"]["requests"].items()
    ]
    sections.append(("streams", a["summary"]["streams"], b["summary"]["streams"], STREAM_COLUMNS))
    for kind in ("bursts", "single"):
        sections.append(
            (kind, a["summary"].get(kind, {}), b["summary"].get(kind, {}), STREAM_COLUMNS)
        )
    sections.append(
        ("open loop", a["summary"]["fixed_rate"], b["summary"]["fixed_rate"], RATE_COLUMNS)
    )
    for title, rows_a, rows_b, columns in sections:
        cols = [c for c in columns if c[1] in keys]
        body = []
        for name, ra in rows_a.items():
            rb = rows_b.get(name, {})
            cells = [name]
            for _, k, fmt in cols:
                x, y = ra.get(k), rb.get(k)
                cells.append(f"{_f(x, fmt)} -> {_f(y, fmt)} ({_delta(x, y)})")
            body.append(cells)
        out += [title, _table(["config", *(h for h, _, _ in cols)], body), ""]
    oa, ob = a["open_streams"], b["open_streams"]
    out.append(
        f"open streams: A {oa['verified']}/{oa['streams']}, peak RSS {oa['peak_rss_mb']} MB; "
        f"B {ob['verified']}/{ob['streams']}, peak RSS {ob['peak_rss_mb']} MB"
    )
    out.append("")
    tb = {t["name"]: t for t in b["targets"]}
    for t in a["targets"]:
        u = tb.get(t["name"], {})
        was = "PASS" if t["passed"] else "MISS"
        now = ("PASS" if u["passed"] else "MISS") if u else "----"
        out.append(
            f"  {was} -> {now}  {t['name']}: {_f(t['value'], '{:.2f}')} -> "
            f"{_f(u.get('value'), '{:.2f}')} {t['unit']}"
        )
    return "\n".join(out)


def wakeup_cost(n: int = 200) -> float:
    """CPU charged for one sleep-and-wake of an idle process (1 ms sleeps). A few us on bare
    metal; tens of us in some VMs, where it inflates every figure measured at low load."""
    before = time.process_time()
    for _ in range(n):
        time.sleep(0.001)
    return round((time.process_time() - before) / n * 1e6, 1)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "wakeup_cpu_us": wakeup_cost(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "loadavg_start": list(os.getloadavg()),
    }


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so `finally` stops every process the bench started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan.full(args.rounds, args.seconds)
    raise_nofile()
    wrk = None if args.generator == "python" else find_wrk(install=not args.no_install)
    if args.generator == "wrk" and wrk is None:
        print("error: wrk is not installed", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    out_path = Path(
        args.out or ROOT / "bench-results" / f"bench-{started.strftime('%Y%m%d-%H%M%S')}.json"
    )
    host = machine()
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["scripts/bench", *sys.argv[1:]]),
        "generator": "wrk" if wrk else "python (aiohttp, one process)",
        "machine": host,
        "chunks": CHUNKS,
        "chunk_gap_s": CHUNK_GAP,
    }

    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"  [{time.monotonic() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    with (
        _sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp,
        Fleet(Path(tmp)) as fleet,
        Generator(wrk, Path(tmp)) as gen,
    ):
        bench = Bench(plan, fleet, gen, Path(tmp))
        try:
            progress("starting fakes and sidecars")
            bench.start()
            bench.check()
            if plan.warmup:
                progress("warming up")
                bench.warmup()
            bench.rounds(progress)
            progress(f"{plan.open_streams} concurrent streams")
            open_streams = bench.open_streams()
            processes = bench.processes()
            progress("stopping")
        except KeyboardInterrupt:
            print("interrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    meta["seconds"] = round(time.monotonic() - t0, 1)
    progress("stopped")
    host["loadavg_end"] = list(os.getloadavg())
    summary = {
        "requests": {str(c): summarise(bench.windows, "requests", c) for c in plan.concurrencies},
        "streams": summarise(bench.windows, "streams", None, bench.samples),
        "bursts": summarise(bench.windows, "bursts", None, bench.samples),
        "single": summarise(bench.windows, "single", None, bench.samples),
        "fixed_rate": summarise(bench.windows, "rate", None, bench.samples),
    }
    off, on = (summarise(bench.windows, k, None).get("record") for k in TOGGLE_KINDS)
    if off and on:
        summary["toggle"] = {"concurrency": plan.concurrencies[0], "off": off, "on": on}
    result: dict[str, Any] = {
        "version": 1,
        "meta": meta,
        "plan": asdict(plan),
        "configs": {s.name: {**asdict(s), "baseline": list(s.baseline)} for s in SETUPS},
        "summary": summary,
        "open_streams": open_streams,
        "processes": processes,
        "targets": [asdict(t) for t in targets(summary, open_streams, bench.windows)],
        "windows": [asdict(w) for w in bench.windows],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    print(render(result))
    print(f"\nresults: {out_path} ({meta['seconds']} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_load"]:
        return loader_main()
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round, for the test")
    p.add_argument("--out", help="result JSON (default bench-results/bench-<timestamp>.json)")
    p.add_argument(
        "--compare", nargs=2, metavar=("A.json", "B.json"), help="print two runs side by side"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of the full run (default 3)")
    p.add_argument("--seconds", type=int, default=2, help="seconds per window (default 2)")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = p.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
