"""`python -m proxy smoke` against fake gateways: a good one passes every row; one with a known
defect fails exactly the row that matches, with a non-zero exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from proxy import cli
from proxy.fakes.provider import Behaviour, FakeProvider
from tests.smoke.gateways import Defect, Gateway

KEY = "sk-test-gateway-key-0123456789"
MODELS = {
    "gpt-4o-mini": "prov/gpt-4o-mini",
    "text-embedding-3-small": "prov/embed-small",
    "dall-e-3": "prov/flux",
}


def write_config(tmp_path: Path, url: str, **upstream: Any) -> Path:
    cfg = {
        "upstreams": {"gw": {"base_url": url, "api_key": KEY, "models": MODELS, **upstream}},
        "primary": "gw",
        "record": {"enabled": False},
    }
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def smoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The command as `python -m proxy smoke` runs it, on its own thread and event loop, while
    the fakes keep serving on this one."""
    args = cli.parser().parse_args(["smoke", *argv])
    code = await asyncio.to_thread(args.func, args)
    out, err = capsys.readouterr()
    return code, out, err


def failed(out: str) -> set[str]:
    rows = orjson.loads(out)["rows"]
    return {r["check"] for r in rows if r["status"] == "fail"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    provider = FakeProvider(name="gw", api_key=KEY, models=tuple(MODELS.values()))
    await provider.start()
    yield provider
    await provider.close()


async def test_a_good_gateway_passes_every_row(
    fake: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await smoke(capsys, "-c", str(write_config(tmp_path, fake.url)), "--upstream", "gw", "--json")  # fmt: skip
    report = orjson.loads(out)
    assert code == 0 and report["ok"] is True
    assert {r["check"]: r["status"] for r in report["rows"]} == {
        name: "pass" for name in (
            "chat", "stream", "tools", "json", "structured", "embeddings", "models",
            "responses", "responses_stream", "images", "wrong_model", "wrong_key", "latency",
        )
    }  # fmt: skip
    # Said before it was done, and done as said: every call reached the gateway.
    assert f"{report['calls']} calls" in err and len(fake.received) == report["calls"] == 12
    # Through the model map, as the app's calls go.
    assert {r.json["model"] for r in fake.received if r.json} >= set(MODELS.values())
    assert KEY not in out + err


@pytest.mark.parametrize(
    ("defect", "row"),
    [
        ("stream_without_usage", "stream"),
        ("html_for_wrong_model", "wrong_model"),
        ("echoes_key", "wrong_key"),
    ],
)
async def test_a_gateway_with_one_defect_fails_exactly_its_row(
    fake: FakeProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    defect: Defect,
    row: str,
) -> None:
    gateway = Gateway(fake, defect, KEY)
    await gateway.start()
    try:
        path = write_config(tmp_path, gateway.url)
        code, out, err = await smoke(capsys, "-c", str(path), "--upstream", "gw", "--json")
    finally:
        await gateway.close()
    assert code == 1 and failed(out) == {row}
    assert KEY not in out + err and "sk-smoke-wrong" not in out + err


async def test_tool_call_arguments_that_are_not_json_fail_the_tools_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = FakeProvider(
        name="gw", api_key=KEY, models=tuple(MODELS.values()), behaviour=Behaviour(tool_json="broken")
    )  # fmt: skip
    await broken.start()
    try:
        code, out, _ = await smoke(capsys, "-c", str(write_config(tmp_path, broken.url)), "--upstream", "gw")  # fmt: skip
    finally:
        await broken.close()
    assert code == 1
    line = next(s for s in out.splitlines() if " tools " in s)
    assert line.split()[0] == "FAIL" and "not JSON" in line
    assert "field choices[0].message.tool_calls[0].function.arguments" in out
    assert sum(s.lstrip().startswith("FAIL") for s in out.splitlines()) == 1


async def test_a_wrong_key_answered_with_200_fails_the_wrong_key_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_door = FakeProvider(name="gw", api_key=None, models=tuple(MODELS.values()))
    await open_door.start()
    try:
        path = write_config(tmp_path, open_door.url)
        code, out, _ = await smoke(capsys, "-c", str(path), "--upstream", "gw", "--json")
    finally:
        await open_door.close()
    assert code == 1 and failed(out) == {"wrong_key"}
    row = next(r for r in orjson.loads(out)["rows"] if r["check"] == "wrong_key")
    assert row["evidence"]["status"] == 200 and "accepted" in row["reason"]


async def test_only_and_the_upstream_s_skip_list_leave_rows_unsent(
    fake: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, fake.url, smoke={"skip": ["stream"]})
    code, out, _ = await smoke(capsys, "-c", str(path), "--upstream", "gw", "--only", "chat,stream,latency", "--json")  # fmt: skip
    rows = {r["check"]: r for r in orjson.loads(out)["rows"]}
    assert code == 0 and rows["chat"]["status"] == "pass" and rows["latency"]["status"] == "pass"
    assert (
        rows["stream"]["status"] == "skip" and "upstreams.gw.smoke.skip" in rows["stream"]["reason"]
    )
    assert rows["tools"]["status"] == "skip" and "--only" in rows["tools"]["reason"]
    assert len(fake.received) == 1


async def test_any_gateway_by_url_with_its_key_from_the_environment(
    fake: FakeProvider, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_KEY", KEY)
    code, out, _ = await smoke(
        capsys, "--base-url", fake.url, "--api-key-env", "GW_KEY",
        "--model", "prov/gpt-4o-mini", "--model", "embeddings=prov/embed-small",
    )  # fmt: skip
    assert code == 0 and KEY not in out
    assert "SKIP  images" in out and "PASS  embeddings" in out and "PASS  wrong_key" in out


async def test_an_anthropic_shaped_gateway_skips_what_its_shape_has_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claude = FakeProvider(name="c", api="anthropic", api_key=KEY)
    await claude.start()
    try:
        path = write_config(
            tmp_path, claude.url, api="anthropic", models={"gpt-4o-mini": "claude-haiku-4-5"},
            smoke={"skip": ["json", "structured"]},
        )  # fmt: skip
        code, out, _ = await smoke(capsys, "-c", str(path), "--upstream", "gw", "--json")
    finally:
        await claude.close()
    rows = {r["check"]: r for r in orjson.loads(out)["rows"]}
    assert code == 0, out
    for name in ("chat", "stream", "tools", "models", "wrong_model", "wrong_key", "latency"):
        assert rows[name]["status"] == "pass", rows[name]
    assert rows["responses"]["status"] == "skip" and "cannot serve" in rows["responses"]["reason"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--base-url", "http://127.0.0.1:9/v1", "--model", "m"], "needs a key"),
        (["--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "NOT_SET_HERE"], "not set"),
        (["--only", "chat,teleport", "--base-url", "http://127.0.0.1:9/v1"], "no check 'teleport'"),
        ([], "name the target"),
    ],
)
async def test_a_command_line_that_names_no_target_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, out, err = await smoke(capsys, *argv)
    assert code == 2 and says in err and out == ""
