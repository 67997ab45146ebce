"""The recordings one report reads: `--db` patterns expanded, each file opened read-only (an
older schema seen through views of today's), and two threads reading them, each on its own
connections, which all see the same snapshot of a live file.

sqlite3 lets go of the GIL while SQLite steps through a query, so two threads on two
connections use two cores; Python's share of the work (parsing the lists a query returns)
stays on one.
"""

from __future__ import annotations

import glob
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from proxy.record.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, check_version
from proxy.report.data import ReportFilter
from proxy.report.sql import Reading, tool_signature, tool_valid

WORKERS: Final = 2
_SNAPSHOT_TRIES: Final = 20
_CACHE_KIB: Final = 65_536  # SQLite's page cache per connection; the OS caches the file too

T = TypeVar("T")

# Columns that came after version 1, with the version that added them (see schema.py).
_ADDED: Final = {
    "exchanges": ((3, ("retry_key", "retry_count")),),
    "responses": ((3, ("cached_tokens", "images", "embedding_dims")),),
}
# Tables that came after version 1: (version that added them, its CREATE statement).
_LATER_TABLES: Final = tuple(
    (version + 1, statement)
    for version, migration in enumerate(MIGRATIONS)
    if version > 0
    for statement in migration
    if statement.startswith("CREATE TABLE") and "objects" not in statement
)


def expand(patterns: Sequence[str]) -> list[str]:
    """Every file the patterns name, in order, each once. A pattern with glob characters must
    match something; a plain path is kept as it is, for `open_recording` to refuse by name."""
    found: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(os.path.expanduser(pattern)))
            matched = [m for m in matched if not m.endswith(("-wal", "-shm", "-journal"))]
            if not matched:
                raise StoreError(f"--db {pattern}: no file matches the pattern")
            found += matched
        else:
            found.append(pattern)
    out: list[str] = []
    seen: set[Path] = set()
    for path in found:
        key = Path(path).resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def open_recording(path: str) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to the recording at `path` and its schema version; raises
    `StoreError` naming the file if it is missing, not a recording, or newer than ours."""
    where = Path(path).absolute()
    if not where.is_file():
        raise StoreError(
            f"no recording at {path} ({where}): the sidecar makes it at its record.path, "
            "relative to the directory it runs in; name it with --db"
        )
    try:
        con = sqlite3.connect(where.as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the recording {path}: {exc}") from exc
    try:
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        con.close()
        raise StoreError(f"{path} is not a recording: {exc}") from exc
    try:
        check_version(path, version)
        if version == 0 or not {"exchanges", "responses", "revisions"} <= tables:
            raise StoreError(f"{path} is not a recording: it has no sidecar schema")
        _compatible(con, version)
    except BaseException:
        con.close()
        raise
    con.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    con.create_function("tool_sig", 1, tool_signature, deterministic=True)
    con.create_function("tool_valid", 1, tool_valid, deterministic=True)
    return con, version


def _compatible(con: sqlite3.Connection, version: int) -> None:
    """Today's schema over an older file, in this connection's TEMP schema (which shadows the
    file's names and writes nothing to it): a view adding the later columns as NULL, which
    is what a migrated file reads for rows recorded before them, and empty later tables."""
    if version == SCHEMA_VERSION:
        return
    for table, added in _ADDED.items():
        missing = [c for since, columns in added if version < since for c in columns]
        if missing:
            extra = "".join(f", NULL AS {c}" for c in missing)
            con.execute(
                f"CREATE TEMP VIEW {table} AS SELECT rowid AS rowid, *{extra} FROM main.{table}"
            )
    for since, statement in _LATER_TABLES:
        if version < since:
            con.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))


def _snapshot(con: sqlite3.Connection) -> tuple[int, ...]:
    """What tells two connections' snapshots apart: the recorder only appends, so a commit
    between them moves a table's last rowid."""
    return tuple(
        int(con.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0])
        for table in ("exchanges", "responses", "revisions", "judgments", "guard_trips")
    )


class Recordings:
    """The files of one report, each opened once per worker thread in one read transaction."""

    def __init__(self, paths: Sequence[str], flt: ReportFilter, workers: int = WORKERS) -> None:
        self.paths = tuple(paths)
        self.versions: list[int] = []
        # sets[w][f]: worker w's reading of file f
        self.sets: list[list[Reading]] = [[] for _ in range(workers)]
        try:
            for path in self.paths:
                self._open(path, flt)
        except BaseException:
            self.close()
            raise
        self._free: queue.SimpleQueue[list[Reading]] = queue.SimpleQueue()
        for readings in self.sets:
            self._free.put(readings)
        self._mine = threading.local()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="report")

    def _open(self, path: str, flt: ReportFilter) -> None:
        first: tuple[int, ...] | None = None
        for readings in self.sets:
            con, version = open_recording(path)
            readings.append(Reading(con, flt))
            if first is None:
                self.versions.append(version)
            for _ in range(_SNAPSHOT_TRIES):
                con.execute("BEGIN")  # one read transaction: every figure from one snapshot
                seen = _snapshot(con)
                if first is None or seen == first:
                    first = seen
                    break
                con.execute("COMMIT")  # the recorder committed in between: look again
            else:
                raise StoreError(f"{path} changes too fast to read one snapshot of it")

    def primary(self, index: int) -> Reading:
        return self.sets[0][index]

    def _run(self, job: Callable[[list[Reading]], T]) -> T:
        readings = getattr(self._mine, "readings", None)
        if readings is None:
            readings = self._mine.readings = self._free.get()
        return job(readings)

    def map(self, jobs: Iterable[Callable[[list[Reading]], T]]) -> list[T]:
        """Runs each job with the worker's readings (one per file); results in job order."""
        return list(self.each(jobs))

    def each(self, jobs: Iterable[Callable[[list[Reading]], T]]) -> Iterator[T]:
        """`map`, each result yielded as soon as it and those before it are done, and
        dropped here: a caller that folds them in holds a few, not one per job."""
        futures = deque(self._pool.submit(self._run, job) for job in jobs)
        while futures:
            yield futures.popleft().result()

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for readings in self.sets:
            for reading in readings:
                reading.con.close()
