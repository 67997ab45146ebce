"""Guardrails end to end with the official SDK: failover, the guard, quotas, the app's key."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest

from proxy.fakes.provider import Behaviour
from proxy.report.build import ReportFilter, build_report
from proxy.report.text import render_text
from proxy.report.thresholds import ReportSettings
from tests.conftest import OLD_KEY, base_config
from tests.serve.test_reload import write_rename
from tests.serve.test_shadow import recording, rows, settled

MESSAGES = [{"role": "user", "content": "hi"}]
APP_KEY = "sk-sidecar-app-key-000000000001"


async def ask(client: openai.AsyncOpenAI, n: int) -> list[str]:
    """`n` chat calls; the upstream that served each (none may fail)."""
    served = []
    for _ in range(n):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        served.append(raw.headers["x-sidecar-upstream"])
    return served


async def test_a_failing_canary_fails_over_then_the_guard_trips_it(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    new.behaviour = Behaviour(error_rate=0.34, error_status=503)
    cfg = base_config(
        old,
        new,
        split={"new": 1},
        failover={"to": "primary"},
        guard={"error_rate": 0.05, "min_requests": 20, "window": 120},
        record=recording(tmp_path),
    )
    sc = await make_sidecar(cfg)
    served = await ask(sdk(sc), 40)  # max_retries=0: any failure would raise here
    assert "old" in served and "new" in served
    guard = sc.health()["guard"]["tripped"]
    assert [t["upstream"] for t in guard] == ["new"] and guard[0]["rule"] == "error_rate"
    # Once tripped, nothing more went there.
    sent_to_new = len(new.received)
    await ask(sdk(sc), 5)
    assert len(new.received) == sent_to_new
    stats = sc.stats_view()
    # Every call after the trip went to the primary by choice, not by failover.
    assert stats["failovers"]["new"] >= 1 and stats["guard_rerouted"] >= 5
    db = str(tmp_path / "rec.db")
    await settled(sc, db, 45, 45 + stats["failovers"]["new"])
    failed = rows(
        db,
        "SELECT p.error_kind, f.upstream, f.status FROM responses p JOIN responses f "
        "ON f.exchange_id = p.exchange_id AND f.role = 'failover' WHERE p.role = 'primary'",
    )
    assert len(failed) == stats["failovers"]["new"]
    assert all(
        r["error_kind"] == "http_5xx" and r["upstream"] == "old" and r["status"] == 200
        for r in failed
    )
    await sc.stop()
    trips = rows(db, "SELECT upstream, rule, figures FROM guard_trips")
    assert [(t["upstream"], t["rule"]) for t in trips] == [("new", "error_rate")]
    # The report says how many calls failed over, and when and why the guard tripped.
    traffic = build_report(db, ReportFilter(), ReportSettings()).traffic
    assert [(f.failed, f.to, f.calls) for f in traffic.failovers] == [
        ("new", "old", stats["failovers"]["new"])
    ]
    assert [(g.upstream, g.rule) for g in traffic.trips] == [("new", "error_rate")]
    text = render_text(build_report(db, ReportFilter(), ReportSettings()))
    assert "calls failed over" in text and "the guard took these out of rotation" in text


async def test_a_canary_that_refuses_connections_never_reaches_the_app(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(old, new, split={"new": 1}, failover={})
    cfg["upstreams"]["new"]["base_url"] = "http://127.0.0.1:1/v1"
    sc = await make_sidecar(cfg)
    assert await ask(sdk(sc), 3) == ["old"] * 3
    assert sc.stats_view()["failovers"] == {"new": 3}


async def test_a_stream_that_began_is_not_failed_over(old, new, make_sidecar, sdk) -> None:
    new.behaviour = Behaviour(fail="die_mid_stream")
    sc = await make_sidecar(base_config(old, new, split={"new": 1}, failover={}))
    stream = await sdk(sc).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert not old.received and sc.stats_view()["failovers"] == {}


async def test_a_healthy_canary_with_ordinary_latency_noise_never_trips(
    old, new, make_sidecar, sdk
) -> None:
    new.behaviour = Behaviour(latency_jitter=0.01)
    guard = {"error_rate": 0.05, "ttft_p90_ms": 2000, "min_requests": 20, "window": 120}
    sc = await make_sidecar(base_config(old, new, split={"old": 1, "new": 1}, guard=guard))
    await ask(sdk(sc), 60)
    assert sc.health()["guard"]["tripped"] == []


async def test_reload_resets_a_trip_and_rollback_wins_over_it(old, new, make_sidecar, sdk) -> None:
    new.behaviour = Behaviour(error_rate=1.0, error_status=503)
    cfg = base_config(
        old, new, split={"new": 1}, failover={}, guard={"min_requests": 10, "window": 120}
    )
    sc = await make_sidecar(cfg)
    await ask(sdk(sc), 10)
    assert sc.health()["guard"]["tripped"]
    # rollback: true while tripped: everything to the primary (as before), and a new revision
    # clears the trip.
    write_rename(Path(sc.path), {**cfg, "rollback": True})
    assert await sc.reload("test")
    assert sc.health()["guard"]["tripped"] == []
    assert await ask(sdk(sc), 3) == ["old"] * 3
    # Back on the canary, healed: it takes traffic again.
    new.behaviour = Behaviour()
    write_rename(Path(sc.path), cfg)
    assert await sc.reload("test")
    assert await ask(sdk(sc), 2) == ["new"] * 2


async def test_a_tripped_guard_is_reset_by_the_admin_endpoint(old, new, make_sidecar, sdk) -> None:
    new.behaviour = Behaviour(error_rate=1.0, error_status=503)
    cfg = base_config(old, new, split={"new": 1}, failover={}, guard={"min_requests": 10})
    sc = await make_sidecar(cfg)
    await ask(sdk(sc), 10)
    reset = f"http://{sc.host}:{sc.port}/_proxy/guard/reset"
    async with aiohttp.ClientSession() as http, http.post(reset) as r:
        assert r.status == 200 and (await r.json()) == {"reset": ["new"]}
    assert sc.health()["guard"]["tripped"] == []


async def test_a_request_quota_sends_the_rest_of_the_minute_to_the_primary(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(old, new, split={"new": 1})
    cfg["upstreams"]["new"]["quota"] = {"requests_per_minute": 5}
    sc = await make_sidecar(cfg)
    served = await ask(sdk(sc), 12)
    assert served.count("new") == 5 and served.count("old") == 7
    view = sc.stats_view()["quotas"]
    assert view["rerouted"] == 7 and view["upstreams"]["new"]["spent"] is True


async def test_shadow_copies_stop_before_the_app_s_calls_are_affected(
    old, new, make_sidecar, sdk
) -> None:
    cfg = base_config(old, new, split={"old": 1}, shadow={"upstream": "new", "sample": 1.0})
    cfg["upstreams"]["new"]["quota"] = {"requests_per_minute": 10}
    sc = await make_sidecar(cfg)
    await ask(sdk(sc), 15)
    await sc.shadower.close(5)  # the copies that went out are done
    assert len(new.received) == 9  # one of the ten stays for the app
    assert sc.stats_view()["quotas"]["copies_skipped"] == 6
    write_rename(Path(sc.path), {**cfg, "split": {"new": 1}, "shadow": None})
    assert await sc.reload("test")
    assert await ask(sdk(sc), 1) == ["new"]  # the canary still has room for the app


async def test_the_app_s_key_is_required_when_set_and_never_kept(
    old, new, make_sidecar, tmp_path
) -> None:
    cfg = base_config(old, new, record=recording(tmp_path))
    cfg["listen"]["keys"] = [APP_KEY]
    sc = await make_sidecar(cfg)
    for key in ("sk-wrong-key-0000000000000000", ""):
        client = openai.AsyncOpenAI(base_url=sc.url, api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert e.value.code == "invalid_api_key"
        await client.close()
    good = openai.AsyncOpenAI(base_url=sc.url, api_key=APP_KEY, max_retries=0)
    await good.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    await good.close()
    # The provider gets its own key; the app's stays in the sidecar.
    assert [r.headers["authorization"] for r in old.received] == [f"Bearer {OLD_KEY}"]
    base = f"http://{sc.host}:{sc.port}/_proxy"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as r:
            assert r.status == 200
        async with http.get(f"{base}/stats") as r:
            assert r.status == 401
        async with http.get(f"{base}/stats", headers={"authorization": f"Bearer {APP_KEY}"}) as r:
            assert r.status == 200
    db = tmp_path / "rec.db"
    await sc.stop()
    refused = rows(str(db), "SELECT status, error_kind FROM responses WHERE upstream = '-'")
    assert [(r["status"], r["error_kind"]) for r in refused] == [(401, "proxy")] * 2
    assert APP_KEY.encode() not in db.read_bytes()
