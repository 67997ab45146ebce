from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from proxy.record.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, open_readonly


def make(path: Path, version: int) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for migration in MIGRATIONS[:version]:
            for statement in migration:
                conn.execute(statement)
        if version == 0:
            conn.execute("CREATE TABLE t (x)")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    return path


def test_readonly_open_refuses_a_file_that_is_not_a_recording(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a recording"):
        open_readonly(str(tmp_path / "other.db"))
    with pytest.raises(StoreError):
        open_readonly(str(tmp_path / "absent.db"))


def test_readonly_open_refuses_a_newer_recording_as_the_writer_does(tmp_path: Path) -> None:
    db = make(tmp_path / "future.db", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer") as refused:
        open_readonly(str(db))
    assert "upgrade the sidecar" in str(refused.value)


def test_readonly_open_asks_for_an_older_recording_to_be_migrated(tmp_path: Path) -> None:
    db = make(tmp_path / "old.db", SCHEMA_VERSION - 1)
    with pytest.raises(StoreError, match="start the sidecar once to migrate it"):
        open_readonly(str(db))


def test_readonly_open_reads_a_current_recording(tmp_path: Path) -> None:
    db = make(tmp_path / "now.db", SCHEMA_VERSION)
    with contextlib.closing(open_readonly(str(db))) as conn:
        assert conn.execute("SELECT count(*) FROM objects").fetchone() == (0,)
