"""The judge end to end in this process: recordings made through the real sidecar, judged by a
fake judge that prefers the answer shown first whenever it cannot tell two apart."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from proxy.fakes.provider import Behaviour, FakeProvider
from tests.conftest import NEW_KEY
from tests.judge.conftest import (
    judge_in_process,
    record,
    recording_config,
    write_judge_config,
)
from tests.judge.fake_judge import FakeJudge

KINDS = ["chat", "stream", "tools", "chat", "stream", "chat"]


def verdicts(db: Path) -> dict[tuple[str, str, str], str | None]:
    """(exchange, role, shown first) -> the judge's winner."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT exchange_id, role, shown_first, winner FROM judgments"
        ).fetchall()
    finally:
        con.close()
    return {(e, r, s): w for e, r, s, w in rows}


def tool_exchanges(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT exchange_id FROM responses WHERE role = 'primary' AND tool_calls IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


async def test_identical_answers_are_ties_though_the_judge_prefers_whichever_is_first(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db), KINDS)
    progress = await judge_in_process(write_judge_config(tmp_path, old, new, judge, db))

    assert progress.finished == 12  # 6 shadow and 6 noise pairs, each judged in both orders
    assert progress.outcomes == {("shadow", "tie"): 6, ("noise", "tie"): 6}
    assert len(judge.received) == 24
    # The bias is there: asked once with the primary's answer first, every pair is a loss.
    found = verdicts(db)
    assert set(found.values()) == {"A"}
    assert len(found) == 24


async def test_really_worse_answers_lose_in_both_orders(
    old, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    worse = FakeProvider(
        name="new",
        api_key=NEW_KEY,
        models=("prov/gpt-4o-mini",),
        behaviour=Behaviour(quality="worse"),
    )
    await worse.start()
    try:
        db = tmp_path / "rec.db"
        await record(make_sidecar, sdk, recording_config(old, worse, db, noise=0.0), KINDS)
        progress = await judge_in_process(write_judge_config(tmp_path, old, worse, judge, db))
    finally:
        await worse.close()

    tools = tool_exchanges(db)
    assert len(tools) == 1
    # Text turns lose both ways; the tool-call turn is judged on its call, the same on both.
    assert progress.outcomes == {("shadow", "loss"): 5, ("shadow", "tie"): 1}
    for (exchange, _, shown_first), winner in verdicts(db).items():
        if exchange in tools:
            assert winner == "A"  # identical calls: the first shown, in both orders
        else:
            assert winner == ("A" if shown_first == "primary" else "B")


async def test_an_interrupted_run_resumes_without_sending_any_pair_twice(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db), KINDS * 2)
    config = write_judge_config(tmp_path, old, new, judge, db)
    stop = asyncio.Event()
    judge.hold_from = 6

    first = asyncio.create_task(judge_in_process(config, stop))
    await judge.wait_for(8)  # a few pairs answered, more in flight
    stop.set()  # what the first SIGINT or SIGTERM does
    judge.release.set()
    interrupted = await first
    assert interrupted.stopped == "interrupted"
    assert 0 < interrupted.finished < 24

    resumed = await judge_in_process(config)
    assert resumed.stopped is None
    assert interrupted.finished + resumed.finished == 24
    # 24 pairs, two orders each, every one judged: 48 calls means none was sent twice.
    assert len(judge.received) == 48
    assert len(verdicts(db)) == 48


async def test_judge_failures_are_counted_and_only_unpaid_calls_are_sent_again(
    old, new, make_sidecar, sdk, tmp_path: Path
) -> None:
    faults = {0: "500", 1: "not_json", 2: "no_winner", 5: "500"}
    judge = FakeJudge(lambda n: faults.get(n))  # type: ignore[arg-type,return-value]
    await judge.start()
    try:
        db = tmp_path / "rec.db"
        await record(make_sidecar, sdk, recording_config(old, new, db, noise=0.0), KINDS[:4])
        config = write_judge_config(tmp_path, old, new, judge, db)
        first = await judge_in_process(config)
        assert first.calls == 8
        assert first.errors == {"http_5xx": 2}
        assert sum(first.not_verdicts.values()) == 2
        assert first.finished == 1  # four pairs, three of them touched by a failure
        assert first.first_error is not None

        again = await judge_in_process(config)  # the two 500s were not paid: sent again
        assert again.calls == 2 and not again.errors
        retried = await judge_in_process(config, retry_failed=True)
        assert retried.calls == 2 and not retried.not_verdicts
        assert retried.finished == 2
    finally:
        await judge.close()
    assert len(judge.received) == 12
    assert None not in verdicts(db).values()
