"""The recording's schema: its migrations, the one version check, and the report's read-only open.

A file of a newer schema is refused before anything is written to it, by the writer and the
report alike: this sidecar can't know what its writes would break there.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Final

import aiosqlite
import structlog

from proxy.record import rollups

log = structlog.get_logger(__name__)


class StoreError(Exception):
    """The recorder database can't be used: it won't open, or its schema is newer than ours."""


# MIGRATIONS[i] takes a database from `PRAGMA user_version` i to i + 1. Append, never edit.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE exchanges (
            id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            route TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            model TEXT,
            stream INTEGER NOT NULL,
            revision TEXT NOT NULL,
            sticky_key TEXT,
            request_body BLOB,
            request_sha256 TEXT
        )""",
        "CREATE INDEX exchanges_ts ON exchanges(ts)",
        "CREATE INDEX exchanges_revision ON exchanges(revision)",
        "CREATE INDEX exchanges_route_model ON exchanges(route, model)",
        """CREATE TABLE responses (
            exchange_id TEXT NOT NULL,
            role TEXT NOT NULL,
            upstream TEXT NOT NULL,
            model_sent TEXT,
            ts REAL NOT NULL,
            status INTEGER,
            error_kind TEXT,
            error TEXT,
            ttfb_ms REAL, ttft_ms REAL, total_ms REAL,
            bytes INTEGER NOT NULL,
            prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,
            finish_reason TEXT,
            stream_done INTEGER,
            shape TEXT,
            tool_calls TEXT,
            json_ok INTEGER,
            text_sha256 TEXT,
            response_body BLOB,
            response_sha256 TEXT,
            PRIMARY KEY (exchange_id, role)
        )""",
        "CREATE INDEX responses_upstream_role ON responses(upstream, role)",
        "CREATE INDEX responses_ts ON responses(ts)",
        """CREATE TABLE revisions (
            revision TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            rollback INTEGER NOT NULL,
            split TEXT NOT NULL,
            path TEXT NOT NULL
        )""",
    ),
    (
        # Which upstream made each object the app was given an id for (see `affinity`), so
        # that calls naming it still find it after a restart. The newest row has the highest
        # rowid (INSERT OR REPLACE), which is the order they are read back in.
        """CREATE TABLE objects (
            id TEXT PRIMARY KEY,
            upstream TEXT NOT NULL,
            ts REAL NOT NULL
        )""",
    ),
    (
        # Retries linked into calls, cached prompt tokens, images priced per image, and
        # embedding dimensions. Columns are appended, so old rows read NULL: not measured.
        "ALTER TABLE exchanges ADD COLUMN retry_key TEXT",
        "ALTER TABLE exchanges ADD COLUMN retry_count INTEGER",
        "ALTER TABLE responses ADD COLUMN cached_tokens INTEGER",
        "ALTER TABLE responses ADD COLUMN images INTEGER",
        "ALTER TABLE responses ADD COLUMN embedding_dims INTEGER",
        # Partial: most requests carry no key, and the report only looks up those that do.
        "CREATE INDEX exchanges_retry_key ON exchanges(retry_key) WHERE retry_key IS NOT NULL",
    ),
    (
        # `python -m proxy judge`: one row per judge answer received, so a pair is never
        # judged, nor paid for, twice by one judge model (see proxy/judge/store.py).
        """CREATE TABLE judgments (
            exchange_id TEXT NOT NULL,
            role TEXT NOT NULL,
            judge_model TEXT NOT NULL,
            shown_first TEXT NOT NULL,
            judge_upstream TEXT NOT NULL,
            candidate TEXT NOT NULL,
            ts REAL NOT NULL,
            winner TEXT,
            reason TEXT,
            error TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            PRIMARY KEY (exchange_id, role, judge_model, shown_first)
        )""",
    ),
    (
        # The guard's trips (`serve/guard.py`): the report says when an upstream was taken
        # out of rotation, and why.
        """CREATE TABLE guard_trips (
            upstream TEXT NOT NULL,
            rule TEXT NOT NULL,
            figures TEXT NOT NULL,
            ts REAL NOT NULL,
            revision TEXT NOT NULL
        )""",
    ),
    (
        # `python -m proxy replay`: each run, and which run replayed each exchange. The answer
        # itself is the exchange's `responses` row of role `replay`, so one per exchange.
        """CREATE TABLE replay_runs (
            run TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            upstream TEXT NOT NULL,
            selection TEXT NOT NULL
        )""",
        """CREATE TABLE replays (
            exchange_id TEXT PRIMARY KEY,
            run TEXT NOT NULL,
            ts REAL NOT NULL
        )""",
        "CREATE INDEX replays_run ON replays(run)",
    ),
    # Counts kept by triggers as rows come and go, for the report to read minutes instead of
    # rows (see rollups.py), filled from the rows already recorded.
    rollups.MIGRATION,
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
ROLLUPS_SINCE: Final = MIGRATIONS.index(rollups.MIGRATION) + 1  # the version that keeps them


def check_version(path: str, version: int) -> None:
    """Refuses a file whose `PRAGMA user_version` is newer than this sidecar's schema."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this sidecar's {SCHEMA_VERSION}: "
            "upgrade the sidecar or record to another file"
        )


async def user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def migrate(db: aiosqlite.Connection, path: str, version: int) -> None:
    """Takes the database from `version` (already checked) to `SCHEMA_VERSION`."""
    if version == SCHEMA_VERSION:
        return
    if version:  # rows to carry over: version 7 counts them, ~6 s a million exchanges
        log.info("recorder database migrating", path=path, old=version, new=SCHEMA_VERSION)
    await db.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated between our read and the lock.
        version = await user_version(db)
        check_version(path, version)
        for migration in MIGRATIONS[version:]:
            for statement in migration:
                await db.execute(statement)
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await db.commit()
    except BaseException:
        # aiosqlite raises ValueError once its connection is closed.
        with contextlib.suppress(sqlite3.Error, ValueError, OSError):
            await db.rollback()
        raise
    if version != SCHEMA_VERSION:
        log.info("recorder database migrated", path=path, old=version, new=SCHEMA_VERSION)


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection for the report; safe while the sidecar writes (WAL).

    Raises `StoreError` if the file is missing, not a recording, or of another schema version.
    """
    where = Path(path).absolute()
    if not where.exists():
        raise StoreError(
            f"no recording at {path} ({where}): the sidecar makes it at its record.path, "
            "relative to the directory it runs in; name it with --db"
        )
    uri = where.as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the recording {path}: {exc}") from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot read the recording {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        check_version(path, version)
        raise StoreError(
            f"{path} has schema version {version}, not {SCHEMA_VERSION}: "
            + ("not a recording" if version == 0 else "start the sidecar once to migrate it")
        )
    return conn
