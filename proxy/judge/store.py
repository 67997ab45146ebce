"""The judge's table in the recording: the file opened for its writes, one row per judge answer.

A row is written as soon as its answer is in, and only for an answer that came back (so was
paid for): a verdict, or a text that did not parse as one. Its key (exchange, the candidate's
role, judge model, which answer was shown first) is what a later run skips, so an interrupted
run resumes without sending a judged order again. A call that got no answer (an HTTP error,
a timeout) leaves no row: the next run sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from typing import Final, NamedTuple

import aiosqlite

from proxy.judge.outcome import Order
from proxy.judge.prompt import Winner
from proxy.record.schema import StoreError, check_version, migrate, user_version

# Seconds SQLite waits out the sidecar's write lock, held for one batch at a time.
BUSY_TIMEOUT: Final = 5.0


class Judgment(NamedTuple):
    """One judge answer: the `judgments` row, its fields in column order."""

    exchange_id: str
    role: str  # the candidate's: "shadow" or "noise"
    judge_model: str  # as `judge.model` names it
    shown_first: Order  # whose answer the judge saw as A
    judge_upstream: str
    candidate: str  # the upstream whose answer was judged against the primary's
    ts: float
    winner: Winner | None  # None: the answer was not a verdict, see `error`
    reason: str | None  # the judge's own words
    error: str | None
    prompt_tokens: int | None  # the judge's usage, None when it reported none
    completion_tokens: int | None


_INSERT: Final = f"INSERT OR REPLACE INTO judgments VALUES ({', '.join('?' * 12)})"


def _connect(path: str) -> sqlite3.Connection:
    """Never creates the file: a judge run on a mistyped path would only find it empty."""
    if not os.path.isfile(path):
        raise StoreError(
            f"no recording at {path} ({os.path.abspath(path)}): the sidecar makes it at its "
            "record.path, relative to the directory it runs in; name it with --db"
        )
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level="IMMEDIATE", check_same_thread=False
    )


async def open_recording(path: str) -> aiosqlite.Connection:
    """The recording at `path`, migrated to this sidecar's schema (as the sidecar would on
    start) so the judgments table is there. Raises `StoreError` when it isn't a recording."""
    try:
        # Opened on a worker thread, then handed to aiosqlite (see `writer.Recorder._open`).
        raw = await asyncio.to_thread(_connect, path)
        db = await aiosqlite.Connection(lambda: raw, 64)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the recording {path}: {exc}") from exc
    try:
        version = await user_version(db)
        check_version(path, version)
        if version == 0:
            raise StoreError(f"{path} is not a recording (schema version 0)")
        await migrate(db, path, version)
    except sqlite3.Error as exc:
        await _close(db)
        raise StoreError(f"cannot use the recording {path}: {exc}") from exc
    except BaseException:
        await _close(db)
        raise
    return db


async def add(db: aiosqlite.Connection, row: Judgment) -> None:
    """Write one judge answer at once: what is written is never sent again."""
    await db.execute(_INSERT, row)
    await db.commit()


async def _close(db: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.close()


async def close(db: aiosqlite.Connection) -> None:
    await _close(db)
