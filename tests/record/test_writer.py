from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.record.rows import Exchange, Response, Revision, StoredObject
from proxy.record.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, open_readonly
from proxy.record.writer import Recorder, RecorderStats, WriterSettings

# Short waits everywhere: a failing batch costs _ATTEMPTS x (busy_timeout + retry_interval).


def exchange(i: int = 0, *, ts: float | None = None, **changes: Any) -> Exchange:
    e = Exchange(
        id=f"req-{i}",
        ts=time.time() if ts is None else ts,
        route="chat",
        method="POST",
        path="/v1/chat/completions",
        model="gpt-4o-mini",
        stream=True,
        revision="1-abcdef01",
        sticky_key="5f2b",
        request_body=b'{"model":"gpt-4o-mini"}',
        request_sha256="ab" * 32,
        retry_key="9a0b1c2d3e4f5a6b",
        retry_count=1,
    )
    return e._replace(**changes)


def response(i: int = 0, *, ts: float | None = None, **changes: Any) -> Response:
    r = Response(
        exchange_id=f"req-{i}",
        role="primary",
        upstream="openai",
        model_sent="gpt-4o-mini-2024",
        ts=time.time() if ts is None else ts,
        status=200,
        error_kind=None,
        error=None,
        ttfb_ms=12.5,
        ttft_ms=20.0,
        total_ms=300.25,
        bytes=2048,
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        finish_reason="stop",
        stream_done=True,
        shape="{choices:[{message:{content:str}}]}",
        tool_calls='[{"name":"f","keys":["a"],"valid":true}]',
        json_ok=False,
        text_sha256="cd" * 32,
        response_body=b'{"text":"hi"}',
        response_sha256="ef" * 32,
        cached_tokens=4,
        images=None,
        embedding_dims=None,
    )
    return r._replace(**changes)


def all_none(record: Any, keep: tuple[str, ...]) -> Any:
    nulls = {name: None for name in record._fields if name not in keep}
    return record._replace(**nulls)


async def wait_until(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Another process holding the write lock (a long transaction, a backup)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def replace_with_directory(db: Path) -> None:
    for leftover in db.parent.glob(db.name + "*"):  # the db and its -wal and -shm
        leftover.unlink()
    db.mkdir()


@pytest.fixture
def empty_db(db: Path) -> Path:
    db.touch()
    return db


async def started(make: Callable[..., Recorder], path: Path, **options: Any) -> Recorder:
    recorder = make(path, **options)
    await recorder.start()
    return recorder


async def test_records_read_back_equal_with_nulls_kept(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    full_e, full_r = exchange(1), response(1)
    bare_e = all_none(
        exchange(2), keep=("id", "ts", "route", "method", "path", "stream", "revision")
    )
    bare_r = all_none(response(2), keep=("exchange_id", "role", "upstream", "ts", "bytes"))
    revision = Revision(
        revision="1-abcdef01", ts=1.5, rollback=True, split='{"a":1}', path="c.yaml"
    )
    for record in (full_e, bare_e):
        rec.submit(record)
    for r in (full_r, bare_r):
        rec.submit(r)
    rec.submit(revision)
    await wait_until(lambda: rec.stats().written == 5)

    with contextlib.closing(open_readonly(str(db))) as conn:
        got_e = [Exchange(*row) for row in conn.execute("SELECT * FROM exchanges ORDER BY id")]
        got_r = [Response(*row) for row in conn.execute("SELECT * FROM responses ORDER BY 1")]
        got_v = [Revision(*row) for row in conn.execute("SELECT * FROM revisions")]
        bool_types = conn.execute(
            "SELECT typeof(stream_done), typeof(json_ok) FROM responses WHERE exchange_id='req-1'"
        ).fetchone()
    # SQLite hands bools back as 0/1, which compare equal to False/True.
    assert got_e == [full_e, bare_e]
    assert got_r == [full_r, bare_r]
    assert got_v == [revision]
    assert bool_types == ("integer", "integer")
    assert got_r[1].prompt_tokens is None and got_r[1].response_body is None


async def test_bodies_keep_their_bytes_and_types_utf8_or_not(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    texts = [response(1, response_body='{"text": "h\u00e9 \u2603"}'.encode(), total_ms=1.25)]
    binary = [response(2, response_body=b"\xff\x00\xfe", ttfb_ms=3.0)]
    rec.submit(exchange(1, request_body=b"\x00\x01\xff"))
    await wait_until(lambda: rec.stats().written == 1)
    for r in texts:
        rec.submit(r)
    await wait_until(lambda: rec.stats().written == 2)
    for r in binary:
        rec.submit(r)
    await wait_until(lambda: rec.stats().written == 3)
    with contextlib.closing(open_readonly(str(db))) as conn:
        got = [Response(*row) for row in conn.execute("SELECT * FROM responses ORDER BY 1")]
        kinds = conn.execute(
            "SELECT typeof(response_body), typeof(total_ms), typeof(bytes) FROM responses"
        ).fetchall()
        body = conn.execute("SELECT request_body FROM exchanges").fetchone()[0]
    assert got == texts + binary
    assert set(kinds) <= {("blob", "real", "integer"), ("blob", "null", "integer")}
    assert body == b"\x00\x01\xff"


async def test_response_written_before_its_exchange(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    rec.submit(response(7, role="shadow"))
    await wait_until(lambda: rec.stats().written == 1)
    rec.submit(exchange(7))
    await wait_until(lambda: rec.stats().written == 2)

    assert rows(db, "SELECT e.id, r.role FROM exchanges e JOIN responses r ON r.exchange_id = e.id")
    assert rec.stats().errors == 0


async def test_repeated_response_replaces_and_repeated_exchange_is_ignored(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    rec.submit(exchange(1, route="first"))
    rec.submit(exchange(1, route="second"))
    rec.submit(response(1, status=500))
    rec.submit(response(1, status=200))
    await wait_until(lambda: rec.stats().written == 4)

    assert rows(db, "SELECT route FROM exchanges") == [("first",)]
    assert rows(db, "SELECT status FROM responses") == [(200,)]


async def test_full_queue_drops_and_counts_without_raising(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = recorders(db, queue_size=2)  # not started: nothing drains the queue
    with capture_logs() as logs:
        for i in range(50):
            rec.submit(exchange(i))

    assert rec.stats() == RecorderStats(
        written=0, dropped=48, queue_depth=2, batches=0, errors=0, last_error=None
    )
    # One warning for the burst, not one per drop.
    assert [entry["event"] for entry in logs] == ["recorder dropped records"]


async def test_locked_database_drops_the_batch_then_recovers(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    with write_lock(db):
        rec.submit(exchange(1))
        await wait_until(lambda: rec.stats().dropped == 1)
        stats = rec.stats()
        assert stats.errors == 3 and stats.written == 0
        assert stats.last_error is not None and "locked" in stats.last_error

    rec.submit(exchange(2))
    await wait_until(lambda: rec.stats().written == 1)
    assert rows(db, "SELECT id FROM exchanges") == [("req-2",)]


async def test_lock_shorter_than_busy_timeout_is_waited_out(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, busy_timeout=2.0)
    with write_lock(db):
        rec.submit(exchange(1))
        await asyncio.sleep(0.05)  # the writer is now waiting on the lock inside SQLite
    await wait_until(lambda: rec.stats().written == 1)
    assert rec.stats().errors == 0


async def test_database_replaced_by_a_directory_drops_then_recovers(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    rec.submit(exchange(1))
    await wait_until(lambda: rec.stats().written == 1)
    replace_with_directory(db)

    rec.submit(exchange(2))
    await wait_until(lambda: rec.stats().dropped == 1)
    assert rec.stats().errors >= 1

    shutil.rmtree(db)
    rec.submit(exchange(3))
    await wait_until(lambda: rec.stats().written == 2)
    # A fresh database, created and migrated by the reopen.
    assert rows(db, "SELECT id FROM exchanges") == [("req-3",)]
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_close_flushes_everything_queued(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, linger=60.0)  # only close() ends this linger
    for i in range(100):
        rec.submit(exchange(i))
        rec.submit(response(i))
    started_at = time.monotonic()
    await rec.close()

    assert time.monotonic() - started_at < 2.0

    assert rec.stats().written == 200 and rec.stats().dropped == 0
    assert rows(db, "SELECT count(*) FROM exchanges") == [(100,)]
    assert rows(db, "SELECT count(*) FROM responses") == [(100,)]


async def test_full_batch_is_written_without_waiting_out_the_linger(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, batch_size=4, linger=60.0)
    for i in range(4):
        rec.submit(exchange(i))
    await wait_until(lambda: rec.stats().written == 4)
    assert rec.stats().batches == 1


async def test_close_with_a_hung_database_respects_its_timeout(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    # Retrying in full would take 3 x 0.2 s waiting on the lock + 2 x 0.3 s between tries.
    rec = await started(recorders, db, busy_timeout=0.2, retry_interval=0.3)
    with write_lock(db):
        for i in range(10):
            rec.submit(exchange(i))
        started_at = time.monotonic()
        await rec.close(timeout=0.3)
        elapsed = time.monotonic() - started_at

    # Past the timeout, only the SQLite call already waiting on the lock may finish.
    assert elapsed < 0.3 + 0.2 + 0.4
    assert rec.stats().dropped == 10 and rec.stats().written == 0


async def test_records_after_close_are_dropped_and_close_is_idempotent(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    await rec.close()
    await rec.close()
    rec.submit(exchange(1))
    rec.submit(Revision(revision="r", ts=0.0, rollback=False, split="{}", path="c.yaml"))

    assert rec.stats().dropped == 2


async def test_empty_file_is_migrated_to_the_current_schema(
    empty_db: Path, recorders: Callable[..., Recorder]
) -> None:
    db = empty_db
    await started(recorders, db)

    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    names = rows(db, "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    assert sorted(names) == [
        ("index", "exchanges_retry_key"),
        ("index", "exchanges_revision"),
        ("index", "exchanges_route_model"),
        ("index", "exchanges_ts"),
        ("index", "replays_run"),
        ("index", "responses_embedding_dims"),
        ("index", "responses_ts"),
        ("index", "responses_upstream_role"),
        ("table", "exchange_minutes"),
        ("table", "exchanges"),
        ("table", "guard_trips"),
        ("table", "judgments"),
        ("table", "objects"),
        ("table", "primary_latency"),
        ("table", "primary_minutes"),
        ("table", "replay_runs"),
        ("table", "replays"),
        ("table", "responses"),
        ("table", "revisions"),
        ("trigger", "answer_counted"),
        ("trigger", "answer_uncounted"),
        ("trigger", "exchange_answer_counted"),
        ("trigger", "exchange_answer_uncounted"),
        ("trigger", "exchange_counted"),
        ("trigger", "exchange_uncounted"),
    ]


async def test_a_version_2_recording_keeps_its_rows_and_reads_null_in_the_new_columns(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    old_e = exchange(1, ts=1.0)[:11]  # the fields of version 2, in order
    old_r = response(1, ts=1.0)[:23]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for migration in MIGRATIONS[:2]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(f"INSERT INTO exchanges VALUES ({','.join('?' * 11)})", old_e)
        conn.execute(f"INSERT INTO responses VALUES ({','.join('?' * 23)})", old_r)
        conn.execute("PRAGMA user_version = 2")
        conn.commit()

    rec = await started(recorders, db)
    new_e, new_r = exchange(2, ts=2.0), response(2, ts=2.0, images=3, embedding_dims=1536)
    rec.submit(new_e)
    rec.submit(new_r)
    await wait_until(lambda: rec.stats().written == 2)

    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with contextlib.closing(open_readonly(str(db))) as conn:
        got_e = [Exchange(*row) for row in conn.execute("SELECT * FROM exchanges ORDER BY id")]
        got_r = [Response(*row) for row in conn.execute("SELECT * FROM responses ORDER BY 1")]
    assert got_e == [Exchange(*old_e), new_e]
    assert got_r == [Response(*old_r), new_r]
    assert (got_e[0].retry_key, got_r[0].cached_tokens, got_r[0].images) == (None, None, None)


async def test_schema_columns_are_the_record_fields(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    await started(recorders, db)
    for table, record in (
        ("exchanges", Exchange),
        ("responses", Response),
        ("revisions", Revision),
    ):
        columns = [row[1] for row in rows(db, f"PRAGMA table_info({table})")]
        assert columns == list(record._fields)


async def test_newer_schema_version_is_refused_at_start(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    rec = recorders(db)

    with pytest.raises(StoreError) as refused:
        await rec.start()
    message = str(refused.value)
    assert str(db) in message
    assert f"version {SCHEMA_VERSION + 1}" in message and str(SCHEMA_VERSION) in message


async def test_newer_schema_file_is_left_byte_for_byte_as_it_was(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("INSERT INTO future VALUES (1)")
        conn.commit()
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    before = db.read_bytes()

    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer"):
        await recorders(db).start()

    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]  # no -wal, -shm, -journal


def test_settings_out_of_range_are_refused() -> None:
    for bad in (
        {"queue_size": 0},
        {"batch_size": 0},
        {"max_age_days": 0.0},
        {"max_rows": 0},
        {"max_size": 0},
        {"retention_interval": 0.0},
        {"linger": -1.0},
        {"max_objects": 0},
    ):
        with pytest.raises(ValueError):
            WriterSettings(**bad)


async def test_unopenable_path_is_refused_at_start_with_the_reason(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="a-file is a file, not a directory"):
        await recorders(tmp_path / "a-file" / "sidecar.db").start()


async def test_a_missing_directory_is_made(
    tmp_path: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, tmp_path / "data" / "sub" / "sidecar.db")
    rec.submit(exchange(1))
    await rec.close()
    assert rec.stats().written == 1


async def test_retention_keeps_the_newest_max_rows_with_their_responses(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, max_rows=3, retention_interval=0.02)
    for i in range(10):
        rec.submit(exchange(i, ts=1000.0 + i))
        rec.submit(response(i, ts=1000.0 + i))
        rec.submit(response(i, ts=1000.5 + i, role="shadow"))
    rec.submit(response(99, ts=1.0))  # its exchange never arrived

    def trimmed() -> bool:
        return rows(db, "SELECT count(*) FROM responses") == [(6,)]

    await wait_until(lambda: rec.stats().written == 31 and trimmed())
    assert rows(db, "SELECT id FROM exchanges ORDER BY ts") == [("req-7",), ("req-8",), ("req-9",)]
    assert rows(db, "SELECT DISTINCT exchange_id FROM responses ORDER BY 1") == [
        ("req-7",),
        ("req-8",),
        ("req-9",),
    ]


async def test_retention_deletes_exchanges_older_than_max_age_with_their_responses(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, max_age_days=1.0, retention_interval=0.02)
    now = time.time()
    old, new = now - 2 * 86_400, now
    rec.submit(exchange(1, ts=old))
    rec.submit(response(1, ts=old))
    rec.submit(response(1, ts=new, role="shadow"))  # late shadow answer to an old request
    rec.submit(exchange(2, ts=new))
    rec.submit(response(2, ts=new))
    rec.submit(response(3, ts=old))  # orphan

    def aged() -> bool:
        return rows(db, "SELECT count(*) FROM responses") == [(1,)]

    await wait_until(lambda: rec.stats().written == 6 and aged())
    assert rows(db, "SELECT id FROM exchanges") == [("req-2",)]
    assert rows(db, "SELECT exchange_id FROM responses") == [("req-2",)]


async def test_readonly_connection_reads_while_recording_and_cannot_write(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db)
    with contextlib.closing(open_readonly(str(db))) as conn:
        rec.submit(exchange(1))
        await wait_until(lambda: rec.stats().written == 1)
        assert conn.execute("SELECT id FROM exchanges").fetchall() == [("req-1",)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM exchanges")


async def test_objects_are_kept_for_the_affinity_newest_last_and_bounded(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, max_objects=3)
    for i in range(5):
        rec.submit(StoredObject(f"resp_{i}", "new" if i % 2 else "old", 1000.0 + i))
    rec.submit(StoredObject("resp_1", "new", 1010.0))  # made again: now the newest
    await wait_until(lambda: rec.stats().written == 6)
    assert await rec.objects() == [("resp_3", "new"), ("resp_4", "old"), ("resp_1", "new")]
    assert rows(db, "SELECT count(*) FROM objects") == [(3,)]


async def test_retention_deletes_the_judgments_of_the_exchanges_it_deletes(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = await started(recorders, db, max_rows=2, retention_interval=0.02)
    judged = sqlite3.connect(db)
    with judged:
        for i in range(4):
            judged.execute(
                "INSERT INTO judgments (exchange_id, role, judge_model, shown_first, "
                "judge_upstream, candidate, ts) VALUES (?, 'shadow', 'j', 'primary', 'u', 'new', 0)",
                (f"req-{i}",),
            )
    judged.close()
    for i in range(4):
        rec.submit(exchange(i, ts=1000.0 + i))
    await wait_until(lambda: rows(db, "SELECT count(*) FROM exchanges") == [(2,)])
    await wait_until(lambda: rows(db, "SELECT count(*) FROM judgments") == [(2,)])
    assert rows(db, "SELECT exchange_id FROM judgments ORDER BY 1") == [("req-2",), ("req-3",)]
