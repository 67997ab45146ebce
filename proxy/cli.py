"""Command line: serve, check, report, judge, smoke, replay, collect, fake, demo.

Each subcommand imports what it needs when it runs: `check` should not pay for aiohttp,
plotly or the SDK. No import here is deferred to dodge a cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, get_args

from proxy import __version__
from proxy import config as config_mod
from proxy.errors import ConfigError
from proxy.record.schema import StoreError


def run(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when installed: it halves the event loop's share of each request's CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# The sidecar's image holds what `serve` needs; these commands' packages are extras.
EXTRAS = {"report": ("plotly",), "demo": ("openai", "plotly")}


def _extra_missing(extra: str, what: str) -> bool:
    """Says which extra to install, before the command does any work, when it is missing."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(
            f"error: {what} needs {' and '.join(missing)}, not installed here: "
            f"pip install 'llm-sidecar[{extra}]'",
            file=sys.stderr,
        )
    return bool(missing)


def _serve(args: argparse.Namespace) -> int:
    from proxy import logs
    from proxy.serve import app

    cfg, _ = config_mod.load(args.config)
    logs.configure(cfg.log.level)
    try:
        return run(app.serve(args.config))
    except OSError as e:
        print(
            f"error: cannot listen on {cfg.listen.host}:{cfg.listen.port}: {e.strerror}",
            file=sys.stderr,
        )
        return 1


def _check(args: argparse.Namespace) -> int:
    cfg, text = config_mod.load(args.config)
    split = ", ".join(f"{k}: {v:g}" for k, v in cfg.default_split().items())
    print(
        f"{args.config}: ok (digest {config_mod.digest(text)}; primary {cfg.primary}; "
        f"split {{{split}}}; rollback {str(cfg.rollback).lower()})"
    )
    for caution in config_mod.cautions(cfg):
        print(f"  caution: {caution}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.html and _extra_missing("report", "--html"):
        return 2
    from proxy.report import build as report
    from proxy.report import html as report_html
    from proxy.report import text as report_text
    from proxy.report.recordings import expand
    from proxy.report.thresholds import ReportSettings

    settings, record = (
        config_mod.load_for_report(args.config) if args.config else (ReportSettings(), None)
    )
    db = args.db or ([[record.path]] if record is not None else None)
    if db is None:
        print(
            "error: name the recording with --db, or give --config to read its record.path",
            file=sys.stderr,
        )
        return 2
    try:
        flt = report.ReportFilter(
            since=report.parse_time(args.since) if args.since else None,
            until=report.parse_time(args.until) if args.until else None,
            route=args.route,
            model=args.model,
            revision=args.revision,
            replay=args.replay,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Unquoted, the shell expands a glob itself: nargs="+" takes every file it names.
    rep = report.build_report(expand([p for group in db for p in group]), flt, settings)
    with _reader_may_leave():
        if args.json:
            sys.stdout.buffer.write(report_text.render_json(rep) + b"\n")
        else:
            print(report_text.render_text(rep))
    if args.html:
        try:
            report_html.write_html(rep, args.html)
        except OSError as e:
            why = e.strerror if e.filename is not None else str(e)
            print(f"error: cannot write {args.html}: {why}", file=sys.stderr)
            return 2
        with _reader_may_leave():
            print(f"HTML report: {args.html}", file=sys.stderr if args.json else sys.stdout)
    return 0


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Output piped to a reader that stops early (`| head`) ends quietly, not in a traceback."""
    try:
        yield
        sys.stdout.flush()  # here, so a broken pipe raises inside the try and not at exit
    except BrokenPipeError:
        # As the `signal` docs advise for SIGPIPE: point stdout at devnull, so the flush
        # at exit has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _judge(args: argparse.Namespace) -> int:
    from proxy.judge import command as judge

    return judge.main(args)


def _smoke(args: argparse.Namespace) -> int:
    from proxy.smoke import command as smoke

    return smoke.main(args)


def _collect(args: argparse.Namespace) -> int:
    from proxy.collect import command as collect

    return collect.main(args)


def _replay(args: argparse.Namespace) -> int:
    from proxy.replay import command as replay

    return replay.main(args)


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="config.yaml", help="the sidecar's config")
    p.add_argument("--db", help="the recording (default: the config's record.path)")
    p.add_argument("--upstream", required=True, help="the candidate, under `upstreams`")
    p.add_argument("--since", help="only requests since: ISO time, unix seconds, or 2h / 3d")
    p.add_argument("--route", help="only this route's requests")
    p.add_argument("--model", help="only requests for this model (as the app named it)")
    p.add_argument("--limit", type=int, help="at most this many, the oldest first")
    p.add_argument("--rate", default="5/s", help="calls started at most: 5/s, 300/m (default 5/s)")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    p.add_argument(
        "--budget-usd", type=float, default=2.0,
        help="stop before a call that could pass this, by report.pricing (default 2.00)",
    )  # fmt: skip
    p.add_argument("--run", help="resume this run (its id is printed); default: a new run")
    p.add_argument(
        "--yes", "-y", action="store_true", help="send without asking (needed without a terminal)"
    )


def _collect_command(sub: Any) -> None:
    p = sub.add_parser(
        "collect", help="every pod's recording: a consistent snapshot from each sidecar, saved"
    )
    p.set_defaults(func=_collect)
    p.add_argument(
        "--from", dest="sources", action="append", required=True, metavar="URL",
        help="a sidecar's address, http://HOST:PORT (where it listens); repeat for each pod",
    )  # fmt: skip
    p.add_argument(
        "--key-env", metavar="VAR",
        help="the variable holding one of the sidecars' listen.keys (unset: no key is sent)",
    )  # fmt: skip
    p.add_argument("--out", default="recordings", help="where to save (default: recordings/)")


def _smoke_arguments(p: argparse.ArgumentParser) -> None:
    checks = ", ".join(get_args(config_mod.SmokeCheck))
    p.add_argument("--config", "-c", help="the sidecar's config, with the upstream to test")
    p.add_argument("--upstream", help="the upstream under `upstreams` to test")
    p.add_argument("--base-url", help="or any gateway's base URL (with /v1), without a config")
    p.add_argument(
        "--api-key-env", metavar="VAR", help="with --base-url: the variable that holds its key"
    )
    p.add_argument("--api-key", help="with --base-url: its key (--api-key-env keeps it off ps)")
    p.add_argument(
        "--api", default="openai", choices=("openai", "anthropic", "abstrakt"),
        help="with --base-url: the gateway's API shape (default: openai)",
    )  # fmt: skip
    p.add_argument(
        "--model", action="append", default=[], metavar="[KIND=]ID",
        help="a model to test, as the app names it; KIND is chat, embeddings or images "
        "(guessed from the id when left out); repeat for each",
    )  # fmt: skip
    p.add_argument("--only", metavar="CHECK,...", help=f"only these checks: {checks}")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _fake(args: argparse.Namespace) -> int:
    from proxy.fakes import cli as fakes

    return fakes.main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    if _extra_missing("demo", "the demo"):
        return 2
    from proxy.demo import run as demo

    return demo.main(args.rest)


_DB_HELP = (
    "the SQLite file the sidecar records into (default: the config's record.path); several, "
    "or a quoted glob such as 'recordings/*.db', are read as one recording"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-sidecar",
        description="A localhost sidecar that splits, shadows, records and rolls back LLM traffic.",
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the sidecar")
    s.add_argument(
        "--config", "-c", default="config.yaml", help="YAML config file (default: config.yaml)"
    )
    s.set_defaults(func=_serve)

    c = sub.add_parser("check", help="validate a config file and exit (non-zero when refused)")
    c.add_argument("--config", "-c", default="config.yaml")
    c.set_defaults(func=_check)

    r = sub.add_parser(
        "report", help="is the new gateway safe? a report from the recorded database"
    )
    r.add_argument("--db", nargs="+", action="append", metavar="PATH", help=_DB_HELP)
    r.add_argument(
        "--config",
        "-c",
        help="the sidecar's config: report.thresholds, report.pricing, record.path",
    )
    r.add_argument("--since", help="ISO time, unix seconds, or relative like 2h / 3d")
    r.add_argument("--until")
    r.add_argument("--route")
    r.add_argument("--model")
    r.add_argument("--revision")
    r.add_argument("--replay", metavar="RUN", help="only the exchanges one replay run sent")
    r.add_argument("--json", action="store_true", help="print JSON instead of tables")
    r.add_argument("--html", metavar="OUT", help="also write a self-contained HTML report")
    r.set_defaults(func=_report)

    j = sub.add_parser(
        "judge", help="is the new gateway as good? an LLM judges recorded pairs, both orders, blind"
    )
    j.add_argument(
        "--config", "-c", default="config.yaml", help="the sidecar's config, with a `judge` section"
    )
    j.add_argument("--db", help="the recording (default: the config's record.path)")
    j.add_argument("--since", help="only requests since: ISO time, unix seconds, or 2h / 3d")
    j.add_argument(
        "--yes", "-y", action="store_true", help="judge without asking (needed without a terminal)"
    )
    j.add_argument(
        "--retry-failed",
        action="store_true",
        help="send again the calls whose answer was not a verdict (they were paid for once)",
    )
    j.set_defaults(func=_judge)

    sm = sub.add_parser(
        "smoke", help="before any traffic: the migration checklist against one gateway, a row each"
    )
    _smoke_arguments(sm)
    sm.set_defaults(func=_smoke)

    rp = sub.add_parser(
        "replay", help="before any traffic: recorded requests sent again to a candidate"
    )
    _replay_arguments(rp)
    rp.set_defaults(func=_replay)
    _collect_command(sub)

    f = sub.add_parser("fake", help="run a fake OpenAI-compatible provider (for tests and demos)")
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(func=_fake)

    d = sub.add_parser(
        "demo", help="the whole product on local fakes: split, shadow, rollback, report"
    )
    d.add_argument("rest", nargs=argparse.REMAINDER)
    d.set_defaults(func=_demo)
    return p


def _standard_fds_open() -> None:
    """Started with stdin, stdout or stderr closed (`2>&-`, some daemon managers), the next
    file the process opened took that number: the event loop's epoll fd became fd 1, and the
    exit aborted. /dev/null holds the place instead (sys.stdout/stderr stay None: no output)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def main(argv: list[str] | None = None) -> int:
    _standard_fds_open()
    argv = sys.argv[1:] if argv is None else argv
    # These pass their own options through; argparse's REMAINDER drops a leading "--flag".
    if argv and argv[0] == "fake":
        from proxy.fakes import cli as fakes

        return fakes.main(argv[1:])
    if argv and argv[0] == "demo":
        return _demo(argparse.Namespace(rest=argv[1:]))
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as e:
        print(f"error: config refused\n{e}", file=sys.stderr)
        if (
            e.path == "config.yaml"
            and not os.path.exists(e.path)
            and os.path.exists("config.example.yaml")
        ):
            print(
                "start from the example: cp config.example.yaml config.yaml "
                "(or pass --config config.example.yaml)",
                file=sys.stderr,
            )
        return 2
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code
