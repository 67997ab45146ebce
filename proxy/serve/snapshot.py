"""`GET /_proxy/recording`: a consistent copy of the recording, streamed to `collect`.

Copying a live SQLite file (`kubectl cp`, `cp`) can miss what is still in its write-ahead log
or catch a page mid-write. SQLite's online backup API copies the database as one read
transaction sees it, so the copy is a whole recording as of one instant, while the recorder
goes on writing: in WAL mode a reader never blocks the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Final

from aiohttp import web

from proxy.errors import ErrorAnswer, NotFound

CHUNK: Final = 1 << 20
MEDIA_TYPE: Final = "application/vnd.sqlite3"

# One snapshot of a file at a time: each is a whole copy of the recording on disk, and two
# collects at once would only double that. Thread locks, since the copy runs in a thread;
# by file, since one process may run several sidecars (tests do).
_busy: dict[str, threading.Lock] = {}


class SnapshotBusy(ErrorAnswer):
    status = 409
    type = "invalid_request_error"
    code = "snapshot_in_progress"


def backup(source: str, target: str) -> None:
    """Copies the recording at `source` into a new file `target`, consistently.

    One backup step copies every page inside one read transaction. A stepwise copy would let
    the recorder's commits in between restart it from the first page, for ever on a busy pod.
    The copy leaves WAL mode, so it is one self-contained file.
    """
    src = sqlite3.connect(Path(source).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _snapshot(source: str) -> IO[bytes]:
    """The copy, open for reading and already unlinked: nothing is left behind on disk
    whatever happens to the download. Made beside the recording, on its (writable) volume."""
    if not os.path.exists(source):
        raise NotFound(
            "the recording's file is missing; the recorder makes it again on its next write"
        )
    busy = _busy.setdefault(os.path.realpath(source), threading.Lock())
    if not busy.acquire(blocking=False):
        raise SnapshotBusy("a snapshot of the recording is being made; try again when it is done")
    try:
        fd, target = tempfile.mkstemp(
            prefix=".snapshot-", suffix=".db", dir=os.path.dirname(os.path.abspath(source))
        )
        os.close(fd)
        try:
            backup(source, target)
            return open(target, "rb")  # the caller streams and closes it
        finally:
            with contextlib.suppress(OSError):
                os.unlink(target)
            with contextlib.suppress(OSError):
                os.unlink(target + "-journal")
    finally:
        busy.release()


async def send_recording(request: web.BaseRequest, source: str | None) -> web.StreamResponse:
    """Streams a snapshot of the recording at `source` (None: recording is off)."""
    if source is None:
        raise NotFound(
            "recording is off (record.enabled: false), so there is no recording to collect"
        )
    started = time.time()
    try:
        snapshot = await asyncio.to_thread(_snapshot, source)
    except (sqlite3.Error, OSError) as e:
        raise ErrorAnswer(f"could not copy the recording: {e}") from e
    with snapshot:
        size = os.fstat(snapshot.fileno()).st_size
        name = f"recording-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.db"
        response = web.StreamResponse(
            headers={
                "Content-Type": MEDIA_TYPE,
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Snapshot-At": f"{started:.3f}",
            }
        )
        await response.prepare(request)
        while chunk := await asyncio.to_thread(snapshot.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
    return response
