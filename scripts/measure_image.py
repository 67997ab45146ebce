"""What the sidecar's image would hold, and what an idle sidecar costs, measured without Docker.

    .venv/bin/python scripts/measure_image.py > docs/bench/fleet-YYYYMMDD.txt

Installs the package with no extras into a fresh venv without pip, as the Dockerfile's build
stage does (packages from the index or pip's cache), and reports its size on disk; the base
image's size comes on top. Then runs `python -m proxy serve` from that venv on
config.example.yaml, with the two fake providers it points at, and reads the sidecar's
resident memory from /proc: idle after start, and idle again after 200 requests.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def sh(*argv: str | Path, **kw: object) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, **kw
    ).stdout  # type: ignore[call-overload, no-any-return]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def install(work: Path) -> Path:
    wheels = work / "wheels"
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT)
    [wheel] = wheels.glob("*.whl")
    venv = work / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    sh(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "--quiet", wheel)
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        k: int(v)
        for k, v in re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", status, re.M)
    }


async def wait_health(url: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


async def traffic(base: str, n: int) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(f"{base}/v1/chat/completions", json=body) as r:
                await r.read()
                r.raise_for_status()


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def idle_memory(venv: Path, work: Path) -> list[str]:
    py = str(venv / "bin/python")
    old, new, port = free_port(), free_port(), free_port()
    config = (ROOT / "config.example.yaml").read_text().replace("port: 8787", f"port: {port}")
    (work / "config.yaml").write_text(config)
    env = {
        **os.environ,
        "OPENAI_UPSTREAM_URL": f"http://127.0.0.1:{old}/v1",
        "NEWGW_URL": f"http://127.0.0.1:{new}/v1",
    }
    fakes = [
        subprocess.Popen(
            [py, "-m", "proxy", "fake", "--name", name, "--port", str(at), "--models", model],
            stdout=subprocess.DEVNULL,
        )
        for name, at, model in (("old", old, "gpt-4o-mini"), ("new", new, "openai/gpt-4o-mini"))
    ]
    serve = subprocess.Popen(
        [py, "-m", "proxy", "serve", "--config", "config.yaml"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_health(f"{base}/_proxy/health"))
        time.sleep(3)
        started = memory(serve.pid)
        asyncio.run(traffic(base, 200))
        time.sleep(3)
        after = memory(serve.pid)
        extras = sh(py, "-c", "import importlib.util as u; print([m for m in ('plotly', 'openai') if u.find_spec(m)])")  # fmt: skip
    finally:
        for p in (serve, *fakes):
            p.terminate()
            p.wait(10)
    return [
        f"serve exited {serve.returncode} on SIGTERM; plotly/openai importable in the venv: {extras.strip()}",
        "sidecar memory (/proc/PID/status), config.example.yaml (recording on, shadow 25%):",
        f"  idle, 3 s after health answered: VmRSS {mb(started['VmRSS'])} (RssAnon {mb(started['RssAnon'])}, RssFile {mb(started['RssFile'])})",
        f"  idle, 3 s after 200 chat requests: VmRSS {mb(after['VmRSS'])} (RssAnon {mb(after['RssAnon'])}), peak VmHWM {mb(after['VmHWM'])}",
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        venv = install(work)
        site = next((venv / "lib").glob("python3*/site-packages"))
        packages = sorted(
            ((du(p), p.name) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")),
            reverse=True,
        )  # fmt: skip
        lines = [
            f"llm-sidecar image contents and idle memory, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
            f"command: .venv/bin/python scripts/measure_image.py  (commit {sh('git', '-C', ROOT, 'rev-parse', '--short', 'HEAD').strip()})",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; Python {platform.python_version()}",
            "",
            "pip install . (no extras) into a venv without pip, as the Dockerfile's build stage:",
            f"  the venv on disk: {du(venv) / 1e6:.1f} MB (site-packages {du(site) / 1e6:.1f} MB); the base image adds its own size",
            "  largest packages: " + ", ".join(f"{n} {s / 1e6:.1f} MB" for s, n in packages[:8]),
            "  installed: "
            + " ".join(sorted(d.name.removesuffix(".dist-info") for d in site.glob("*.dist-info"))),
            "",
            *idle_memory(venv, work),
        ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
