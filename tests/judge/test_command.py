"""`python -m proxy judge` as a user runs it, in a subprocess, against a fake judge here."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import yaml

from tests.judge.conftest import record, recording_config, write_judge_config
from tests.judge.fake_judge import FakeJudge

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["chat", "stream", "tools", "chat"]


async def judge_cli(
    *args: str, stdin: int | None = asyncio.subprocess.DEVNULL
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "judge", *args,
        cwd=ROOT, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def set_in(path: Path, key: str, value: object) -> None:
    cfg = yaml.safe_load(path.read_text())
    section, _, name = key.partition(".")
    cfg[section][name] = value
    path.write_text(yaml.safe_dump(cfg))


async def test_an_estimate_over_the_budget_refuses_to_start_and_sends_nothing(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db), KINDS)
    config = write_judge_config(tmp_path, old, new, judge, db, budget_usd=0.001)
    code, out, err = await judge_cli("--config", str(config), "--yes")
    assert code == 1, out + err
    assert "This run: 8 pairs (4 shadow, 4 noise)" in out
    assert "Estimated cost: $" in out and "budget_usd $0.001" in out
    assert "over judge.budget_usd" in err and "nothing sent" in err
    assert judge.received == []


async def test_without_a_terminal_it_asks_for_yes_and_with_it_judges(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db, noise=0.0), KINDS)
    config = write_judge_config(tmp_path, old, new, judge, db)
    code, _, err = await judge_cli("--config", str(config))
    assert code == 2 and "pass --yes" in err
    assert judge.received == []

    code, out, err = await judge_cli("--config", str(config), "--yes")
    assert code == 0, out + err
    assert "Judged 4 of 4 pairs in both orders (8 calls)" in out
    assert "shadow 0 won, 4 tied, 0 lost" in out
    assert len(judge.received) == 8

    code, out, _ = await judge_cli("--config", str(config), "--yes")
    assert code == 0 and "judged before by judge-1: 4" in out and "Nothing to judge." in out
    assert len(judge.received) == 8


async def test_sigterm_stops_between_pairs_and_the_next_run_judges_the_rest(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db), KINDS * 3)
    config = write_judge_config(tmp_path, old, new, judge, db)
    judge.hold_from = 6
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "judge", "--config", str(config), "--yes",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await judge.wait_for(8)
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    said = b""
    while b"stopping after the pairs in flight" not in said:  # the run saw the signal
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert line, said.decode()  # ended without saying so
        said += line
    judge.release.set()  # now the pairs in flight finish, and no other starts
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + signal.SIGTERM, out.decode() + err.decode()
    assert "Stopped early: interrupted" in out.decode()
    interrupted = len(judge.received)
    assert interrupted < 48

    code, out2, err2 = await judge_cli("--config", str(config), "--yes")
    assert code == 0, out2 + err2
    # 24 pairs in two orders each, all judged now: 48 calls in all means none went twice.
    assert len(judge.received) == 48
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM judgments").fetchone() == (48,)


async def test_pairs_whose_request_was_not_kept_are_skipped_and_said_why(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    cfg = recording_config(old, new, db, noise=0.0, request="hash", response="full")
    await record(make_sidecar, sdk, cfg, KINDS)
    config = write_judge_config(tmp_path, old, new, judge, db)
    code, out, _ = await judge_cli("--config", str(config), "--yes")
    assert code == 0
    assert "Skipped 4 pairs that cannot be judged:" in out
    assert "4  request body not kept (record.bodies.request is not full)" in out
    assert "Nothing to judge." in out and judge.received == []


async def test_a_judge_without_a_price_says_the_cost_is_unknown(
    old, new, make_sidecar, sdk, judge: FakeJudge, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    await record(make_sidecar, sdk, recording_config(old, new, db, noise=0.0), KINDS[:1])
    config = write_judge_config(tmp_path, old, new, judge, db, budget_usd=0.000001)
    set_in(config, "report.pricing", {})
    code, out, _ = await judge_cli("--config", str(config), "--yes")
    assert code == 0
    assert 'Estimated cost: unknown: no price at report.pricing.judge."*"' in out
    assert "cannot be checked" in out
    assert len(judge.received) == 2


async def test_a_config_without_a_judge_section_is_refused(
    old, new, judge: FakeJudge, tmp_path: Path
) -> None:
    config = write_judge_config(tmp_path, old, new, judge, tmp_path / "rec.db")
    cfg = yaml.safe_load(config.read_text())
    del cfg["judge"]
    config.write_text(yaml.safe_dump(cfg))
    code, _, err = await judge_cli("--config", str(config), "--yes")
    assert code == 2 and "no `judge:` section" in err
