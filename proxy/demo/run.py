"""The whole product in one command, on local fakes: a canary split with shadowing, a rollback
halfway through a few hundred requests from the official `openai` SDK, then the report.

Everything runs as separate processes on 127.0.0.1, as it would beside a real app: two fake
providers, the sidecar in front of them, and this process playing the app and the operator.
This module is the command line; `live` starts the processes, `scenario` tells the story.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from proxy import config as config_mod
from proxy.demo.errors import DemoError
from proxy.demo.live import live
from proxy.demo.scenario import say
from proxy.demo.traffic import plan
from proxy.errors import ConfigError
from proxy.record.schema import StoreError
from proxy.report.build import ReportFilter, build_report
from proxy.report.html import write_html
from proxy.report.text import render_text

DEFAULT_REQUESTS: Final = 400
QUICK_REQUESTS: Final = 80


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m proxy demo",
        description=(
            "The whole product on local fakes, in under a minute: two fake providers, the sidecar "
            "splitting 90/10 and shadowing, a few hundred requests through the openai SDK, "
            "a rollback halfway, then the report. No keys, no internet, 127.0.0.1 only."
        ),
    )
    p.add_argument(
        "--requests", type=int, default=None, help=f"requests to send (default {DEFAULT_REQUESTS})"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REQUESTS} requests, for tests and a peek"
    )
    p.add_argument(
        "--dir", help="work dir for config, database, logs and report (default: a new temp dir)"
    )
    p.add_argument("--seed", type=int, default=3, help="seed for the traffic and the fakes")
    return p


def _workdir(arg: str | None) -> Path:
    if arg is None:
        return Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    path = Path(arg).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if (path / "sidecar.db").exists():
        raise DemoError(
            f"{path} already holds a sidecar.db from an earlier run; "
            "choose another --dir or delete it, so the report shows this run only"
        )
    return path


def _report(workdir: Path) -> bool:
    """Print the run's report and write its HTML beside the database; False when it cannot."""
    config_path = workdir / "config.yaml"
    db = workdir / "sidecar.db"
    html = workdir / "report.html"
    try:
        cfg, _ = config_mod.load(str(config_path))
        flt = ReportFilter(since=None, until=None, route=None, model=None, revision=None)
        rep = build_report(str(db), flt, cfg.report)
        say("\n" + render_text(rep))
        write_html(rep, str(html))
    except (ConfigError, StoreError, OSError) as e:
        print(f"\ndemo failed while building the report: {e}", file=sys.stderr)
        return False
    say(f"\nHTML report: {html}")
    say(f"Database:    {db}")
    say(f"Again:       python -m proxy report --db {db} --config {config_path}")
    return True


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    n = args.requests
    if n is None:
        n = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if n < 10:
        print("error: --requests must be at least 10", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        workdir = _workdir(args.dir)
    except (DemoError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(
        f"llm-sidecar demo: {n} requests from the openai SDK through the sidecar to two local "
        "fake providers.\n"
        f"Work dir (kept): {workdir}"
    )
    caught: list[int] = []
    try:
        with asyncio.Runner() as runner:
            problems = runner.run(live(workdir, plan(n, args.seed), args.seed, caught))
    except DemoError as e:
        print(
            f"\ndemo failed: {e}\n(every process the demo started is stopped; "
            f"work dir kept: {workdir})",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        name = signal.Signals(caught[0]).name if caught else "interrupt"
        print(
            f"\nstopped by {name}; every process the demo started is stopped too. "
            f"Work dir: {workdir}",
            file=sys.stderr,
        )
        return 128 + (caught[0] if caught else signal.SIGINT)

    if not _report(workdir):
        return 1
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    say(f"Done in {time.perf_counter() - t0:.1f} s.")
    return 1 if problems else 0
