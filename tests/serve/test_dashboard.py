"""The live dashboard: its JSON, its window of figures, and the page as Chromium draws it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.record.meter import Meter
from proxy.serve.app import Sidecar
from proxy.serve.live import SLOT_S, SLOTS, rollback_command
from proxy.serve.metrics import BATCH, HELD_BYTES, Metrics
from tests.conftest import base_config
from tests.report.browser import chromium

MESSAGES = [{"role": "user", "content": "hi"}]
KEY = "sk-sidecar-admin-key-000000"
UPSTREAMS = "document.getElementById('upstreams').innerText"


def on(**overrides: Any) -> dict[str, Any]:
    return {"metrics": {"enabled": True}, **overrides}


async def get(sc: Sidecar, path: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{sc.host}:{sc.port}{path}", headers=headers) as r,
    ):
        is_json = r.content_type == "application/json"
        return r.status, await (r.json() if is_json else r.text())


async def calls(sc: Sidecar, sdk: Any, n: int) -> None:
    for _ in range(n):
        await sdk(sc).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_the_json_shows_configured_and_served_split_and_the_shadow_beside_the_primary(
    old, new, make_sidecar, sdk
) -> None:
    cfg = on(split={"old": 50, "new": 50}, shadow={"upstream": "new", "sample": 1.0})
    sc = await make_sidecar(base_config(old, new, **cfg))
    await calls(sc, sdk, 30)
    await sc.shadower.close(5)
    status, view = await get(sc, "/_proxy/live")
    assert status == 200
    t = view["traffic"]
    (route,) = t["routes"]
    served_old = len([r for r in old.received])  # old only ever serves: it is no shadow
    assert route["configured"] == {"old": 0.5, "new": 0.5}
    assert route["calls"] == 30
    assert route["served"]["old"] == round(served_old / 30, 4)
    rows = {(r["upstream"], r["role"]): r for r in t["upstreams"]}
    assert rows[("old", "primary")]["calls"] == served_old
    assert rows[("new", "shadow")]["calls"] == served_old  # a copy of each call old served
    assert rows[("old", "primary")]["error_rate"] == 0.0
    assert rows[("old", "primary")]["p50_ms"] is not None
    (pair,) = t["compare"]
    assert (pair["shadow"], pair["primary"], pair["copies"]) == ("new", "old", served_old)
    assert pair["failures"] == "no difference seen"
    assert view["config"]["revision"] == sc.live.current.revision
    assert view["rollback_command"] == rollback_command(sc.path)
    assert view["shadow"]["sent"] == served_old


async def test_without_metrics_the_json_has_the_state_and_no_traffic(
    old, new, make_sidecar
) -> None:
    sc = await make_sidecar(base_config(old, new, guard={"min_requests": 20}))
    status, view = await get(sc, "/_proxy/live")
    assert status == 200
    assert view["traffic"] is None
    assert view["config"]["guard"] == {"tripped": []}
    assert view["config"]["rollback"] is False


async def test_the_page_is_read_only_and_its_json_needs_a_key_when_keys_are_set(
    old, new, make_sidecar
) -> None:
    listen = {"host": "127.0.0.1", "port": 0, "keys": [KEY]}
    sc = await make_sidecar(base_config(old, new, **on(listen=listen)))
    status, page = await get(sc, "/_proxy/")
    assert status == 200 and "sessionStorage" in page and sc.live.current.revision not in page
    assert (await get(sc, "/_proxy/live"))[0] == 401
    assert (await get(sc, "/_proxy/live", KEY))[0] == 200
    async with aiohttp.ClientSession() as http:
        for method in ("POST", "PUT", "DELETE"):
            async with http.request(method, f"http://{sc.host}:{sc.port}/_proxy/") as r:
                assert r.status in (401, 405)


def test_the_rollback_command_turns_the_switch_on_in_a_file_with_or_without_the_key(
    tmp_path: Path,
) -> None:
    import subprocess

    for text in ("primary: old\nrollback: false\n", "primary: old\n"):
        path = tmp_path / "my config.yaml"  # a space, so the quoting is tested too
        path.write_text(text)
        subprocess.run(rollback_command(str(path)), shell=True, check=True)
        assert yaml.safe_load(path.read_text())["rollback"] is True


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Up:
    name = "old"


class Try:
    upstream = Up()
    role = "shadow"
    model_sent = None


def copy_of(ms: float, kind: str | None = None) -> Meter:
    meter = Meter("shadow", "old", None, False)
    meter.status, meter.total_ms, meter.error_kind = (500 if kind else 200), ms, kind  # type: ignore[assignment]
    return meter


def watching(clock: Clock) -> Metrics:
    return Metrics(None, clock)  # type: ignore[arg-type]  # no collector is asked for here


def test_the_window_lets_go_of_calls_older_than_its_span() -> None:
    clock = Clock()
    metrics = watching(clock)
    for _ in range(10):
        metrics.copied("req_1", Try(), copy_of(12.0))  # type: ignore[arg-type]
    assert metrics.window.view(metrics)["upstreams"][0]["calls"] == 10
    clock.now += SLOT_S * (SLOTS - 1)
    assert metrics.window.view(metrics)["upstreams"][0]["calls"] == 10  # still inside
    clock.now += SLOT_S
    assert metrics.window.view(metrics)["upstreams"] == []  # gone, though counted since start
    metrics.copied("req_1", Try(), copy_of(12.0))  # type: ignore[arg-type]
    (row,) = metrics.window.view(metrics)["upstreams"]
    assert row["calls"] == 1
    assert 12.0 <= row["p50_ms"] <= 12.0 * 1.05  # the upper bound of its 5% bucket
    assert metrics.series[("old", "shadow")].calls_and_failures() == (11, 0)


def test_the_window_counts_each_slot_and_takes_percentiles_from_its_buckets() -> None:
    clock = Clock()
    metrics = watching(clock)
    for ms in range(1, 101):  # 1..100 ms in the first slot, one in five failing
        metrics.copied("r", Try(), copy_of(float(ms), "http_5xx" if ms % 5 == 0 else None))  # type: ignore[arg-type]
    clock.now += 2 * SLOT_S  # a slot with no calls, then three calls
    for _ in range(3):
        metrics.copied("r", Try(), copy_of(1000.0))  # type: ignore[arg-type]
    view = metrics.window.view(metrics)
    (row,) = view["upstreams"]
    assert (row["calls"], row["failed"], row["error_rate"]) == (103, 20, round(20 / 103, 4))
    assert 52.0 <= row["p50_ms"] <= 52.0 * 1.05  # nearest rank: the 52nd of 103
    assert 1000.0 <= row["p99_ms"] <= 1050.0
    assert row["per_s"] == round(103 / (3 * SLOT_S), 2)  # over the three slots it has seen
    assert view["rates"]["per_upstream"] == {}  # copies are not the app's calls: no rate line


class Served(Try):
    role = "primary"


def test_the_rate_of_each_slot_is_the_difference_of_its_marks() -> None:
    clock = Clock()
    metrics = watching(clock)
    for _ in range(4):
        metrics.copied("r", Served(), copy_of(10.0))  # type: ignore[arg-type]
    clock.now += 2 * SLOT_S
    for _ in range(2):
        metrics.copied("r", Served(), copy_of(10.0))  # type: ignore[arg-type]
    rates = metrics.window.view(metrics)["rates"]["per_upstream"]["old"]
    assert rates[-3:] == [4 / SLOT_S, 0.0, 2 / SLOT_S]
    assert sum(rates[:-3]) == 0


async def test_the_dashboard_draws_live_figures_in_chromium_and_they_move(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    cfg = on(split={"old": 50, "new": 50}, shadow={"upstream": "new", "sample": 1.0})
    sc = await make_sidecar(base_config(old, new, **cfg))
    await calls(sc, sdk, 10)
    url = f"http://{sc.host}:{sc.port}/_proxy/"
    async with chromium(tmp_path) as browser:
        page = await browser.open(url)
        first = await page.wait_for(f"{UPSTREAMS}.includes('primary') && {UPSTREAMS}")
        text = await page.evaluate("document.body.innerText")
        chart = await page.evaluate("document.querySelectorAll('#chart polyline').length")
        await calls(sc, sdk, 10)
        await page.goto(url)
        second = await page.wait_for(f"{UPSTREAMS}.includes('primary') && {UPSTREAMS}")
    assert page.errors == []
    assert "old" in first and "new" in first
    assert sc.live.current.revision in text and "rollback off" in text
    assert rollback_command(sc.path) in text
    assert chart >= 1
    assert first != second  # ten more calls: the counts moved


async def test_with_keys_the_page_asks_for_one_and_then_shows_the_figures(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    listen = {"host": "127.0.0.1", "port": 0, "keys": [KEY]}
    sc = await make_sidecar(base_config(old, new, **on(listen=listen)))
    async with chromium(tmp_path) as browser:
        page = await browser.open(f"http://{sc.host}:{sc.port}/_proxy/")
        asked = await page.wait_for(
            "getComputedStyle(document.getElementById('keyform')).display !== 'none'"
        )
        await page.evaluate(
            f"document.getElementById('key').value = {KEY!r};"
            "document.getElementById('keyform').requestSubmit()"
        )
        shown = await page.wait_for(f"{UPSTREAMS}.includes('no calls') || {UPSTREAMS}")
        kept = await page.evaluate("sessionStorage.getItem('sidecar-key')")
    # The 401 of the first try is the one error a browser logs, and it is the point.
    assert all("401" in e.text for e in page.errors)
    assert asked and shown and kept == KEY


def test_calls_are_counted_in_batches_and_every_read_counts_what_waits() -> None:
    metrics = watching(Clock())
    for _ in range(BATCH - 1):
        metrics.copied("r", Try(), copy_of(10.0))  # type: ignore[arg-type]
    assert metrics.series == {}  # noted, not yet counted
    metrics.copied("r", Try(), copy_of(10.0))  # type: ignore[arg-type]
    assert metrics.series[("old", "shadow")].calls_and_failures() == (BATCH, 0)
    metrics.copied("r", Try(), copy_of(10.0))  # type: ignore[arg-type]
    assert metrics.window.view(metrics)["upstreams"][0]["calls"] == BATCH + 1  # a read counts
    big = copy_of(10.0)
    big.body = b"x" * HELD_BYTES  # a large answer is not kept waiting for the batch
    metrics.copied("r", Try(), big)  # type: ignore[arg-type]
    assert metrics.series[("old", "shadow")].calls_and_failures() == (BATCH + 2, 0)
