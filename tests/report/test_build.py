"""The report over crafted recordings: every figure is checked against numbers worked by hand.

`synthesize` also fills a recording with N realistic exchanges for measuring by hand:
    .venv/bin/python -m tests.test_report /tmp/m.db 1000000
"""

from __future__ import annotations

import hashlib
import math
import random
import sqlite3
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.record import answers
from proxy.record.rows import Exchange, Response, Revision
from proxy.record.schema import MIGRATIONS, SCHEMA_VERSION, StoreError
from proxy.report.build import Report, ReportFilter, build_report, load_json, parse_time
from proxy.report.data import Check
from proxy.report.html import write_html
from proxy.report.text import render_json, render_text
from proxy.report.thresholds import Price, ReportSettings

T0 = 1_700_000_000.0
PRICING = {
    "old": {"*": Price(input=1, output=2)},
    "new": {"gpt-4o-mini": Price(input=0.5, output=1), "*": Price(input=10, output=10)},
}
SETTINGS = ReportSettings(pricing=PRICING)


# --- building recordings -------------------------------------------------------------------


def create(path: Path | str, *, indexes: bool = True) -> sqlite3.Connection:
    """An empty recording with the store's own schema; `indexes=False` leaves the secondary
    indexes to `add_indexes`, which is much faster for bulk loads."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    for migration in MIGRATIONS:
        for statement in migration:
            if indexes or not statement.startswith("CREATE INDEX"):
                con.execute(statement)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    con.commit()
    return con


def add_indexes(con: sqlite3.Connection) -> None:
    for migration in MIGRATIONS:
        for statement in migration:
            if statement.startswith("CREATE INDEX"):
                con.execute(statement)


def write(
    path: Path,
    exchanges: Iterable[Exchange] = (),
    responses: Iterable[Response] = (),
    revisions: Iterable[Revision] = (),
) -> str:
    con = create(path)
    with con:
        for table, records in (
            ("exchanges", exchanges),
            ("responses", responses),
            ("revisions", revisions),
        ):
            rows = [tuple(r) for r in records]
            if rows:
                marks = ",".join("?" * len(rows[0]))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    con.close()
    return str(path)


def ex(
    xid: str,
    ts: float,
    *,
    route: str = "chat",
    model: str | None = "gpt-4o-mini",
    stream: bool = False,
    revision: str = "r1",
    retry_key: str | None = None,
    retry_count: int | None = None,
) -> Exchange:
    return Exchange(
        xid, ts, route, "POST", "/v1/chat/completions", model, stream, revision, None, None, None,
        retry_key, retry_count,
    )  # fmt: skip


def chat_body(text: str) -> bytes:
    message = {"role": "assistant", "content": text}
    return orjson.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def resp(
    x: Exchange,
    role: str = "primary",
    upstream: str = "old",
    *,
    status: int | None = 200,
    error_kind: str | None = None,
    ttfb: float | None = 10.0,
    ttft: float | None = None,
    total: float | None = 100.0,
    prompt: int | None = 10,
    completion: int | None = 5,
    stream_done: bool | None = None,
    shape: str | None = "s",
    tool_calls: str | None = None,
    json_ok: bool | None = None,
    text: str | None = None,
    body: bool | bytes = False,
    cached: int | None = None,
    images: int | None = None,
    dims: int | None = None,
    error: str | None = None,
) -> Response:
    if x.stream and stream_done is None:
        stream_done = True
    payload = body if isinstance(body, bytes) else None
    if body is True and text is not None:
        payload = orjson.dumps({"text": text}) if x.stream else chat_body(text)
    return Response(
        exchange_id=x.id,
        role=role,  # type: ignore[arg-type]
        upstream=upstream,
        model_sent=x.model,
        ts=x.ts + {"primary": 0.001, "shadow": 0.002, "noise": 0.003}[role],
        status=status,
        error_kind=error_kind,  # type: ignore[arg-type]
        error=error or (None if error_kind is None else "boom"),
        ttfb_ms=ttfb,
        ttft_ms=ttft,
        total_ms=total,
        bytes=100,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=None if prompt is None or completion is None else prompt + completion,
        finish_reason="stop" if error_kind is None else None,
        stream_done=stream_done,
        shape=shape,
        tool_calls=tool_calls,
        json_ok=json_ok,
        text_sha256=answers.text_sha256(text),
        response_body=payload,
        response_sha256=None,
        cached_tokens=cached,
        images=images,
        embedding_dims=dims,
    )


def rev(name: str, ts: float, split: dict[str, float], rollback: bool = False) -> Revision:
    return Revision(name, ts, rollback, orjson.dumps(split).decode(), "config.yaml")


def same_text(i: int) -> str:
    return f"The answer is {i}, and that is final."


def other_text(i: int) -> str:
    return f"The answer might be {i}; that is not final at all."


def basic_recording(path: Path) -> str:
    """16 exchanges over three revisions; numbers worked out in the tests that use it.

    a0..a9  chat gpt-4o-mini, revision r1, old serves, new shadows; a9's shadow fails (500),
            a8's shadow has another shape; a5..a8's shadows answer other words; a0..a3 have
            noise copies on old, a3's with another text.
    b0..b3  streams of gpt-4o under r2; b3 served by new (the canary), no shadows.
    c0      embeddings with no model and no usage under r3.
    d0      the app left during old's answer (client_disconnect); new's shadow is fine.
    """
    a = [ex(f"a{i}", T0 + i) for i in range(10)]
    b = [ex(f"b{i}", T0 + 60 + i, model="gpt-4o", stream=True, revision="r2") for i in range(4)]
    c = ex("c0", T0 + 90, route="embeddings", model=None, revision="r3")
    d = ex("d0", T0 + 91, revision="r3")
    responses = []
    for i, x in enumerate(a):
        responses.append(
            resp(
                x,
                total=100.0 * (i + 1),
                ttfb=10.0 * (i + 1),
                prompt=100,
                completion=50,
                text=same_text(i),
                body=True,
            )
        )
        if i == 9:
            responses.append(
                resp(
                    x,
                    "shadow",
                    "new",
                    status=500,
                    error_kind="http_5xx",
                    total=50,
                    ttfb=50,
                    prompt=None,
                    completion=None,
                    shape="err",
                )
            )
        else:
            responses.append(
                resp(
                    x,
                    "shadow",
                    "new",
                    total=120.0 * (i + 1),
                    ttfb=10.0 * (i + 1) + 5,
                    prompt=100,
                    completion=60,
                    shape="t" if i == 8 else "s",
                    text=same_text(i) if i < 5 else other_text(i),
                    body=True,
                )
            )
        if i < 4:
            responses.append(
                resp(
                    x,
                    "noise",
                    "old",
                    prompt=100,
                    completion=50,
                    text=other_text(i) if i == 3 else same_text(i),
                )
            )
    for i, x in enumerate(b):
        responses.append(
            resp(x, upstream="new" if i == 3 else "old", ttfb=20, ttft=30.0 * (i + 1), total=200)
        )
    responses.append(resp(c, total=50, prompt=None, completion=None, shape="e"))
    responses.append(
        resp(
            d, status=200, error_kind="client_disconnect", total=5000, prompt=None, completion=None
        )
    )
    responses.append(resp(d, "shadow", "new", total=300, prompt=100, completion=60))
    revisions = [
        rev("r1", T0 - 100, {"old": 100}),
        rev("r2", T0 + 50, {"old": 90, "new": 10}),
        rev("r3", T0 + 80, {"old": 100}, rollback=True),
    ]
    return write(path, [*a, *b, c, d], responses, revisions)


@pytest.fixture
def basic(tmp_path: Path) -> str:
    return basic_recording(tmp_path / "basic.db")


def check(report: Report, name: str) -> Check:
    return next(c for c in report.verdicts[0].checks if c.name == name)


# --- traffic, reliability, latency, tokens -----------------------------------------------


def test_traffic_counts_primary_answers_routes_models_and_the_share_served(basic: str) -> None:
    t = build_report(basic, ReportFilter(), SETTINGS).traffic
    assert (t.exchanges, t.streams) == (16, 4)
    assert (t.first_ts, t.last_ts) == (T0, T0 + 91)
    assert [(c.name, c.count, c.share) for c in t.by_upstream] == [
        ("old", 15, 15 / 16),
        ("new", 1, 1 / 16),
    ]
    assert [(c.name, c.count) for c in t.by_route] == [("chat", 15), ("embeddings", 1)]
    assert [(c.name, c.count) for c in t.by_model] == [
        ("gpt-4o-mini", 11),
        ("gpt-4o", 4),
        (None, 1),
    ]


def test_revisions_show_first_and_last_use_rollback_split_and_share_served(basic: str) -> None:
    revisions = build_report(basic, ReportFilter(), SETTINGS).traffic.revisions
    assert [(r.revision, r.requests, r.first_seen, r.last_seen, r.rollback) for r in revisions] == [
        ("r1", 10, T0, T0 + 9, False),
        ("r2", 4, T0 + 60, T0 + 63, False),
        ("r3", 2, T0 + 90, T0 + 91, True),
    ]
    r2 = revisions[1]
    assert r2.started == T0 + 50
    assert [(s.upstream, s.weight) for s in r2.split] == [("old", 90), ("new", 10)]
    assert [(s.upstream, s.weight) for s in r2.served] == [("new", 0.25), ("old", 0.75)]


@pytest.mark.parametrize("revisions", [10, 15, 16, 20])
def test_each_revision_gets_the_share_served_under_it_however_many_there_are(
    tmp_path: Path, revisions: int
) -> None:
    # Up to 15 revisions (sql.REVISIONS - 1) are counted by their place in a list, more by name.
    xs = [ex(f"x{i:02d}", T0 + i, revision=f"v{i % revisions:02d}") for i in range(2 * revisions)]
    rs = [resp(x, upstream="new" if i % revisions % 4 == 0 else "old") for i, x in enumerate(xs)]
    seen = build_report(write(tmp_path / "r.db", xs, rs), ReportFilter(), SETTINGS).traffic
    assert [(r.revision, r.requests) for r in seen.revisions] == [
        (f"v{k:02d}", 2) for k in range(revisions)
    ]
    assert [[(s.upstream, s.weight) for s in r.served] for r in seen.revisions] == [
        [("new" if k % 4 == 0 else "old", 1.0)] for k in range(revisions)
    ]


def test_reliability_counts_error_kinds_and_keeps_app_errors_out_of_error_rates(
    basic: str,
) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    old, shadow = r.stats("old", "primary"), r.stats("new", "shadow")
    assert old is not None and shadow is not None
    assert (old.responses, old.succeeded, old.upstream_errors, old.error_rate) == (15, 14, 0, 0.0)
    assert [(e.name, e.count) for e in old.errors] == [("client_disconnect", 1)]
    assert (shadow.responses, shadow.succeeded, shadow.upstream_errors) == (11, 10, 1)
    assert shadow.error_rate == 1 / 11
    assert [(e.name, e.count, e.share) for e in shadow.errors] == [("http_5xx", 1, 1 / 11)]


def test_latency_percentiles_are_nearest_rank_over_successful_responses(basic: str) -> None:
    old = build_report(basic, ReportFilter(), SETTINGS).stats("old", "primary")
    assert old is not None
    # 14 successes: 50, 100, 200 x4 (a1 and the three streams), 300 .. 1000
    assert (old.total_ms.n, old.total_ms.p50, old.total_ms.p90, old.total_ms.p99) == (
        14,
        300.0,
        900.0,
        1000.0,
    )
    # ranks ceil(0.5 * 3) = 2 and ceil(0.9 * 3) = ceil(0.99 * 3) = 3
    assert (old.ttft_ms.n, old.ttft_ms.p50, old.ttft_ms.p90, old.ttft_ms.p99) == (
        3,
        60.0,
        90.0,
        90.0,
    )
    assert old.total_sketch == (
        50.0,
        100.0,
        200.0,
        200.0,
        200.0,
        200.0,
        *(100.0 * k for k in range(3, 11)),
    )


def test_tokens_are_summed_and_responses_without_usage_are_counted_apart(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    old, shadow = r.stats("old", "primary"), r.stats("new", "shadow")
    assert old is not None and shadow is not None
    assert (old.with_usage, old.no_usage) == (13, 2)  # c0 and d0 reported none
    assert (old.prompt_tokens, old.completion_tokens, old.total_tokens) == (1030, 515, 1545)
    assert (shadow.with_usage, shadow.no_usage, shadow.prompt_tokens, shadow.completion_tokens) == (
        10,
        1,
        1000,
        600,
    )
    assert any("2 responses" in n or "3 responses" in n for n in r.notes)


def test_cost_prices_the_requested_model_before_the_wildcard(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    old, shadow, canary = (
        r.stats(*k) for k in (("old", "primary"), ("new", "shadow"), ("new", "primary"))
    )
    assert old is not None and shadow is not None and canary is not None
    # old "*": 1030 prompt x $1 + 515 completion x $2 per million, over 13 priced answers
    assert old.priced == 13
    assert old.cost == pytest.approx(2060e-6)
    assert old.cost_per_1k == pytest.approx(2060e-6 / 13 * 1000)
    # new's gpt-4o-mini price: 1000 x $0.5 + 600 x $1
    assert shadow.priced == 10
    assert shadow.cost == pytest.approx(1100e-6)
    # b3 asked for gpt-4o, which only new's "*" prices: 10 x $10 + 5 x $10
    assert canary.cost == pytest.approx(150e-6)


def test_unpriced_upstreams_have_no_cost_rather_than_zero(basic: str) -> None:
    r = build_report(
        basic, ReportFilter(), ReportSettings(pricing={"old": {"*": Price(input=1, output=1)}})
    )
    shadow = r.stats("new", "shadow")
    assert shadow is not None
    assert (shadow.priced, shadow.cost, shadow.cost_per_1k) == (0, None, None)
    assert check(r, "cost").status == "n/a"


# --- shadow pairs ------------------------------------------------------------------------


def test_pairs_compare_shadow_to_primary_on_the_same_exchange(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    p = r.pairs[0]
    assert (p.role, p.upstream, p.pairs) == ("shadow", "new", 10)  # d0 left out: the app left
    assert (p.primary_error_rate, p.other_error_rate) == (0.0, 0.1)
    assert (p.status.agree, p.status.compared) == (9, 10)
    assert (p.status_shape.agree, p.status_shape.compared) == (8, 10)
    assert (p.text.agree, p.text.compared) == (5, 9)


def test_paired_latency_difference_is_shadow_minus_primary_per_exchange(basic: str) -> None:
    p = build_report(basic, ReportFilter(), SETTINGS).pairs[0]
    # a0..a8 both answered: differences 20, 40, .., 180 and a constant 5 on ttfb
    assert (p.total_diff_ms.n, p.total_diff_ms.p50, p.total_diff_ms.p90, p.total_diff_ms.p99) == (
        9,
        100.0,
        180.0,
        180.0,
    )
    assert (p.ttfb_diff_ms.p50, p.ttfb_diff_ms.p99) == (5.0, 5.0)
    assert (p.primary_total_ms.p50, p.other_total_ms.p50) == (500.0, 600.0)
    assert (p.primary_total_ms.p90, p.other_total_ms.p90) == (900.0, 1080.0)


def test_paired_tokens_and_cost_ratios_use_pairs_with_usage_on_both_sides(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    p = r.pairs[0]
    assert p.usage_pairs == 9
    assert (p.primary_tokens, p.other_tokens) == ((900, 450, 1350), (900, 540, 1440))
    assert p.priced_pairs == 9
    assert p.primary_cost == pytest.approx(1800e-6)
    assert p.other_cost == pytest.approx(990e-6)
    assert check(r, "tokens").value == pytest.approx(1440 / 1350)
    assert check(r, "cost").value == pytest.approx(990 / 1800)


def test_noise_pairs_are_reported_beside_the_shadow(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    noise = r.noise()
    assert noise is not None
    assert (noise.upstream, noise.pairs, noise.text.agree, noise.text.compared) == ("old", 4, 3, 4)
    assert noise.status_shape.rate == 1.0


def test_similarity_is_measured_over_recorded_bodies(basic: str) -> None:
    p = build_report(basic, ReportFilter(), SETTINGS).pairs[0]
    scores = [1.0] * 5 + [answers.similarity(same_text(i), other_text(i)) for i in range(5, 9)]
    assert p.similarity.sampled == 9
    assert p.similarity.mean == pytest.approx(sum(scores) / 9)
    assert p.similarity.p10 == min(scores)  # nearest rank ceil(0.9) = 1: the lowest


def test_examples_show_mismatches_and_the_least_similar_texts(basic: str) -> None:
    r = build_report(basic, ReportFilter(), SETTINGS)
    by_reason = {(e.reason, e.exchange_id) for e in r.examples}
    assert ("status", "a9") in by_reason
    assert ("shape", "a8") in by_reason
    similar = [e for e in r.examples if e.reason == "similarity"]
    assert {e.exchange_id for e in similar} == {"a5", "a6", "a7", "a8"}
    a9 = next(e for e in r.examples if e.reason == "status")
    assert (a9.primary.status, a9.other.status, a9.other.error_kind) == (200, 500, "http_5xx")
    assert similar[0].primary.text == same_text(int(similar[0].exchange_id[1]))
    assert similar[0].other.text == other_text(int(similar[0].exchange_id[1]))


# --- filters and empty recordings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "exchanges", "primaries"),
    [
        (ReportFilter(since=T0 + 60), 6, [("old", 5), ("new", 1)]),
        (ReportFilter(until=T0 + 10), 10, [("old", 10)]),
        (ReportFilter(since=T0 + 5, until=T0 + 61), 6, [("old", 6)]),
        (ReportFilter(route="embeddings"), 1, [("old", 1)]),
        (ReportFilter(model="gpt-4o"), 4, [("old", 3), ("new", 1)]),
        (ReportFilter(revision="r3"), 2, [("old", 2)]),
    ],
)
def test_filters_narrow_every_figure(
    basic: str, flt: ReportFilter, exchanges: int, primaries: list[tuple[str, int]]
) -> None:
    r = build_report(basic, flt, SETTINGS)
    assert r.traffic.exchanges == exchanges
    assert [(c.name, c.count) for c in r.traffic.by_upstream] == primaries
    assert sum(s.responses for s in r.upstreams if s.role == "primary") == exchanges


def test_filters_apply_to_pairs_and_revisions(basic: str) -> None:
    r = build_report(basic, ReportFilter(until=T0 + 5), SETTINGS)
    assert (r.pairs[0].pairs, r.noise() and r.noise().pairs) == (5, 4)  # type: ignore[union-attr]
    only = build_report(basic, ReportFilter(revision="r2"), SETTINGS)
    assert [rv.revision for rv in only.traffic.revisions] == ["r2"]
    assert (only.pairs, only.verdicts, only.verdict) == ((), (), "n/a")


def test_empty_recording_gives_a_report_that_says_there_is_no_data(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.db")
    r = build_report(empty, ReportFilter(), SETTINGS)
    assert (r.traffic.exchanges, r.upstreams, r.verdict) == (0, (), "n/a")
    assert "No data: the recording holds no exchanges yet." in render_text(r)
    write_html(r, str(tmp_path / "empty.html"))
    assert load_json(render_json(r)) == r


def test_filter_matching_nothing_says_so(basic: str) -> None:
    r = build_report(basic, ReportFilter(route="nope"), SETTINGS)
    assert r.notes == ("No data: no exchanges match the filter.",)


def test_a_missing_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        build_report(str(tmp_path / "missing.db"), ReportFilter(), SETTINGS)


def test_report_reads_while_the_recorder_holds_a_write_transaction(basic: str) -> None:
    writer = sqlite3.connect(basic)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM responses")
        assert build_report(basic, ReportFilter(), SETTINGS).traffic.by_upstream[0].count == 15
    finally:
        writer.rollback()
        writer.close()


# --- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC).timestamp()),
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-05-01T14:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-05-01 12:00", datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()),
        ("1714564800", 1714564800.0),
        ("1714564800.5", 1714564800.5),
        ("90s", 100_000 - 90),
        ("15m", 100_000 - 900),
        ("2h", 100_000 - 7200),
        ("3d", 100_000 - 3 * 86_400),
        (" 1w ", 100_000 - 7 * 86_400),
    ],
)
def test_parse_time_accepts_iso_unix_seconds_and_ages(text: str, expected: float) -> None:
    assert parse_time(text, now=100_000) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "15 minutes", "nan", "2024-13-01"])
def test_parse_time_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text)


# --- a synthetic recording -----------------------------------------------------------------


def synthesize(db_path: str, n: int, seed: int = 0) -> None:
    """Fill a new recording with n exchanges shaped like real traffic, fast.

    old serves ~90% (new is the canary for the rest, by revision), new shadows a quarter of
    old's answers and 5% get a noise copy; 2% of the answers carry bodies for similarity.
    """
    rng = random.Random(seed)
    con = create(db_path, indexes=False)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -500000")
    span = 7 * 86_400.0
    names = [f"{k + 1}-{seed:08x}" for k in range(4)]
    splits: list[dict[str, float]] = [
        {"old": 100},
        {"old": 90, "new": 10},
        {"old": 100},
        {"old": 80, "new": 20},
    ]
    con.executemany(
        "INSERT INTO revisions VALUES (?, ?, ?, ?, 'config.yaml')",
        [(names[k], T0 + span * k / 4, k == 2, orjson.dumps(splits[k]).decode()) for k in range(4)],
    )
    tools = (
        '[{"name":"get_weather","keys":["city"],"valid":true}]',
        '[{"name":"find","keys":["q"],"valid":true}]',
    )

    def answer(
        xid: str, role: str, up: str, ts: float, stream: int, model: str | None, shared: int
    ) -> tuple[Any, ...]:
        r = rng.random()
        kind = None
        if r < 0.02:
            kind = "http_5xx" if r < 0.01 else "rate_limit" if r < 0.014 else "timeout"
            if role == "primary" and r >= 0.016:
                kind = "client_disconnect"
        status = {"http_5xx": 500, "rate_limit": 429, "timeout": None}.get(kind or "", 200)
        ok = kind is None
        slow = 1.15 if up == "new" else 1.0
        ttfb = rng.lognormvariate(math.log(250), 0.5) * slow
        ttft = ttfb + rng.lognormvariate(math.log(60), 0.4) if stream and ok else None
        total = ttfb + rng.lognormvariate(math.log(900), 0.6) * slow
        prompt = completion = tokens = None
        if ok and rng.random() > 0.02:
            prompt = rng.randint(20, 2000)
            completion = int(rng.randint(5, 800) * slow)
            tokens = prompt + completion
        variant = shared if rng.random() < 0.7 else rng.getrandbits(30)
        text = f"answer {variant} for {xid[-8:]} " * 5
        body = (
            {"text": text} if stream else {"choices": [{"index": 0, "message": {"content": text}}]}
        )
        return (
            xid, role, up, model, ts, status, kind, None if ok else "synthetic",
            ttfb if status else None, ttft, total, rng.randint(200, 8000),
            prompt, completion, tokens, "stop" if ok else None,
            (rng.random() > 0.005) if stream else None,
            ("a" if rng.random() > 0.01 else "b") if ok else "err",
            tools[variant % 2] if ok and variant % 10 == 0 else None,
            (rng.random() > 0.02) if ok and variant % 7 == 0 else None,
            hashlib.sha256(text.encode()).hexdigest() if ok else None,
            orjson.dumps(body) if ok and shared % 50 == 0 else None,
            None, None, None, None,
        )  # fmt: skip

    with con:
        for start in range(0, n, 50_000):  # in chunks, so memory stays flat
            exchanges, responses = [], []
            for i in range(start, min(start + 50_000, n)):
                ts = T0 + span * i / n
                k = min(4 * i // n, 3)
                xid = f"req_{int(ts * 1e6):x}{seed & 0xFFFFFF:06x}{i & 0xFFFF:04x}"  # as handlers makes
                stream = int(rng.random() < 0.4)
                model = rng.choice(("gpt-4o-mini", "gpt-4o-mini", "gpt-4o", None))
                route = "embeddings" if model is None else "chat"
                exchanges.append(
                    (xid, ts, route, "POST", "/v1/x", model, stream, names[k], None, None, None,
                     None, None)
                )  # fmt: skip
                up = "new" if rng.random() < splits[k].get("new", 0) / 100 else "old"
                shared = rng.getrandbits(30)
                responses.append(answer(xid, "primary", up, ts + 0.001, stream, model, shared))
                if up == "old" and rng.random() < 0.25:
                    responses.append(
                        answer(xid, "shadow", "new", ts + 0.002, stream, model, shared)
                    )
                if rng.random() < 0.05:
                    responses.append(answer(xid, "noise", up, ts + 0.003, stream, model, shared))
            con.executemany(f"INSERT INTO exchanges VALUES ({','.join('?' * 13)})", exchanges)
            con.executemany(f"INSERT INTO responses VALUES ({','.join('?' * 26)})", responses)
        add_indexes(con)
    con.close()


def test_a_synthetic_recording_adds_up(tmp_path: Path) -> None:
    db = str(tmp_path / "synth.db")
    synthesize(db, 3000, seed=7)
    r = build_report(db, ReportFilter(), SETTINGS)
    assert r.traffic.exchanges == 3000
    assert sum(c.count for c in r.traffic.by_upstream) == 3000
    assert [v.upstream for v in r.verdicts] == ["new"]
    assert r.pairs[0].pairs > 500 and r.pairs[0].similarity.sampled > 0
    assert load_json(render_json(r)) == r
    render_text(r)


if __name__ == "__main__":
    path, count = sys.argv[1], int(sys.argv[2])
    if not Path(path).exists():
        started = time.perf_counter()
        synthesize(path, count, seed=1)
        print(f"synthesized {count:,} exchanges in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    report = build_report(path, ReportFilter(), SETTINGS)
    print(f"build_report: {time.perf_counter() - started:.2f} s")
    print(render_text(report))
