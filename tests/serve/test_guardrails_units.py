"""Failover, the guard and quotas as pure decisions, without sockets."""

from __future__ import annotations

import random

from proxy.config import Failover
from proxy.config import Guard as GuardConfig
from proxy.record.meter import Meter
from proxy.serve import failover
from proxy.serve.guard import Guard
from proxy.serve.plan import plan
from proxy.serve.quota import Quotas
from tests.serve.calls import CONFIG, make_call, runtime

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def meter(status: int | None = 200, kind: str | None = None, ttft: float = 100.0) -> Meter:
    m = Meter("primary", "new", None, False)
    m.status = status
    m.error_kind = kind  # type: ignore[assignment]
    m.ttft_ms = ttft
    m.total_ms = ttft
    return m


# -- failover ----------------------------------------------------------------------------


def test_a_listed_failure_before_the_first_byte_moves_to_the_route_primary() -> None:
    rt = runtime()
    call = make_call(rt, body=CHAT)
    attempt = plan(call, rt.upstreams["new"], "primary", False)
    cfg = Failover()
    assert failover.target(cfg, call, attempt, meter(503, "http_5xx"), began=False) == "old"
    assert failover.target(cfg, call, attempt, meter(None, "connection"), began=False) == "old"
    assert failover.target(cfg, call, attempt, meter(429, "rate_limit"), began=False) == "old"
    # Not once the app has bytes, not for the request's own fault, not off the primary itself.
    assert failover.target(cfg, call, attempt, meter(None, "timeout"), began=True) is None
    assert failover.target(cfg, call, attempt, meter(400, "http_4xx"), began=False) is None
    on_old = plan(call, rt.upstreams["old"], "primary", False)
    assert failover.target(cfg, call, on_old, meter(503, "http_5xx"), began=False) is None


def test_only_the_listed_kinds_move() -> None:
    rt = runtime()
    call = make_call(rt, body=CHAT)
    attempt = plan(call, rt.upstreams["new"], "primary", False)
    cfg = Failover(when=["connect"])
    assert failover.target(cfg, call, attempt, meter(503, "http_5xx"), began=False) is None
    assert failover.target(None, call, attempt, meter(None, "connection"), began=False) is None


def test_calls_that_may_have_made_something_never_move() -> None:
    rt = runtime()
    cfg = Failover()
    for tail, body in [
        ("/files", b"--x"),
        ("/batches", {"input_file_id": "file_1"}),
        ("/responses", {"model": "gpt-4o-mini", "input": "x"}),  # stored by default
        ("/chat/completions", {**CHAT, "store": True}),
    ]:
        call = make_call(rt, tail=tail, body=body)  # type: ignore[arg-type]
        attempt = plan(call, rt.upstreams["new"], "primary", False)
        assert failover.target(cfg, call, attempt, meter(503, "http_5xx"), began=False) is None


# -- the guard -------------------------------------------------------------------------------


def run(guard: Guard, cfg: GuardConfig, outcomes: list[Meter]) -> int | None:
    """Feed the calls one second apart; the call number that tripped it."""
    for i, m in enumerate(outcomes):
        if guard.observe(cfg, "new", m, 1000.0 + i * 0.5, "1-x") is not None:
            return i + 1
    return None


def test_a_third_of_calls_failing_trips_it_once_the_evidence_is_in() -> None:
    cfg = GuardConfig(error_rate=0.05, min_requests=30, window=120)
    calls = [meter(503, "http_5xx") if i % 3 == 0 else meter() for i in range(60)]
    tripped_at = run(guard := Guard(), cfg, calls)
    assert tripped_at == 30  # not before min_requests, at once after
    assert "new" in guard.out() and guard.tripped["new"].rule == "error_rate"
    assert "10 of 30 calls failed" in guard.tripped["new"].figures


def test_one_unlucky_burst_does_not_trip_it() -> None:
    cfg = GuardConfig(error_rate=0.05, min_requests=30, window=120)
    burst = [meter(503, "http_5xx")] * 3 + [meter()] * 57  # 5%: the interval spans the line
    assert run(Guard(), cfg, burst) is None


def test_a_healthy_canary_with_ordinary_latency_noise_never_trips() -> None:
    cfg = GuardConfig(error_rate=0.05, ttft_p90_ms=2000, min_requests=50, window=120)
    rng = random.Random(7)
    calls = [meter(ttft=rng.uniform(200, 1500)) for _ in range(2000)]
    calls += [meter(503, "http_5xx")] * 1  # one failure in thousands
    assert run(Guard(), cfg, calls) is None


def test_a_slow_first_token_trips_the_latency_rule() -> None:
    cfg = GuardConfig(error_rate=None, ttft_p90_ms=2000, min_requests=50, window=120)
    calls = [meter(ttft=2500 if i % 2 else 300) for i in range(80)]
    guard = Guard()
    assert run(guard, cfg, calls) == 50
    assert guard.tripped["new"].rule == "ttft_p90"


def test_4xx_and_the_app_leaving_do_not_count_against_the_upstream() -> None:
    cfg = GuardConfig(error_rate=0.05, min_requests=30, window=120)
    calls = [meter(400, "http_4xx"), meter(None, "client_disconnect")] * 40
    assert run(Guard(), cfg, calls) is None


def test_a_reset_puts_it_back_and_starts_counting_anew() -> None:
    cfg = GuardConfig(error_rate=0.05, min_requests=30, window=120)
    guard = Guard()
    run(guard, cfg, [meter(503, "http_5xx")] * 30)
    guard.reset("test")
    assert guard.out() == frozenset()
    assert run(guard, cfg, [meter(503, "http_5xx")] * 29) is None  # a new window


def test_old_calls_leave_the_window() -> None:
    cfg = GuardConfig(error_rate=0.05, min_requests=30, window=10)
    guard = Guard()
    for i in range(29):
        guard.observe(cfg, "new", meter(503, "http_5xx"), 1000.0 + i * 0.01, "r")
    # A minute later the failures have aged out: 30 healthy calls do not trip it.
    for i in range(30):
        assert guard.observe(cfg, "new", meter(), 1060.0 + i * 0.01, "r") is None


# -- quotas ----------------------------------------------------------------------------------


def quotas(rpm: int) -> Quotas:
    q = Quotas()
    cfg = runtime(
        CONFIG.replace(
            b"    api_key: sk-new-provider-key-111\n",
            f"    api_key: sk-new-provider-key-111\n    quota: {{requests_per_minute: {rpm}}}\n".encode(),
        )
    ).config
    q.configure(cfg)
    return q


def test_a_request_quota_is_spent_after_n_in_a_minute_and_comes_back() -> None:
    q = quotas(5)
    for i in range(4):
        q.take("new", now=100.0 + i)
    assert q.spent(now=104.0) == frozenset()
    q.take("new", now=104.0)
    assert q.spent(now=104.5) == frozenset({"new"})
    assert q.spent(now=161.0) == frozenset()  # the first ones left the minute


def test_copies_stop_while_the_app_still_has_room() -> None:
    q = quotas(10)
    allowed = [q.copy_allowed("new", None, now=100.0) for _ in range(20)]
    # One request of the ten stays for the app's calls; copies took the other nine.
    assert allowed.count(True) == 9 and q.spent(now=100.0) == frozenset()
    assert q.skipped == 11


def test_the_shadow_cap_limits_copies_a_minute() -> None:
    q = Quotas()
    assert [q.copy_allowed("new", 2, now=100.0) for _ in range(4)] == [True, True, False, False]
    assert q.copy_allowed("new", 2, now=161.0)


def test_a_reload_keeps_what_an_upstream_used() -> None:
    q = quotas(3)
    for i in range(3):
        q.take("new", now=100.0 + i)
    q.configure(
        runtime(
            CONFIG.replace(
                b"    api_key: sk-new-provider-key-111\n",
                b"    api_key: sk-new-provider-key-111\n    quota: {requests_per_minute: 3}\n",
            )
        ).config
    )
    assert q.spent(now=103.0) == frozenset({"new"})


def test_token_and_dollar_quotas_count_what_answers_used() -> None:
    text = (
        CONFIG.replace(
            b"    api_key: sk-new-provider-key-111\n",
            b"    api_key: sk-new-provider-key-111\n"
            b"    quota: {tokens_per_minute: 1000, usd_per_day: 0.01}\n",
        )
        + b"report: {pricing: {new: {'*': {input: 10, output: 30}}}}\n"
    )
    q = Quotas()
    q.configure(runtime(text).config)
    m = meter()
    m.body = b'{"usage": {"prompt_tokens": 300, "completion_tokens": 100, "total_tokens": 400}}'
    q.used("new", "gpt-4o-mini", m, now=100.0)
    assert q.spent(now=100.0) == frozenset()  # 400 tokens, $0.006
    q.used("new", "gpt-4o-mini", m, now=101.0)
    assert q.spent(now=101.0) == frozenset({"new"})  # $0.012 > $0.01 today
    view = q.view(now=101.0)["upstreams"]["new"]
    assert view["tokens_last_minute"] == 800 and view["usd_today"] == 0.012
