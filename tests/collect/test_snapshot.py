"""`GET /_proxy/recording` (serve/snapshot.py): a consistent copy, refused when there is none."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import aiohttp

from proxy.fakes.provider import FakeProvider
from proxy.serve.snapshot import backup
from tests.conftest import SidecarFactory, base_config


async def test_recording_off_is_refused_with_an_openai_shaped_404(
    old: FakeProvider, new: FakeProvider, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(base_config(old, new))  # record.enabled: false
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.port}/_proxy/recording") as r,
    ):
        assert r.status == 404
        error = (await r.json())["error"]
    assert error["code"] == "not_found"
    assert "record.enabled" in error["message"]


def test_a_backup_taken_while_another_connection_writes_is_whole(tmp_path: Path) -> None:
    source, target = tmp_path / "live.db", tmp_path / "copy.db"
    db = sqlite3.connect(source, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (i INTEGER, pad BLOB)")
    db.execute("PRAGMA user_version = 6")
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            db.execute("BEGIN")
            db.executemany("INSERT INTO t VALUES (?, zeroblob(512))", [(i,), (i + 1,)])
            db.execute("COMMIT")  # rows arrive in pairs: a torn copy would hold an odd count
            i += 2

    writer = threading.Thread(target=write)
    writer.start()
    reader = sqlite3.connect(source)  # its own connection: it sees committed rows only
    try:
        while reader.execute("SELECT count(*) FROM t").fetchone()[0] < 500:
            time.sleep(0.005)
        backup(str(source), str(target))
    finally:
        reader.close()
        stop.set()
        writer.join()
        db.close()
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("PRAGMA user_version").fetchone()[0] == 6
        count = copy.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        copy.close()
    assert count >= 500
    assert count % 2 == 0
    assert not (tmp_path / "copy.db-wal").exists()
