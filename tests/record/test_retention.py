"""Retention: the size cap on its own and with age and rows, the simulated day at a small size,
and the warning `serve` gives when nothing bounds a recording of full bodies."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy import config as config_mod
from proxy.config import RecordConfig
from proxy.errors import ConfigError
from proxy.record.retention import HIGH_WATER, LOW_WATER, wal_limit
from proxy.record.rows import GuardTrip, Revision
from proxy.record.writer import Recorder
from proxy.serve.app import _new_recorder
from tests.record.test_writer import exchange, response, rows, wait_until

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import simulate_day  # noqa: E402  (scripts/ is not a package)

MiB = 1 << 20
BODY = b'{"content":"' + b"x" * 3000 + b'"}'  # a full answer of a few KB


def on_disk(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_a_simulated_stretch_stays_within_one_rounds_writes_of_the_cap_and_keeps_the_newest(
    db: Path,
) -> None:
    # 12,000 calls at 20 a second, a round every 5 simulated seconds, against a 4 MiB cap:
    # the cap is reached after ~1,000 calls, then held for ten times that.
    day = simulate_day.Day(
        rate=20, seconds=600, interval=5, max_size=4 * MiB, shadow=0.25, request_bodies="full"
    )
    run = await simulate_day.simulate(str(db), day)

    assert run.exchanges == 12_000 and run.dropped == 0
    assert run.deleted > 9_000  # the cap, not the 7 days, bounded it
    assert run.round_growth < day.max_size / 4  # so the bound below says something
    assert run.peak_disk <= day.max_size + run.round_growth
    assert on_disk(db) <= day.max_size
    with contextlib.closing(sqlite3.connect(db)) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM exchanges")}
        answered = {r[0] for r in conn.execute("SELECT exchange_id FROM responses")}
    assert set(run.newest) <= ids and set(run.newest) <= answered
    assert answered <= ids  # responses went with their exchanges


async def test_the_size_cap_is_held_by_the_retention_loop_without_losing_queued_records(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = recorders(db, max_size=MiB, retention_interval=0.01)
    await rec.start()
    now = time.time()
    for i in range(1_500):  # ~7 MB of answers into a 1 MiB recording
        rec.submit(exchange(i, ts=now + i / 1000))
        rec.submit(response(i, ts=now + i / 1000, response_body=BODY))
        if i % 100 == 99:
            await rec.idle()
            await asyncio.sleep(0.02)  # a round or two between bursts
    await rec.idle()

    async def under() -> bool:
        return (await rec.footprint()).total <= MiB * HIGH_WATER

    deadline = time.monotonic() + 5
    while not await under():
        assert time.monotonic() < deadline, "the cap was not enforced in time"
        await asyncio.sleep(0.01)
    assert rec.stats().written == 3_000 and rec.stats().dropped == 0
    assert 0 < rows(db, "SELECT count(*) FROM exchanges")[0][0] < 1_500
    assert rows(db, "SELECT id FROM exchanges ORDER BY ts DESC LIMIT 1") == [("req-1499",)]
    newest = [f"req-{i}" for i in range(1_490, 1_500)]
    got = {r[0] for r in rows(db, "SELECT exchange_id FROM responses")}
    assert set(newest) <= got


async def test_age_rows_and_size_combine_in_one_round_logged_with_each_reason(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    unbounded = recorders(db)
    await unbounded.start()
    now = time.time()
    for i in range(5):  # two days old
        unbounded.submit(exchange(i, ts=now - 2 * 86_400 + i))
    for i in range(5, 405):
        unbounded.submit(exchange(i, ts=now + i, request_body=BODY))
        unbounded.submit(response(i, ts=now + i, response_body=BODY))
    unbounded.submit(Revision("1-abcdef01", now - 3 * 86_400, False, "{}", "c.yaml"))
    unbounded.submit(GuardTrip("new", "error_rate", "9 of 50", now - 3 * 86_400, "1-abcdef01"))
    await unbounded.close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO replays VALUES ('req-5', 'run-1', 0), ('req-404', 'run-1', 0)")

    event = "recorder retention deleted exchanges"
    with capture_logs() as logs:
        # The loop's first round runs at start; the next one would in 11 days.
        bounded = recorders(
            db, max_age_days=1.0, max_rows=300, max_size=MiB, retention_interval=1e6
        )
        await bounded.start()
        await wait_until(lambda: any(e["event"] == event for e in logs))

    [line] = [e for e in logs if e["event"] == event]
    assert line["by_age"] == 5 and line["by_rows"] == 100 and line["by_size"] > 0
    assert line["exchanges"] == 105 + line["by_size"]
    assert line["size_bytes"] <= MiB * LOW_WATER
    assert rows(db, "SELECT id FROM exchanges ORDER BY ts DESC LIMIT 1") == [("req-404",)]
    assert rows(db, "SELECT exchange_id FROM replays") == [("req-404",)]
    assert rows(db, "SELECT count(*) FROM revisions") == [(1,)]  # kept, however old
    assert rows(db, "SELECT count(*) FROM guard_trips") == [(1,)]


async def test_a_reader_holding_the_wal_neither_holds_retention_up_nor_empties_the_recording(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = recorders(db, max_size=MiB, retention_interval=1e6, busy_timeout=1.0)
    await rec.start()
    await rec.retain()  # the one at start happens too; either way, on an empty file
    for i in range(300):
        rec.submit(exchange(i, ts=1000.0 + i, request_body=BODY))
    await rec.idle()
    with contextlib.closing(sqlite3.connect(db)) as reader:  # a report, a snapshot being sent
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM exchanges").fetchone()
        for i in range(300, 600):
            rec.submit(exchange(i, ts=1000.0 + i, request_body=BODY))
        await rec.idle()
        began = time.monotonic()
        await rec.retain()
        assert time.monotonic() - began < 0.5  # no wait of busy_timeout for the reader
        held = await rec.footprint()
        reader.rollback()
    assert held.wal > 0 and held.used <= MiB * LOW_WATER
    kept = rows(db, "SELECT count(*) FROM exchanges")[0][0]
    assert kept > 100  # the WAL it could not shrink was not taken out of the exchanges
    await rec.retain()
    assert (await rec.footprint()).wal == 0  # emptied once the reader is gone


async def test_the_wal_is_kept_to_a_share_of_a_small_cap(
    db: Path, recorders: Callable[..., Recorder]
) -> None:
    rec = recorders(db, max_size=4 * MiB)
    await rec.start()
    for i in range(600):
        rec.submit(exchange(i, request_body=BODY))
        if i % 50 == 49:
            await rec.idle()
    await rec.idle()
    wal = db.with_name(db.name + "-wal").stat().st_size
    # SQLite's default checkpoint leaves 4 MB of WAL: the whole cap. One batch past the limit.
    assert wal <= wal_limit(4 * MiB) + 256 * 4 * 1024
    assert wal_limit(2 << 30) == 64 * MiB and wal_limit(None) == 64 * MiB


def test_max_size_takes_bytes_or_a_unit_and_refuses_the_rest_naming_the_key(
    tmp_path: Path,
) -> None:
    def load(value: str) -> RecordConfig:
        path = tmp_path / "c.yaml"
        path.write_text(
            f"upstreams: {{old: {{base_url: 'http://127.0.0.1:9'}}}}\nprimary: old\n"
            f"record: {{max_size: {value}}}\n"
        )
        return config_mod.load(str(path))[0].record

    assert load("2GiB").max_size == 2 << 30
    assert load("500MB").max_size == 500_000_000
    assert load("1048576").max_size == MiB
    assert load("null").max_size is None
    for bad, why in (
        ("lots", "like 500MB or 2GiB"),
        ("2XB", "like 500MB or 2GiB"),
        ("true", "like 500MB or 2GiB"),
        ("10KB", "at least 1MiB"),
    ):
        with pytest.raises(ConfigError) as refused:
            load(bad)
        [(key, reason)] = refused.value.problems
        assert key == "record.max_size" and why in reason


@pytest.mark.parametrize(
    ("record", "warned"),
    [
        ({}, True),
        ({"bodies": {"request": "hash"}}, True),  # answers are still kept whole
        ({"bodies": {"request": "hash", "response": "none"}}, False),
        ({"max_size": "2GiB"}, False),
        ({"max_age_days": 7}, False),
        ({"max_rows": 1_000_000}, False),
    ],
)
def test_serve_warns_once_when_nothing_bounds_a_recording_of_full_bodies(
    tmp_path: Path, record: dict[str, Any], warned: bool
) -> None:
    cfg = RecordConfig(path=str(tmp_path / "r.db"), **record)
    with capture_logs() as logs:
        _new_recorder(cfg)
    warnings = [e for e in logs if e["event"] == "recording grows without bound"]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings[0]["log_level"] == "warning"
        assert "3.2 KB an exchange" in warnings[0]["growth"]
        for key in ("record.max_size", "record.max_age_days", "record.max_rows"):
            assert key in warnings[0]["fix"]
