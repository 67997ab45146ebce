"""structlog set up once: one JSON line per event on stderr, rendered by orjson.

The sink never raises into the caller: a request that logs must not fail because whoever read
stderr went away (`serve | head`, a log collector that died). Lines that can't be written are
counted (`/_proxy/stats` `log_lines_dropped`), and once the reader is gone for good stderr is
pointed at /dev/null, so nothing else in the process trips over it either.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any, BinaryIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Sink:
    """structlog's logger: writes each rendered line, whole, and survives a closed reader."""

    __slots__ = ("_file", "dropped")

    def __init__(self, file: BinaryIO | None) -> None:
        self._file = file
        self.dropped = 0

    def msg(self, message: bytes) -> None:
        file = self._file
        if file is None:
            self.dropped += 1
            return
        try:
            file.write(message + b"\n")
            file.flush()
        except BrokenPipeError:
            self.dropped += 1
            self._file = None
            gone(file)
        except (OSError, ValueError):  # a full non-blocking pipe, a closed file
            self.dropped += 1

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


def gone(file: IO[Any]) -> None:
    """The reader of `file` left: later writes, and the flush at exit, go to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, file.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass


# None when the process was started with stderr closed (`2>&-`): every line is dropped.
SINK = Sink(sys.stderr.buffer if sys.stderr is not None else None)


def configure(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        # The level filter is compiled into the logger class: a filtered call is a no-op method.
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: SINK,
        cache_logger_on_first_use=True,
    )
