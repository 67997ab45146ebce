"""Stopping a paid run (judge, replay) gently: the first SIGINT or SIGTERM lets what is in
flight finish and be kept, a second cancels it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Final

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, caught: list[int], what: str) -> Iterator[None]:
    """While inside, the first signal sets `stop`, a second cancels the current task; every
    signal is appended to `caught` (the exit code reads it). `what`: what is in flight."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def signalled(signum: int) -> None:
        caught.append(signum)
        if stop.is_set() and task is not None:
            task.cancel()
            return
        stop.set()
        print(
            f"\nstopping after the {what} in flight (their answers are kept); again to stop now",
            file=sys.stderr,
            flush=True,
        )

    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, signalled, signum)
    try:
        yield
    finally:
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
