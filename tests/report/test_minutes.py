"""The counts a recording keeps per minute (proxy/record/rollups.py) against the rows they
count: after inserts in either order, replacements and deletions they equal a recount, and a
report read from them is the report read row by row. Recordings are made by the real recorder."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from proxy.record import rollups
from proxy.record.rows import Exchange, Response, Revision
from proxy.record.schema import MIGRATIONS, ROLLUPS_SINCE
from proxy.record.writer import Recorder, WriterSettings
from proxy.report.build import ReportFilter, build_report
from proxy.report.text import render_json
from proxy.report.thresholds import Price, ReportSettings
from tests.report.test_recordings import _rounded

T0 = 1_700_000_000.0
PRICING = {
    "old": {
        "gpt-4o-mini": Price(input=0.15, output=0.6, cached_input=0.075),
        "*": Price(request=0.001),
    },
    "new": {
        "img-1": Price(image=0.04),
        "gpt-4o-mini": Price(input=0.2, output=0.8, request=0.0005),
    },
}
SETTINGS = ReportSettings(pricing=PRICING)
KINDS = (
    None,
    None,
    None,
    None,
    None,
    "http_5xx",
    "timeout",
    "client_disconnect",
    "proxy",
    "http_4xx",
)


def _answer(x: Exchange, role: str, upstream: str, rng: random.Random) -> Response:
    """An answer of any shape the report counts apart: errors of every origin, streams cut
    or whole, JSON mode, usage in part or none, cached tokens, images, zero latencies."""
    kind = rng.choice(KINDS)
    ok = kind is None
    usage = rng.random()
    prompt = rng.randint(1, 900) if ok and usage > 0.1 else None
    completion = rng.randint(0, 300) if ok and usage > 0.2 else None
    total = rng.choice((0.0, rng.lognormvariate(6.0, 0.8)))
    images = rng.randint(1, 3) if x.model == "img-1" and ok else None
    return Response(
        x.id, role, upstream, x.model, x.ts + 0.01,  # type: ignore[arg-type]
        None if kind in ("timeout", "proxy") else (200 if ok else 503), kind,
        None if ok else "failed", total * 0.1, total * 0.3 if x.stream else None, total, 10,
        prompt, completion,
        (prompt or 0) + (completion or 0) if usage > 0.5 and prompt is not None else None,
        "stop" if ok else None, (rng.random() > 0.2) if x.stream else None,
        "chat" if ok else None, None, rng.choice((None, True, False)) if ok else None,
        f"{rng.randrange(5)}" if ok else None, None, None,
        rng.randint(0, prompt) if prompt and rng.random() < 0.3 else None, images,
    )  # fmt: skip


def _exchanges(n: int, seed: int, first: int = 0) -> list[tuple[Exchange, list[Response]]]:
    rng = random.Random(seed)
    out = []
    for i in range(first, first + n):
        # 40 minutes apart at most: several timeline buckets and minutes, some sharing both
        ts = T0 + i * rng.uniform(0.0, 40.0)
        model = rng.choice(("gpt-4o-mini", "gpt-4o-mini", None, "img-1"))
        x = Exchange(
            f"x{i:06d}", ts, rng.choice(("chat", "images")), "POST", "/v1/chat/completions",
            model, rng.random() < 0.4, rng.choice(("r1", "r2", "r3")), None, None, None,
        )  # fmt: skip
        answers = [_answer(x, "primary", rng.choice(("old", "old", "new")), rng)]
        if rng.random() < 0.3:
            answers.append(_answer(x, "shadow", "new", rng))
        if rng.random() < 0.1:
            answers.append(_answer(x, "noise", answers[0].upstream, rng))
        out.append((x, answers))
    return out


async def _record(path: str, n: int, seed: int, settings: WriterSettings | None = None) -> Recorder:
    """`n` exchanges through the recorder, with a few answers written before their exchange
    (in an earlier batch) and a few primaries written twice (the second replaces the first)."""
    recorder = Recorder(path, settings or WriterSettings(batch_size=64, linger=0.001))
    await recorder.start()
    recorder.submit(Revision("r1", T0, False, "{}", "config.yaml"))
    rng = random.Random(seed)
    for x, answers in _exchanges(n, seed):
        late = rng.random() < 0.05
        if late:
            for answer in answers:
                recorder.submit(answer)
            await recorder.idle()
        recorder.submit(x)
        if not late:
            for answer in answers:
                recorder.submit(answer)
        if rng.random() < 0.03:
            recorder.submit(_answer(x, "primary", "new", rng))
    await recorder.idle()
    return recorder


def _counts(path: str) -> dict[str, set[tuple[Any, ...]]]:
    con = sqlite3.connect(path)
    try:
        return {
            table: set(con.execute(f"SELECT * FROM {table} WHERE n != 0"))
            for table in ("exchange_minutes", "primary_minutes", "primary_latency")
        }
    finally:
        con.close()


def _recounted(path: str, tmp: Path) -> dict[str, set[tuple[Any, ...]]]:
    """The counts made afresh from the rows, by the migration's own statements."""
    copy = str(tmp / "recount.db")
    src = sqlite3.connect(path)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    for table in ("exchange_minutes", "primary_minutes", "primary_latency"):
        dst.execute(f"DELETE FROM {table}")
    for statement in rollups.MIGRATION:
        if statement.startswith("INSERT"):
            dst.execute(statement)
    dst.commit()
    dst.close()
    return _counts(copy)


def test_the_minutes_equal_a_recount_after_writes_in_any_order_and_deletions(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "r.db")

    async def run() -> None:
        recorder = await _record(path, 1_500, seed=3)
        assert _counts(path) == _recounted(path, tmp_path)
        await recorder.close()
        # deleted in both orders, by anyone: answers before their exchange, and after it
        con = sqlite3.connect(path)
        con.execute("PRAGMA recursive_triggers = ON")
        con.execute("DELETE FROM responses WHERE exchange_id IN ('x000010', 'x000011')")
        con.execute("DELETE FROM exchanges WHERE id IN ('x000010', 'x000012', 'x000013')")
        con.execute("DELETE FROM responses WHERE exchange_id IN ('x000012', 'x000014')")
        con.commit()
        con.close()
        assert _counts(path) == _recounted(path, tmp_path)
        # and by retention, which prunes the minutes it emptied
        kept = Recorder(path, WriterSettings(max_rows=400, retention_interval=3600))
        await kept.start()
        await kept.retain()
        await kept.close()

    asyncio.run(run())
    assert _counts(path) == _recounted(path, tmp_path)
    con = sqlite3.connect(path)
    zero = con.execute("SELECT count(*) FROM exchange_minutes WHERE n = 0").fetchone()[0]
    assert zero == 0
    assert con.execute("SELECT sum(n) FROM exchange_minutes").fetchone()[0] == 400
    assert con.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 400
    con.close()


def _json(path: str | list[str], **kw: Any) -> dict[str, Any]:
    report = build_report(path, ReportFilter(), SETTINGS, exact_limit=0, **kw)
    assert report.binned
    out = _rounded(orjson.loads(render_json(report)))
    for key in ("generated_at", "db_path"):  # what says when and where from
        del out[key]
    for recording in out["recordings"]:
        del recording["path"]
    return out  # type: ignore[no-any-return]


def test_a_report_read_from_the_minutes_is_the_report_read_from_the_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")

    async def run() -> None:
        await (await _record(path, 2_000, seed=5)).close()

    asyncio.run(run())
    rolled, rows = _json(path), _json(path, rollups=False)
    assert rolled == rows
    # every kind of count had something to count
    old = next(u for u in rolled["upstreams"] if (u["upstream"], u["role"]) == ("old", "primary"))
    assert old["responses"] and old["cost"] and old["streams"] and old["json_answers"]
    assert len(rolled["timeline"]["series"][0]["requests"]) > 10
    assert {r["revision"] for r in rolled["traffic"]["revisions"]} == {"r1", "r2", "r3"}


def test_a_recording_made_before_the_minutes_is_counted_when_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "v6.db")
    made = str(tmp_path / "made.db")

    async def run() -> None:
        await (await _record(made, 800, seed=7)).close()

    asyncio.run(run())
    old = sqlite3.connect(path)
    for migration in MIGRATIONS[: ROLLUPS_SINCE - 1]:
        for statement in migration:
            old.execute(statement)
    old.execute(f"PRAGMA user_version = {ROLLUPS_SINCE - 1}")
    old.execute(f"ATTACH '{made}' AS made")
    for table in ("exchanges", "responses", "revisions"):
        old.execute(f"INSERT INTO {table} SELECT * FROM made.{table}")
    old.commit()
    old.close()
    assert _json([path], rollups=True) == _json([path], rollups=False)  # an old file: rows

    async def migrate() -> None:
        await (await _record(path, 0, seed=0)).close()

    asyncio.run(migrate())
    assert _counts(path) == _counts(made)
    assert _json(path) == _json(made)


def test_two_recordings_pool_their_minutes_as_their_rows(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")

    async def run() -> None:
        await (await _record(a, 700, seed=11)).close()
        await (await _record(b, 600, seed=12)).close()

    asyncio.run(run())
    assert _json([a, b]) == _json([a, b], rollups=False)
