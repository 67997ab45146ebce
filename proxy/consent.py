"""Asking before spending: the commands that pay a provider (judge, replay) ask first."""

from __future__ import annotations

import sys


def confirm(question: str, verb: str, yes: bool) -> int | None:
    """None to go on, else the exit code: 2 without a terminal to ask on (unless `yes`), 1
    when the answer is no. `verb`: what `--yes` lets the command do, for the refusal."""
    if yes:
        return None
    if not sys.stdin.isatty():
        print(
            f"error: not asking without a terminal: pass --yes to {verb} (and pay for) them",
            file=sys.stderr,
        )
        return 2
    try:
        answer = input(f"{question} [y/N] ")
    except (EOFError, KeyboardInterrupt):
        answer = ""
    if answer.strip().casefold() not in ("y", "yes"):
        print("Nothing sent.", flush=True)
        return 1
    return None
