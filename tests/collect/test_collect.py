"""`collect` end to end: real sidecars record calls from the openai SDK, then are collected."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from proxy import cli
from proxy.fakes.provider import FakeProvider
from proxy.record.schema import open_readonly
from proxy.serve.app import Sidecar
from tests.conftest import CLIENT_KEY, SidecarFactory, base_config

KEY_ENV = "SIDECAR_TEST_COLLECT_KEY"


def recording_config(old: FakeProvider, new: FakeProvider, db: Path) -> dict[str, Any]:
    return base_config(
        old,
        new,
        listen={"host": "127.0.0.1", "port": 0, "keys": [CLIENT_KEY]},
        record={"enabled": True, "path": str(db)},
    )


def exchanges(db: Path) -> int:
    conn = open_readonly(str(db))
    try:
        return int(conn.execute("SELECT count(*) FROM exchanges").fetchone()[0])
    finally:
        conn.close()


async def record_calls(sidecar: Sidecar, client: openai.AsyncOpenAI, db: Path, n: int) -> None:
    for i in range(n):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}]
        )
    deadline = time.monotonic() + 5
    while exchanges(db) < n:  # the writer batches off the request path
        assert time.monotonic() < deadline, f"{db} holds {exchanges(db)} of {n} exchanges"
        await asyncio.sleep(0.02)


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def run_cli(*argv: str) -> int:
    # collect runs its own event loop, as from a terminal; the sidecars keep this one.
    return await asyncio.to_thread(cli.main, ["collect", *argv])


@pytest.fixture
async def two_pods(
    old: FakeProvider, new: FakeProvider, make_sidecar: SidecarFactory, sdk: Any, tmp_path: Path
) -> list[Sidecar]:
    pods = []
    for name, n in (("a", 3), ("b", 5)):
        db = tmp_path / f"pod-{name}" / "sidecar.db"
        pod = await make_sidecar(recording_config(old, new, db), name=f"{name}.yaml")
        await record_calls(pod, sdk(pod), db, n)
        pods.append(pod)
    return pods


async def test_collect_saves_each_sidecars_recording_with_its_exchanges(
    two_pods: list[Sidecar], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv(KEY_ENV, CLIENT_KEY)
    out = tmp_path / "recordings"
    a, b = two_pods
    code = await run_cli(
        "--from", f"http://127.0.0.1:{a.port}", "--from", f"127.0.0.1:{b.port}",
        "--key-env", KEY_ENV, "--out", str(out),
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    files = {p.name.split("-")[1]: p for p in out.glob("*.db")}
    assert sorted(files) == sorted([str(a.port), str(b.port)])
    assert exchanges(files[str(a.port)]) == 3
    assert exchanges(files[str(b.port)]) == 5
    assert "3 exchanges" in printed.out and "5 exchanges" in printed.out
    assert "collected 2 of 2" in printed.out
    assert CLIENT_KEY not in printed.out + printed.err
    assert not list(out.glob("*.part"))
    # The snapshot made beside each recording is gone once sent.
    assert not list(tmp_path.glob("pod-*/.snapshot-*"))


async def test_a_wrong_key_gets_401_and_collect_says_so(
    two_pods: list[Sidecar], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    a = two_pods[0]
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-not-one-of-the-sidecars-keys"}
        async with session.get(
            f"{a.url.removesuffix('/v1')}/_proxy/recording", headers=headers
        ) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_api_key"
    monkeypatch.setenv(KEY_ENV, "sk-not-one-of-the-sidecars-keys")
    out = tmp_path / "recordings"
    code = await run_cli(
        "--from", f"http://127.0.0.1:{a.port}", "--key-env", KEY_ENV, "--out", str(out)
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"http://127.0.0.1:{a.port}: failed: HTTP 401" in err
    assert "--key-env" in err
    assert not list(out.glob("*"))


async def test_a_dead_pod_is_named_and_the_others_are_still_collected(
    two_pods: list[Sidecar], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv(KEY_ENV, CLIENT_KEY)
    dead = dead_address()
    out = tmp_path / "recordings"
    b = two_pods[1]
    code = await run_cli(
        "--from", dead, "--from", f"http://127.0.0.1:{b.port}", "--key-env", KEY_ENV,
        "--out", str(out),
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 1
    assert f"{dead}: failed: cannot fetch" in printed.err
    assert "collected 1 of 2" in printed.out
    [saved] = out.glob("*.db")
    assert exchanges(saved) == 5


async def test_an_unset_key_variable_is_refused_by_name(capsys: Any, tmp_path: Path) -> None:
    code = await run_cli("--from", "127.0.0.1:1", "--key-env", "SIDECAR_TEST_UNSET_VAR")
    assert code == 2
    assert "SIDECAR_TEST_UNSET_VAR" in capsys.readouterr().err
