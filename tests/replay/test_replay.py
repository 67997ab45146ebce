"""`python -m proxy replay` end to end: traffic recorded through the real sidecar by the
official SDK, replayed to a second fake, compared by the report and graded by the judge."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from proxy import cli
from proxy import config as config_mod
from proxy.fakes.provider import Behaviour, FakeProvider
from proxy.replay import command
from proxy.replay.compare import ANOTHER_TIME
from proxy.report import build as report
from proxy.report import text as report_text
from proxy.report.data import ReportFilter
from proxy.report.thresholds import ReportSettings
from proxy.serve.app import Sidecar
from tests.conftest import NEW_KEY, SidecarFactory, base_config
from tests.judge.conftest import JUDGE_MODEL, TOOLS, judge_in_process
from tests.judge.fake_judge import KEY as JUDGE_KEY
from tests.judge.fake_judge import FakeJudge

# What the app sends: 4 chats (one with tools), a stream, an embedding, a first response and
# its follow-up, and a file upload. The upload and the follow-up (naming a stored response)
# are not safe to send twice.
REPLAYABLE = 7


async def record_traffic(
    make_sidecar: SidecarFactory, sdk: Callable[[Sidecar], openai.AsyncOpenAI], cfg: dict[str, Any]
) -> None:
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    for i in range(3):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Explain rice, {i}"}]
        )
    await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Lisbon?"}],
        tools=TOOLS,
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "A haiku"}], stream=True
    )
    async for _ in stream:
        pass
    await client.embeddings.create(model="text-embedding-3-small", input="replay me")
    first = await client.responses.create(model="gpt-4o-mini", input="Name a colour")
    await client.responses.create(
        model="gpt-4o-mini", input="Another", previous_response_id=first.id
    )
    with pytest.raises(openai.NotFoundError):  # the fake keeps no files: still an object call
        await client.files.create(file=("batch.jsonl", b"{}\n"), purpose="batch")
    await sc.stop()


def write_config(tmp_path: Path, cfg: dict[str, Any], **extra: Any) -> Path:
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump({**cfg, **extra}))
    return path


async def replay(*argv: str) -> int:
    """The command as `python -m proxy replay` runs it, on a thread of its own with its own
    event loop, while the fakes serve on this one."""
    args = cli.parser().parse_args(["replay", *argv])
    return int(await asyncio.to_thread(args.func, args))


def replays(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT x.run, r.upstream, e.path, r.role FROM replays x "
            "JOIN responses r ON r.exchange_id = x.exchange_id AND r.role = 'replay' "
            "JOIN exchanges e ON e.id = x.exchange_id ORDER BY e.ts"
        ).fetchall()


@pytest.fixture
def recorded_config(old: FakeProvider, new: FakeProvider, tmp_path: Path) -> dict[str, Any]:
    db = tmp_path / "sidecar.db"
    return base_config(old, new, record={"enabled": True, "path": str(db)})


async def test_recorded_traffic_is_replayed_once_each_and_the_report_compares_it(
    make_sidecar: SidecarFactory,
    sdk: Callable[[Sidecar], openai.AsyncOpenAI],
    new: FakeProvider,
    recorded_config: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await record_traffic(make_sidecar, sdk, recorded_config)
    assert not new.received  # the candidate saw nothing live
    path = write_config(tmp_path, recorded_config)
    db = Path(recorded_config["record"]["path"])

    assert await replay("-c", str(path), "--upstream", "new", "--run", "r1", "--yes") == 0
    out = capsys.readouterr().out
    assert "2  not safe to send twice" in out.replace(",", "")
    rows = replays(db)
    assert len(rows) == REPLAYABLE == len(new.received)
    assert {r[0] for r in rows} == {"r1"} and {r[1] for r in rows} == {"new"}
    assert not any(r[2].startswith("/v1/files") for r in rows)
    # Through the candidate's model map and key, streams as streams.
    assert {r.json["model"] for r in new.received if r.json} == {
        "prov/gpt-4o-mini",
        "prov/text-embedding-3-small",
    }
    assert all(r.headers["Authorization"] == f"Bearer {NEW_KEY}" for r in new.received)
    assert sum(bool(r.json and r.json.get("stream")) for r in new.received) == 1

    # Run again: nothing left, nothing sent twice.
    assert await replay("-c", str(path), "--upstream", "new", "--yes") == 0
    assert "Nothing to replay." in capsys.readouterr().out
    assert len(new.received) == REPLAYABLE

    rep = report.build_report(str(db), ReportFilter(replay="r1"), ReportSettings())
    verdict = next(v for v in rep.verdicts if v.role == "replay")
    assert verdict.upstream == "new" and ANOTHER_TIME in rep.notes
    assert next(p for p in rep.pairs if p.role == "replay").pairs == REPLAYABLE
    assert "replay pairs, against answers recorded at another time" in report_text.render_text(rep)
    assert rep.traffic.exchanges == REPLAYABLE  # the filter keeps the run's exchanges only


async def test_an_interrupted_run_resumes_without_sending_twice(
    make_sidecar: SidecarFactory,
    sdk: Callable[[Sidecar], openai.AsyncOpenAI],
    old: FakeProvider,
    recorded_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    await record_traffic(make_sidecar, sdk, recorded_config)
    slow = FakeProvider(
        name="slow",
        api_key=NEW_KEY,
        models=("prov/gpt-4o-mini", "prov/text-embedding-3-small"),
        behaviour=Behaviour(latency=0.05),
    )
    await slow.start()
    try:
        recorded_config["upstreams"]["new"]["base_url"] = slow.url
        path = write_config(tmp_path, recorded_config)
        cfg, _ = config_mod.load(str(path))
        args = cli.parser().parse_args(
            ["replay", "-c", str(path), "--upstream", "new", "--run", "r2", "--concurrency", "1", "--rate", "1000/s"]
        )  # fmt: skip
        o = command.options(args, cfg)
        found = await command.plan(cfg, o)
        stop = asyncio.Event()
        task = asyncio.create_task(command.run_replay(cfg, o, found, [], stop))
        while len(slow.received) < 2:
            await asyncio.sleep(0.01)
        stop.set()  # as the first Ctrl-C does: the call in flight finishes and is written
        progress = await task
        assert progress.stopped == "interrupted"
        written = len(replays(Path(cfg.record.path)))
        assert 2 <= written < REPLAYABLE and written == len(slow.received)

        assert await replay("-c", str(path), "--upstream", "new", "--run", "r2", "--yes") == 0
        assert len(replays(Path(cfg.record.path))) == REPLAYABLE == len(slow.received)
    finally:
        await slow.close()


async def test_the_budget_stops_the_run_before_a_call_that_could_pass_it(
    make_sidecar: SidecarFactory,
    sdk: Callable[[Sidecar], openai.AsyncOpenAI],
    new: FakeProvider,
    recorded_config: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await record_traffic(make_sidecar, sdk, recorded_config)
    pricing = {"new": {"*": {"request": 1.0}}}  # a dollar a call
    path = write_config(tmp_path, recorded_config, report={"pricing": pricing})
    code = await replay("-c", str(path), "--upstream", "new", "--budget-usd", "2.5", "--yes")
    out = capsys.readouterr().out
    assert code == 1 and "Stopped early: the next call could pass the budget ($2.5)" in out
    assert "Estimated cost: $7.0000" in out and "over the budget" in out
    assert len(new.received) == 2 == len(replays(Path(recorded_config["record"]["path"])))


async def test_the_judge_grades_replay_pairs_as_the_quality_check(
    make_sidecar: SidecarFactory,
    sdk: Callable[[Sidecar], openai.AsyncOpenAI],
    recorded_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    await record_traffic(make_sidecar, sdk, recorded_config)
    fake_judge = FakeJudge()
    await fake_judge.start()
    try:
        recorded_config["upstreams"]["judge"] = {"base_url": fake_judge.url, "api_key": JUDGE_KEY}
        path = write_config(
            tmp_path,
            recorded_config,
            judge={"upstream": "judge", "model": JUDGE_MODEL},
            report={"pricing": {"judge": {JUDGE_MODEL: {"input": 1.0, "output": 4.0}}}},
        )
        assert await replay("-c", str(path), "--upstream", "new", "--yes") == 0
        progress = await judge_in_process(path)
    finally:
        await fake_judge.close()
    # The chats, the stream and the first response have text to judge; the embedding not.
    assert progress.finished == REPLAYABLE - 1
    rep = report.build_report(recorded_config["record"]["path"], ReportFilter(), ReportSettings())
    quality = next(c for c in rep.verdicts[0].checks if c.name == "quality")
    assert rep.verdicts[0].role == "replay" and quality.n == REPLAYABLE - 1
