"""The SQLite recorder: requests only enqueue records; one writer task batches them into the db.

Nothing here runs on the request path except `Recorder.exchange/response/revision`, which
never block and never raise. Every database failure ends as a counted, logged drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import aiosqlite
import structlog

from proxy.record.retention import Bounds, Footprint, Retention, bound_wal, prune_objects
from proxy.record.rows import Exchange, GuardTrip, Response, Revision, StoredObject
from proxy.record.schema import StoreError, check_version, migrate, user_version

log = structlog.get_logger(__name__)

# The sqlite3 module binds only exact int, float, str and bytearray directly. Every other
# parameter (None, bytes, bool: most of a record's columns) goes through its adapter lookup,
# which, finding nothing, raises and swallows two formatted AttributeErrors (`__adapt__`,
# `__conform__`): ~0.5 us a parameter, 40% of the writer's CPU. Registered adapters end the
# lookup at the first step and bind exactly what the fallback would have: NULL, the blob, 0/1.
# C callables, so no Python frame per parameter. Module-wide, so the report's reads (which
# bind nothing of these types) are unaffected.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # -> None
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b
sqlite3.register_adapter(bool, int)

T = TypeVar("T")
_Record = Exchange | Response | Revision | StoredObject | GuardTrip


# Bound parameters per statement: SQLite's limit is 32766 since 3.32, 999 before.
_MAX_PARAMS: Final = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


class _Insert:
    """Multi-row INSERTs for one record type: one statement, one step, for up to hundreds of rows.

    executemany steps once per row, and the sqlite3 module releases the GIL around every
    step: with the event loop busy, each row became a GIL hand-off between the two threads,
    which cost the loop more than the insert itself (~300 us per request at 1,300 req/s).
    """

    def __init__(self, verb: str, table: str, record: type[Any]) -> None:
        # Columns are the record's fields in order (CONVENTIONS: 1:1): a record is its own
        # row. Bools bind as 0/1.
        names = list(record._fields)
        self._head = f"{verb} INTO {table} ({', '.join(names)}) VALUES "
        self._row = "(" + ", ".join("?" * len(names)) + ")"
        # A power of two: see `statements`.
        self.chunk = 1 << (max(1, min(500, _MAX_PARAMS // len(names))).bit_length() - 1)
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = self._head + ",".join([self._row] * rows)
        return text

    def statements(self, records: list[Any]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Statements of a power of two rows each (37 rows: 32, 4 and 1), so that a table has
        a few statements, which stay in the connection's cache of prepared ones: one for each
        count of rows overflowed it under load, and preparing an INSERT codes its triggers too
        (see rollups.py), about a tenth of the writer's instructions."""
        i, n = 0, len(records)
        while i < n:
            size = min(self.chunk, 1 << ((n - i).bit_length() - 1))
            part = records[i : i + size]
            yield self.sql(size), tuple(itertools.chain.from_iterable(part))
            i += size


_EXCHANGES = _Insert("INSERT OR IGNORE", "exchanges", Exchange)
_RESPONSES = _Insert("INSERT OR REPLACE", "responses", Response)
_REVISIONS = _Insert("INSERT OR REPLACE", "revisions", Revision)
_OBJECTS = _Insert("INSERT OR REPLACE", "objects", StoredObject)
_TRIPS = _Insert("INSERT", "guard_trips", GuardTrip)

# A failed batch is tried this many times in all, `retry_interval` apart, then dropped.
_ATTEMPTS: Final = 3
_NEWEST_OBJECTS = "SELECT id, upstream FROM objects ORDER BY rowid DESC LIMIT ?"
# These leave the connection usable: wait and try again. Anything else (read-only, I/O error,
# file replaced, "no such table") gets a fresh connection, which also re-creates a deleted db.
_TRANSIENT: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL})
# aiosqlite raises ValueError once its connection is closed; StoreError comes from a reopen
# that found a newer schema.
_DB_ERRORS: Final = (sqlite3.Error, ValueError, OSError, StoreError)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterSettings:
    """How the recorder queues, batches, retries and forgets; checked once, when made."""

    queue_size: int = 10_000  # records waiting for the writer; past it they are dropped
    batch_size: int = 256  # records per transaction, at most
    max_age_days: float | None = None  # retention: older exchanges are deleted
    max_rows: int | None = None  # retention: only the newest exchanges are kept
    max_size: int | None = None  # retention: bytes in use + WAL, see `retention.Retention`
    retention_interval: float = 60.0  # seconds between retention rounds
    retry_interval: float = 1.0  # seconds between the tries of a failed batch
    busy_timeout: float = 1.0  # seconds SQLite waits out another process's lock
    linger: float = 0.25  # seconds a batch that isn't full waits for more records
    # Object ids kept for the affinity: no more than it remembers (the serving side passes
    # its `affinity.MAX_IDS`; the record doesn't import the serving package).
    max_objects: int = 100_000

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if self.max_age_days is not None and self.max_age_days <= 0:
            raise ValueError("max_age_days must be positive")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError("max_size must be at least 1")
        if (
            self.retention_interval <= 0
            or self.retry_interval < 0
            or self.busy_timeout < 0
            or self.linger < 0
        ):
            raise ValueError("intervals and timeouts must not be negative")
        if self.max_objects < 1:
            raise ValueError("max_objects must be at least 1")


_DEFAULTS: Final = WriterSettings()


@dataclass(frozen=True, slots=True)
class RecorderStats:
    written: int  # records committed
    dropped: int  # records lost: queue full, after close, failed batches, close timeout
    queue_depth: int
    batches: int  # transactions committed
    errors: int  # failed database attempts (a batch retried three times counts three)
    last_error: str | None


class _Throttled:
    """A warning logged at most once per `every` seconds, carrying the count it swallowed."""

    __slots__ = ("_event", "_every", "_next", "_pending")

    def __init__(self, event: str, every: float = 5.0) -> None:
        self._event = event
        self._every = every
        self._next = 0.0
        self._pending = 0

    def __call__(self, n: int, **context: object) -> None:
        self._pending += n
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            self.flush(**context)

    def flush(self, **context: object) -> None:
        if self._pending:
            log.warning(self._event, count=self._pending, **context)
            self._pending = 0


class Recorder:
    """Writes exchanges, responses and revisions to SQLite off the request path.

    `start()` raises `StoreError` if the database can't be opened or is from a newer
    version; after that, no database problem reaches the caller: it shows in `stats()`.
    """

    def __init__(self, path: str, settings: WriterSettings = _DEFAULTS) -> None:
        self._path = path
        self._bounds = Bounds(
            max_age_days=settings.max_age_days,
            max_rows=settings.max_rows,
            max_size=settings.max_size,
            max_objects=settings.max_objects,
        )
        self._retainer = Retention(path, self._bounds, self._transact)
        self._retention_interval = settings.retention_interval
        self._retry_interval = settings.retry_interval
        self._busy_timeout = settings.busy_timeout
        self._linger = settings.linger
        self._max_objects = settings.max_objects
        # Submitted, not yet taken by the writer. A list and three events rather than an
        # asyncio.Queue: put_nowait/get_nowait/task_done cost ~1 us a record, twice a request.
        self._pending: list[_Record] = []
        self._queue_size = settings.queue_size
        self._batch_size = settings.batch_size
        self._ready = asyncio.Event()  # something is pending (or close() was called)
        self._wake = asyncio.Event()  # a full batch is pending (or close()): ends the linger
        self._drained = asyncio.Event()  # nothing pending and no batch in the writer's hands
        self._drained.set()
        self._accepting = True
        self._closed = asyncio.Event()
        self._deadline: float | None = None  # set by close(): retries stop before it
        # The writer and retention share one connection; the lock keeps their
        # transactions (and reconnects) from interleaving.
        self._lock = asyncio.Lock()
        self._db: aiosqlite.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        self._reopen = False
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._batch: list[_Record] = []  # taken off the queue, not yet written or dropped

        self._written = 0
        self._dropped = 0
        self._batches = 0
        self._errors = 0
        self._last_error: str | None = None
        self._failing = False
        self._drop_log = _Throttled("recorder dropped records")
        self._error_log = _Throttled("recorder database error")

    # -- request path -------------------------------------------------------------------

    def submit(self, record: _Record) -> None:
        """Queue a row (Exchange, Response, Revision, StoredObject); never blocks, never raises."""
        if not self._accepting:
            self._drop(1, "recorder closed")
            return
        pending = self._pending
        n = len(pending)
        if n >= self._queue_size:
            self._drop(1, "queue full")
            return
        pending.append(record)
        if n == 0:
            self._ready.set()
            self._drained.clear()
        if n + 1 >= self._batch_size:
            self._wake.set()

    def _drop(self, n: int, reason: str) -> None:
        self._dropped += n
        self._drop_log(n, reason=reason, dropped_total=self._dropped)

    def stats(self) -> RecorderStats:
        return RecorderStats(
            written=self._written,
            dropped=self._dropped,
            queue_depth=len(self._pending),
            batches=self._batches,
            errors=self._errors,
            last_error=self._last_error,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is not None or not self._accepting:
            raise RuntimeError(f"recorder for {self._path} was already started or closed")
        try:
            async with self._lock:
                self._db = await self._open()
        except (sqlite3.Error, ValueError, OSError) as exc:
            raise StoreError(f"cannot open the recorder database {self._path}: {exc}") from exc
        self._writer = asyncio.create_task(self._write_loop(), name="recorder-writer")
        if self._bounds.any:
            self._retention = asyncio.create_task(self._retention_loop(), name="recorder-retention")

    # The bound is part of the contract: shutdown code calls close() with its own budget,
    # and close() must cancel its tasks and close the db when that budget runs out.
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Flush what was queued before the call, for up to `timeout` seconds, then close.

        A SQLite call already waiting on a lock can't be interrupted, so against a hung
        database close may overrun `timeout` by up to one `busy_timeout`.
        """
        if not self._accepting:
            await self._closed.wait()
            return
        self._accepting = False
        self._wake.set()
        self._ready.set()
        self._deadline = asyncio.get_running_loop().time() + timeout
        try:
            if self._writer is not None and not self._writer.done():
                try:
                    async with asyncio.timeout(timeout):
                        await self._drained.wait()
                except TimeoutError:
                    log.warning("recorder close timed out", timeout=timeout, path=self._path)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._writer, self._retention) if t is not None]
        for task in tasks:
            task.cancel()
        for task, result in zip(
            tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
        ):
            if isinstance(result, Exception):
                log.error("recorder task failed", task=task.get_name(), error=repr(result))
        lost = len(self._batch) + len(self._pending)
        self._batch = []
        self._pending.clear()
        if lost:
            self._drop(lost, "not flushed before close")
        await self._disconnect()
        self._drop_log.flush(reason="closing", dropped_total=self._dropped)
        self._error_log.flush(errors_total=self._errors, last_error=self._last_error)
        self._closed.set()

    # -- connection -----------------------------------------------------------------------

    async def _open(self) -> aiosqlite.Connection:
        # The file is opened in a worker thread and only then handed to aiosqlite: when
        # aiosqlite.connect() itself fails, its thread stops on its own time and may call
        # into the loop after the loop has closed (aiosqlite issue #241).
        raw = await asyncio.to_thread(self._connect)
        db = await aiosqlite.Connection(lambda: raw, 64)
        try:
            # Before anything that writes: switching to WAL rewrites the file's header, and a
            # file of a newer schema is to be left as it was.
            version = await user_version(db)
            check_version(self._path, version)
            async with db.execute("PRAGMA journal_mode=WAL") as cursor:
                row = await cursor.fetchone()
            mode = None if row is None else str(row[0]).lower()
            if mode != "wal":  # e.g. a network filesystem: still works, readers may block
                log.warning("recorder database is not in WAL mode", path=self._path, mode=mode)
            await db.execute("PRAGMA synchronous=NORMAL")
            # A primary answer written again (INSERT OR REPLACE) takes the one it replaces
            # out of the counts (rollups.py): SQLite fires delete triggers on a REPLACE only so.
            await db.execute("PRAGMA recursive_triggers=ON")
            await bound_wal(db, self._bounds.max_size)
            await migrate(db, self._path, version)
            stat = os.stat(self._path)
        except BaseException:
            await _close_quietly(db)
            raise
        self._file = (stat.st_dev, stat.st_ino)
        self._reopen = False
        return db

    def _connect(self) -> sqlite3.Connection:
        # `timeout` is SQLite's busy_timeout: a short lock held by another process (the
        # report, a backup) is waited out inside SQLite. "IMMEDIATE" makes the implicit
        # BEGIN before our first INSERT/DELETE take the write lock at once, so a batch
        # never fails half-way for a lock, and costs one thread hop per statement.
        # A missing directory is made, as for a new database file: SQLite would only say
        # "unable to open database file".
        parent = os.path.dirname(self._path)
        if parent:
            try:
                os.makedirs(parent, exist_ok=True)
            except FileExistsError:
                raise NotADirectoryError(f"{parent} is a file, not a directory") from None
        return sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level="IMMEDIATE",
            check_same_thread=False,  # opened here, used only on aiosqlite's thread
        )

    def _same_file(self) -> bool:
        # A deleted or replaced db file keeps taking writes through the open descriptor, into
        # nothing; only a stat of the path notices. One stat per batch is cheap.
        try:
            stat = os.stat(self._path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._file

    async def _connection(self) -> aiosqlite.Connection:
        if self._db is not None and not self._reopen and self._same_file():
            return self._db
        await self._disconnect()
        self._db = await self._open()
        log.info("recorder database reopened", path=self._path)
        return self._db

    async def _disconnect(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await _close_quietly(db)

    async def _failed(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._failing = True
        self._error_log(1, error=self._last_error, errors_total=self._errors, path=self._path)
        code = getattr(exc, "sqlite_errorcode", None)
        if self._db is not None and code is not None and (code & 0xFF) in _TRANSIENT:
            try:
                await self._db.rollback()
                return
            except _DB_ERRORS:
                pass
        self._reopen = True

    # -- writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        pending = self._pending
        size = self._batch_size
        while True:
            if not pending:
                self._drained.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            # A batch costs a fixed ~1-2 ms of CPU (a thread hop and wake-up per SQLite
            # call, a commit); lingering while the batch isn't full bounds that cost to
            # a few batches a second at any request rate.
            if self._linger and self._accepting and len(pending) < size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        await self._wake.wait()
            self._batch = batch = pending[:size]
            del pending[:size]
            try:
                await self._write(batch)
            except Exception:
                # A bug here must not end recording for the life of the process.
                log.exception("recorder batch failed", records=len(batch))
                self._drop(len(batch), "recorder bug")
            self._batch = []

    async def _write(self, batch: list[_Record]) -> None:
        exchanges: list[Exchange] = []
        responses: list[Response] = []
        revisions: list[Revision] = []
        objects: list[StoredObject] = []
        trips: list[GuardTrip] = []
        for record in batch:
            if isinstance(record, Response):
                responses.append(record)
            elif isinstance(record, Exchange):
                exchanges.append(record)
            elif isinstance(record, Revision):
                revisions.append(record)
            elif isinstance(record, StoredObject):
                objects.append(record)
            else:
                trips.append(record)
        loop = asyncio.get_running_loop()
        for attempt in range(1, _ATTEMPTS + 1):
            async with self._lock:
                try:
                    db = await self._connection()
                    for insert, records in (
                        (_EXCHANGES, exchanges),
                        (_RESPONSES, responses),
                        (_REVISIONS, revisions),
                        (_OBJECTS, objects),
                        (_TRIPS, trips),
                    ):
                        for sql, params in insert.statements(records):
                            await db.execute(sql, params)
                    await db.commit()
                except _DB_ERRORS as exc:
                    await self._failed(exc)
                else:
                    self._written += len(batch)
                    self._batches += 1
                    if self._failing:
                        self._failing = False
                        log.info("recorder writing again", path=self._path)
                    return
            if attempt == _ATTEMPTS or (
                self._deadline is not None and loop.time() + self._retry_interval >= self._deadline
            ):
                break
            await asyncio.sleep(self._retry_interval)
        self._drop(len(batch), "database error")

    # -- retention ------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self._retainer.round()
            except _DB_ERRORS:
                pass  # counted and logged by _failed; the next round tries again
            except Exception:
                log.exception("recorder retention failed")
            await asyncio.sleep(self._retention_interval)

    async def idle(self) -> None:
        """Returns once nothing is queued nor in the writer's hands."""
        await self._drained.wait()

    async def footprint(self) -> Footprint:
        """What the recording takes now: pages in use and the WAL (see `Retention`)."""
        return await self._transact(self._retainer.measure)

    async def retain(self) -> int:
        """One retention round now (the loop runs one every `retention_interval`): the number
        of exchanges it deleted."""
        return await self._retainer.round()

    async def _transact(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """`work` on the connection, under the lock; a database error is counted, then raised."""
        async with self._lock:
            try:
                return await work(await self._connection())
            except _DB_ERRORS as exc:
                await self._failed(exc)
                raise

    async def objects(self) -> list[tuple[str, str]]:
        """(id, upstream) of the objects recorded, oldest first, at most `max_objects`.

        Read at start, to give the affinity back what it knew; [] if the read fails. Older
        rows are deleted first: without retention configured, nothing else bounds the table.
        """
        keep = self._max_objects

        async def read(db: aiosqlite.Connection) -> list[tuple[str, str]]:
            await prune_objects(db, None, keep)
            rows = await db.execute_fetchall(_NEWEST_OBJECTS, (keep,))
            return [(str(r[0]), str(r[1])) for r in reversed(list(rows))]

        try:
            return await self._transact(read)
        except _DB_ERRORS:
            return []


async def _close_quietly(db: aiosqlite.Connection) -> None:
    try:
        await db.close()
    except _DB_ERRORS as exc:
        log.warning("recorder database close failed", error=repr(exc))
