"""Retention: what keeps a recording bounded (age, rows, size), in short rounds beside the writer.

A round deletes the oldest exchanges with everything tied to them (responses, judgments,
replays), at most `CHUNK` per transaction, so the writer waits for one short transaction at
a time and never for a whole round; records still queued are in memory and never touched.
Revisions, guard trips and replay runs are kept: they are few, and the report needs them.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import aiosqlite
import structlog

from proxy.record.rollups import MINUTE, PRUNE

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Exchanges deleted per transaction at most: ~2 MB of rows with full bodies, a few ms.
CHUNK: Final = 500
# Retention runs in rounds (a minute apart by default), and the calls between two rounds
# still need room: a round finding the recording over HIGH_WATER of `max_size` deletes the
# oldest exchanges until it is under LOW_WATER. So what arrives between rounds stays under
# the cap as long as it is under a tenth of it (at 20 calls a second, a minute is ~4 MB).
HIGH_WATER: Final = 0.9
LOW_WATER: Final = 0.8

_DELETE_TIED = (
    "DELETE FROM responses WHERE exchange_id = ?",
    "DELETE FROM judgments WHERE exchange_id = ?",
    "DELETE FROM replays WHERE exchange_id = ?",
    "DELETE FROM exchanges WHERE id = ?",
)
_OLDER_THAN = "SELECT id, ts FROM exchanges WHERE ts < ? ORDER BY ts LIMIT ?"
_OLDEST = "SELECT id, ts FROM exchanges ORDER BY ts LIMIT ?"
# Responses whose exchange never made it (dropped, or deleted first) would otherwise stay forever.
_DELETE_ORPHANS = """DELETE FROM responses WHERE rowid IN (
    SELECT r.rowid FROM responses r WHERE r.ts < ?
    AND NOT EXISTS (SELECT 1 FROM exchanges e WHERE e.id = r.exchange_id) LIMIT ?)"""
_PRUNE_OBJECTS = """DELETE FROM objects WHERE rowid <=
    (SELECT rowid FROM objects ORDER BY rowid DESC LIMIT 1 OFFSET ?)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """The limits a recording is kept within; None is no limit."""

    max_age_days: float | None = None  # older exchanges are deleted
    max_rows: int | None = None  # only the newest exchanges are kept
    max_size: int | None = None  # bytes of the main file's pages in use plus the WAL file
    max_objects: int = 100_000  # object ids kept for the affinity

    @property
    def any(self) -> bool:
        return not (self.max_age_days is None and self.max_rows is None and self.max_size is None)


class Transact(Protocol):
    """Runs `work` on the recorder's connection under its lock; a database error is counted,
    logged and raised (see `Recorder._transact`)."""

    async def __call__(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T: ...


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a recording takes on disk, as far as retention can act on it."""

    used: int  # bytes of the main file's pages in use (its free pages are reused first)
    wal: int  # bytes of the -wal file

    @property
    def total(self) -> int:
        return self.used + self.wal


def wal_limit(max_size: int | None) -> int:
    """Bytes the WAL file is kept to: a small share of the cap, so the cap holds the data."""
    if max_size is None:
        return 64 << 20
    return max(256 << 10, min(64 << 20, max_size // 32))


async def bound_wal(db: aiosqlite.Connection, max_size: int | None) -> None:
    """Keeps the WAL from holding the growth the cap keeps out of the main file.

    SQLite checkpoints the WAL into the main file once it holds `wal_autocheckpoint` pages
    (1000 by default: 4 MB, too much under a cap of a few MB) and then writes it again from
    its start, but never shrinks the file: one long read (a report) that held checkpoints
    back would leave a large WAL for ever. `journal_size_limit` truncates it at each reset.
    """
    limit = wal_limit(max_size)
    async with db.execute("PRAGMA page_size") as cursor:
        row = await cursor.fetchone()
    page = int(row[0]) if row else 4096
    await db.execute(f"PRAGMA journal_size_limit = {limit}")
    await db.execute(f"PRAGMA wal_autocheckpoint = {max(64, min(1000, limit // page))}")


async def prune_objects(db: aiosqlite.Connection, before: float | None, keep: int) -> int:
    """The objects' table is the affinity's memory: no older than `before`, no more than `keep`."""
    n = 0
    if before is not None:
        async with db.execute("DELETE FROM objects WHERE ts < ?", (before,)) as cursor:
            n += max(cursor.rowcount, 0)
    async with db.execute(_PRUNE_OBJECTS, (keep,)) as cursor:
        n += max(cursor.rowcount, 0)
    await db.commit()
    return n


class Retention:
    """One round at a time (`round`): by age, then rows, then size; the writer's loop runs it."""

    def __init__(self, path: str, bounds: Bounds, transact: Transact) -> None:
        self._path = path
        self._wal = path + "-wal"
        self._bounds = bounds
        self._transact = transact
        self._one_round = asyncio.Lock()

    async def round(self) -> int:
        """Returns the number of exchanges deleted. One round at a time: two would each count
        the same excess of rows and delete it twice."""
        async with self._one_round:
            return await self._round()

    async def _round(self) -> int:
        b = self._bounds
        started = time.monotonic()
        by_age = by_rows = by_size = orphans = 0
        cutoff = None if b.max_age_days is None else time.time() - b.max_age_days * 86_400
        if cutoff is not None:
            while n := await self._delete(_OLDER_THAN, (cutoff, CHUNK)):
                by_age += n
            orphans += await self._orphans(cutoff)
        if b.max_rows is not None:
            by_rows = await self._keep_newest(b.max_rows)
        if b.max_size is not None:
            by_size = await self._shrink(b.max_size)
        if b.max_rows is not None or b.max_size is not None:
            oldest = await self._transact(_oldest_ts)
            if oldest is not None:
                orphans += await self._orphans(oldest)
        objects = await self._transact(lambda db: prune_objects(db, cutoff, b.max_objects))
        if by_age or by_rows or by_size or orphans or objects:
            after = await self._transact(self.measure)
            log.info(
                "recorder retention deleted exchanges",
                exchanges=by_age + by_rows + by_size,
                by_age=by_age,
                by_rows=by_rows,
                by_size=by_size,
                orphan_responses=orphans,
                objects=objects,
                size_bytes=after.total,
                max_size=b.max_size,
                seconds=round(time.monotonic() - started, 3),
                path=self._path,
            )
        return by_age + by_rows + by_size

    async def _keep_newest(self, keep: int) -> int:
        deleted = 0
        while (excess := await self._transact(_count) - keep) > 0:
            n = await self._delete(_OLDEST, (min(excess, CHUNK),))
            if not n:
                break
            deleted += n
        return deleted

    async def _shrink(self, cap: int) -> int:
        """Over HIGH_WATER of `cap`, deletes the oldest exchanges to LOW_WATER of it."""
        high, low = cap * HIGH_WATER, cap * LOW_WATER
        deleted = 0
        while True:
            size, held = await self._transact(self._checkpoint)
            # A WAL a reader holds is not held against the exchanges: deleting more could not
            # shrink it (deletes are written to it too), and it goes once the reader does.
            total = size.used if held else size.total
            if total <= low or (total <= high and not deleted):
                return deleted
            count = await self._transact(_count)
            # Rows differ in size (bodies); the average, remeasured after each pass, gets
            # there in a pass or two without deleting much past the mark.
            want = math.ceil((total - low) / max(size.used / max(count, 1), 1.0))
            done = 0
            while done < want and (n := await self._delete(_OLDEST, (min(want - done, CHUNK),))):
                done += n
            if not done:
                return deleted
            deleted += done

    async def _checkpoint(self, db: aiosqlite.Connection) -> tuple[Footprint, bool]:
        """Empties the WAL into the main file; the footprint then, and whether a reader held it.

        TRUNCATE waits (SQLite's busy handler) for readers still on the WAL, such as a report
        or a snapshot being sent; with the writer held up meanwhile, so it is not asked to:
        a held WAL stays, and the next round tries again.
        """
        wait = await _pragma(db, "busy_timeout")
        await db.execute("PRAGMA busy_timeout = 0")
        try:
            async with db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cursor:
                row = await cursor.fetchone()
        finally:
            await db.execute(f"PRAGMA busy_timeout = {wait}")
        return await self.measure(db), row is not None and row[0] == 1

    async def measure(self, db: aiosqlite.Connection) -> Footprint:
        # The size the cap is held to is the pages in use plus the WAL, not the main file's
        # size: deleting never shrinks that file (no VACUUM, which would rewrite all of it and
        # block the writer), but frees pages that SQLite fills before it grows the file. So the
        # file stops growing once the pages in use stay under the cap, and the used pages are
        # what a round has to bring down. The WAL is a file of its own, counted as it is.
        page_size = await _pragma(db, "page_size")
        used = (await _pragma(db, "page_count") - await _pragma(db, "freelist_count")) * page_size
        try:
            wal = os.stat(self._wal).st_size
        except FileNotFoundError:
            wal = 0
        return Footprint(used=used, wal=wal)

    async def _delete(self, select: str, params: tuple[Any, ...]) -> int:
        """Deletes one chunk of exchanges with the rows tied to them, in one short transaction."""

        async def work(db: aiosqlite.Connection) -> int:
            found = list(await db.execute_fetchall(select, params))
            if found:
                ids = [(row[0],) for row in found]
                for sql in _DELETE_TIED:
                    await db.executemany(sql, ids)
                minutes = {
                    "first": int(found[0][1] // MINUTE) - 1,
                    "last": int(found[-1][1] // MINUTE) + 1,
                }
                for sql in PRUNE:
                    await db.execute(sql, minutes)
                await db.commit()
            return len(found)

        return await self._transact(work)

    async def _orphans(self, before: float) -> int:
        async def work(db: aiosqlite.Connection) -> int:
            async with db.execute(_DELETE_ORPHANS, (before, CHUNK)) as cursor:
                n = cursor.rowcount
            await db.commit()
            return max(n, 0)

        deleted = 0
        while n := await self._transact(work):
            deleted += n
        return deleted


async def _pragma(db: aiosqlite.Connection, name: str) -> int:
    async with db.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def _count(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT count(*) FROM exchanges") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def _oldest_ts(db: aiosqlite.Connection) -> float | None:
    async with db.execute("SELECT min(ts) FROM exchanges") as cursor:
        row = await cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0])
