"""The rollback switch: the config file is watched, validated, and swapped in without a restart."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.fakes.provider import Behaviour
from proxy.serve.app import Sidecar
from tests.conftest import base_config

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[2]


async def served_by(s: aiohttp.ClientSession, sc: Sidecar) -> str:
    async with s.get(f"{sc.url}/models") as r:
        await r.read()
        assert r.status == 200
        return r.headers["x-sidecar-upstream"]


async def health(s: aiohttp.ClientSession, sc: Sidecar) -> dict[str, Any]:
    async with s.get(sc.url.removesuffix("/v1") + "/_proxy/health") as r:
        data: dict[str, Any] = await r.json()
        return data


async def wait_for(cond: Any, timeout: float = 3.0) -> float:
    """Poll `cond()` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not await cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def write_rename(path: Path, cfg: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    os.replace(tmp, path)


def write_in_place(path: Path, cfg: dict[str, Any]) -> None:
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write(yaml.safe_dump(cfg))


async def test_rollback_moves_new_requests_within_one_second(old, new, make_sidecar, sdk) -> None:
    cfg = base_config(old, new, split={"old": 0, "new": 100})
    sc = await make_sidecar(cfg, watch=True)
    path = Path(sc.path)
    new.behaviour = Behaviour(chunk_delay=0.05)
    client = sdk(sc)
    # A stream opened before the flip must finish where it started.
    stream = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert stream.headers["x-sidecar-upstream"] == "new"
    failures: list[BaseException] = []
    after_flip: list[tuple[float, str]] = []
    flipped_at: list[float] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                raw = await client.models.with_raw_response.list()
            except Exception as e:
                failures.append(e)
                continue
            if flipped_at:
                after_flip.append((started - flipped_at[0], raw.headers["x-sidecar-upstream"]))

    workers = [asyncio.create_task(steady()) for _ in range(4)]
    await asyncio.sleep(0.2)
    write_rename(path, {**cfg, "rollback": True})
    flipped_at.append(time.monotonic())
    async with aiohttp.ClientSession() as s:
        await wait_for(lambda: _rollback_on(s, sc), timeout=2)
    await asyncio.sleep(max(0.0, flipped_at[0] + 1.3 - time.monotonic()))
    stop.set()
    await asyncio.gather(*workers)
    content = [c.choices[0].delta.content or "" async for c in stream.parse() if c.choices]
    assert failures == []
    assert "".join(content)  # the old stream completed
    assert new.received[0].json["stream"] is True
    late = [up for t, up in after_flip if t > 1.0]
    assert late and set(late) == {"old"}


async def _rollback_on(s: aiohttp.ClientSession, sc: Sidecar) -> bool:
    return bool((await health(s, sc))["rollback"])


async def test_each_write_style_triggers_a_reload(old, new, make_sidecar, tmp_path: Path) -> None:
    cfg = base_config(old, new, split={"old": 100})
    sc = await make_sidecar(cfg, watch=True)
    path = Path(sc.path)
    async with aiohttp.ClientSession() as s:
        write_rename(path, {**cfg, "split": {"new": 100}})
        await wait_for(lambda: _serves(s, sc, "new"), timeout=1.5)
        write_in_place(path, {**cfg, "split": {"old": 100}})
        await wait_for(lambda: _serves(s, sc, "old"), timeout=1.5)


async def _serves(s: aiohttp.ClientSession, sc: Sidecar, name: str) -> bool:
    return await served_by(s, sc) == name


async def test_configmap_symlink_swap_triggers_a_reload(
    old, new, make_sidecar, tmp_path: Path
) -> None:
    # Kubernetes mounts config.yaml -> ..data/config.yaml, ..data -> ..2024_x; an update swaps ..data.
    mount = tmp_path / "mount"
    mount.mkdir()
    cfg = base_config(old, new, split={"old": 100})
    v1 = mount / "..v1"
    v1.mkdir()
    (v1 / "config.yaml").write_text(yaml.safe_dump(cfg))
    os.symlink("..v1", mount / "..data")
    os.symlink("..data/config.yaml", mount / "config.yaml")
    from proxy import config as config_mod

    parsed, text = config_mod.load(str(mount / "config.yaml"))
    sc = Sidecar(parsed, text, str(mount / "config.yaml"), watch=True)
    await sc.start()
    try:
        v2 = mount / "..v2"
        v2.mkdir()
        (v2 / "config.yaml").write_text(yaml.safe_dump({**cfg, "split": {"new": 100}}))
        os.symlink("..v2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: _serves(s, sc, "new"), timeout=1.5)
    finally:
        await sc.stop()


async def test_broken_file_keeps_old_config_until_fixed(old, new, make_sidecar) -> None:
    cfg = base_config(old, new, split={"old": 100})
    sc = await make_sidecar(cfg, watch=True)
    path = Path(sc.path)
    revision = sc.live.current.revision
    async with aiohttp.ClientSession() as s:
        path.write_text("upstreams: {old: {base_url: http://x\n  split: [")  # half-written
        await wait_for(lambda: _has_error(s, sc), timeout=1.5)
        h = await health(s, sc)
        assert "invalid YAML" in h["last_reload_error"]["message"]
        assert h["revision"] == revision
        assert await served_by(s, sc) == "old"
        write_rename(path, {**cfg, "split": {"old": 100, "bogus": 1}})
        await wait_for(lambda: _error_mentions(s, sc, "split.bogus"), timeout=1.5)
        # The switch given twice: YAML would keep the last, `false`; the file is refused.
        path.write_text("rollback: true\n" + yaml.safe_dump(cfg) + "rollback: false\n")
        await wait_for(lambda: _error_mentions(s, sc, "rollback: given twice"), timeout=1.5)
        assert (await health(s, sc))["revision"] == revision
        write_rename(path, {**cfg, "split": {"new": 1}})
        await wait_for(lambda: _serves(s, sc, "new"), timeout=1.5)
        h = await health(s, sc)
        assert h["last_reload_error"] is None and h["revision"] != revision


async def _has_error(s: aiohttp.ClientSession, sc: Sidecar) -> bool:
    return (await health(s, sc))["last_reload_error"] is not None


async def _error_mentions(s: aiohttp.ClientSession, sc: Sidecar, text: str) -> bool:
    err = (await health(s, sc))["last_reload_error"]
    return err is not None and text in err["message"]


async def test_missing_env_var_refuses_the_reload(old, new, make_sidecar) -> None:
    cfg = base_config(old, new)
    sc = await make_sidecar(cfg)
    bad = {
        **cfg,
        "upstreams": {
            **cfg["upstreams"],
            "old": {"base_url": old.url, "api_key": "${NO_SUCH_VAR_X}"},
        },
    }
    Path(sc.path).write_text(yaml.safe_dump(bad))
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.url.removesuffix("/v1") + "/_proxy/reload") as r:
            assert r.status == 400
            assert "NO_SUCH_VAR_X" in (await r.json())["error"]["message"]
        assert await served_by(s, sc) == "old"


async def test_weight_changes_show_in_health(old, new, make_sidecar) -> None:
    cfg = base_config(old, new, split={"old": 0, "new": 100})
    sc = await make_sidecar(cfg)
    async with aiohttp.ClientSession() as s:
        assert (await health(s, sc))["split"] == {"new": 1.0}
        write_rename(Path(sc.path), {**cfg, "split": {"old": 100, "new": 0}})
        async with s.post(sc.url.removesuffix("/v1") + "/_proxy/reload") as r:
            assert r.status == 200
            revision = (await r.json())["revision"]
        h = await health(s, sc)
        assert h["split"] == {"old": 1.0} and h["revision"] == revision
        assert {await served_by(s, sc) for _ in range(20)} == {"old"}


async def test_pools_survive_reload_and_removed_upstreams_close(old, new, make_sidecar) -> None:
    cfg = base_config(old, new)
    sc = await make_sidecar(cfg)
    old_client = sc.live.current.upstreams["old"]
    new_client = sc.live.current.upstreams["new"]
    async with aiohttp.ClientSession() as s:
        await served_by(s, sc)
        session = old_client.session
        upstreams = {"old": cfg["upstreams"]["old"]}
        write_rename(Path(sc.path), {**cfg, "upstreams": upstreams, "split": {"old": 1}})
        assert await sc.reload("test")
        assert sc.live.current.upstreams["old"] is old_client and old_client.session is session
        assert "new" not in sc.live.current.upstreams
        await wait_for(lambda: _closed(new_client), timeout=2)


async def _closed(client: Any) -> bool:
    return client._session is None


async def test_rollback_stops_shadowing(old, new, make_sidecar, sdk) -> None:
    cfg = base_config(old, new, shadow={"upstream": "new", "sample": 1.0})
    sc = await make_sidecar(cfg)
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await wait_for(lambda: _count(new, 1))
    write_rename(Path(sc.path), {**cfg, "rollback": True})
    assert await sc.reload("test")
    await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await asyncio.sleep(0.2)
    assert len(new.received) == 1


async def _count(fake: Any, n: int) -> bool:
    return len(fake.received) >= n


def test_check_accepts_the_example_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(ROOT / "config.example.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.yaml"
    text = (ROOT / "config.example.yaml").read_text().replace("primary: openai", "primary: nobody")
    broken.write_text(text.replace("sample: 0.25", "sample: 7"))
    bad = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(broken)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert f"{broken}: shadow.sample:" in bad.stderr
    assert "primary" in bad.stderr or "less than or equal" in bad.stderr


def _db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def _written(s: aiohttp.ClientSession, sc: Sidecar) -> int:
    async with s.get(sc.url.removesuffix("/v1") + "/_proxy/stats") as r:
        records = (await r.json())["records"]
    return 0 if records is None else int(records["written"])


async def test_recording_and_body_policy_follow_a_reload(
    old, new, make_sidecar, sdk, tmp_path: Path
) -> None:
    db = tmp_path / "rec.db"
    cfg = base_config(old, new)  # recording off at start: no database yet
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert not db.exists()

    on = {**cfg, "record": {"enabled": True, "path": str(db)}}
    write_rename(Path(sc.path), on)
    assert await sc.reload("test")
    first = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    # Bodies off, and a new path: the policy applies, the open database stays.
    moved = {**cfg, "record": {"enabled": True, "path": str(tmp_path / "other.db"),
                               "bodies": {"request": "none", "response": "none"}}}  # fmt: skip
    write_rename(Path(sc.path), moved)
    assert await sc.reload("test")
    second = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    write_rename(Path(sc.path), {**moved, "record": {**moved["record"], "enabled": False}})
    assert await sc.reload("test")
    third = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    async with aiohttp.ClientSession() as s:
        # 3 revisions, then 2 exchanges with a response each; the third request went unrecorded.
        await wait_for(lambda: _at_least(s, sc, 7))
    assert not (tmp_path / "other.db").exists()
    got = dict(
        _db_rows(db, "SELECT e.id, r.response_body IS NOT NULL FROM exchanges e "
                     "JOIN responses r ON r.exchange_id = e.id")
    )  # fmt: skip
    assert got == {first.headers["x-request-id"]: 1, second.headers["x-request-id"]: 0}
    assert third.headers["x-request-id"] not in got


async def _at_least(s: aiohttp.ClientSession, sc: Sidecar, n: int) -> bool:
    return await _written(s, sc) >= n


async def test_recording_that_cannot_open_its_database_refuses_the_reload(
    old, new, make_sidecar, tmp_path: Path
) -> None:
    cfg = base_config(old, new)
    sc = await make_sidecar(cfg)
    revision = sc.live.current.revision
    (tmp_path / "a-file").write_text("")
    bad = str(tmp_path / "a-file" / "rec.db")  # a file where its directory should be
    write_rename(Path(sc.path), {**cfg, "record": {"enabled": True, "path": bad}})
    assert not await sc.reload("test")
    async with aiohttp.ClientSession() as s:
        h = await health(s, sc)
        assert h["revision"] == revision
        assert await _written(s, sc) == 0
    assert sc.recorder is None
    reason = sc.live.last_error or ""
    assert sc.path in reason and "record.path" in reason and "a-file is a file" in reason
