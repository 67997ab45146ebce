"""Traffic beyond the split: the sidecar's own refusals, calls the SDKs retried, and the
embedding dimensions each route answered in."""

from __future__ import annotations

from pathlib import Path

from proxy.report.build import ReportFilter, build_report, load_json
from proxy.report.data import Calls
from proxy.report.text import render_json, render_text
from proxy.report.thresholds import ReportSettings
from tests.report.test_build import T0, ex, resp, write


def test_refused_requests_are_the_sidecars_with_their_reasons_not_an_upstream(
    tmp_path: Path,
) -> None:
    ok = ex("ok", T0)
    refused = [ex(f"r{i}", T0 + i, route="-", model=None) for i in range(3)]
    responses = [resp(ok)]
    for i, x in enumerate(refused):
        status, reason = (413, "body over 1 MiB") if i < 2 else (404, "not under /v1/")
        responses.append(
            resp(x, upstream="-", status=status, error_kind="proxy", error=reason, prompt=None)
        )
    r = build_report(
        write(tmp_path / "r.db", [ok, *refused], responses), ReportFilter(), ReportSettings()
    )
    assert [s.upstream for s in r.upstreams] == ["old"]
    assert [c.name for c in r.traffic.by_upstream] == ["old"]
    assert [(f.status, f.reason, f.count) for f in r.traffic.refused] == [
        (413, "body over 1 MiB", 2),
        (404, "not under /v1/", 1),
    ]
    text = render_text(r)
    assert "requests the sidecar refused itself" in text
    assert "ok 0.0%" not in text and "  -  " not in text.split("RELIABILITY")[1].split("LATENCY")[0]


def test_attempts_of_one_call_count_as_one_call(tmp_path: Path) -> None:
    exchanges, responses = [], []
    # call A: two 429s then a success; call B: three 5xx; call C: one attempt; D: no key
    for key, outcomes in (("A", (429, 429, 200)), ("B", (500, 500, 500)), ("C", (200,))):
        for attempt, status in enumerate(outcomes):
            x = ex(f"{key}{attempt}", T0 + len(exchanges), retry_key=f"k{key}", retry_count=attempt)
            exchanges.append(x)
            kind = None if status == 200 else "rate_limit" if status == 429 else "http_5xx"
            responses.append(resp(x, status=status, error_kind=kind))
    d = ex("D", T0 + 10)
    exchanges.append(d)
    responses.append(resp(d))
    r = build_report(
        write(tmp_path / "c.db", exchanges, responses), ReportFilter(), ReportSettings()
    )
    assert r.traffic.exchanges == 8
    assert r.traffic.calls == Calls(calls=4, retried=2, attempts=6, max_attempts=3, failed=1)
    assert "calls the SDKs retried" in render_text(r)


def test_a_route_that_mixes_embedding_dimensions_is_flagged(tmp_path: Path) -> None:
    exchanges, responses = [], []
    for i in range(4):
        x = ex(f"e{i}", T0 + i, route="embeddings", model="text-embedding-3-small")
        exchanges.append(x)
        # the canary served a quarter of them, in another dimension
        upstream, dims = ("new", 1024) if i == 3 else ("old", 1536)
        responses.append(resp(x, upstream=upstream, dims=dims, shape=str(dims)))
        if upstream == "old":
            responses.append(resp(x, "shadow", "new", dims=1024, shape="1024"))
    r = build_report(
        write(tmp_path / "e.db", exchanges, responses), ReportFilter(), ReportSettings()
    )
    (route,) = r.embeddings
    assert route.route == "embeddings" and route.mixed
    assert [(d.upstream, d.role, d.dims, d.answers) for d in route.seen] == [
        ("new", "primary", 1024, 1),
        ("old", "primary", 1536, 3),
        ("new", "shadow", 1024, 3),
    ]
    assert any(n.startswith("Route embeddings mixes embedding dimensions") for n in r.notes)
    assert "MIXED" in render_text(r)


def test_one_dimension_throughout_is_not_flagged(tmp_path: Path) -> None:
    x = ex("e0", T0, route="embeddings")
    db = write(tmp_path / "one.db", [x], [resp(x, dims=1536), resp(x, "shadow", "new", dims=1536)])
    r = build_report(db, ReportFilter(), ReportSettings())
    assert [route.mixed for route in r.embeddings] == [False]
    assert not any("mixes" in n for n in r.notes)


def test_refusals_calls_and_dimensions_survive_the_json_round_trip(tmp_path: Path) -> None:
    ok = ex("ok", T0, route="embeddings", retry_key="k", retry_count=0)
    again = ex("ok2", T0 + 1, route="embeddings", retry_key="k", retry_count=1)
    no = ex("no", T0 + 2, route="-", model=None)
    db = write(
        tmp_path / "j.db",
        [ok, again, no],
        [
            resp(ok, status=429, error_kind="rate_limit"),
            resp(again, dims=1536),
            resp(again, "shadow", "new", dims=1024),
            resp(no, upstream="-", status=413, error_kind="proxy", error="too large"),
        ],
    )
    r = build_report(db, ReportFilter(), ReportSettings())
    assert (r.traffic.calls.retried, len(r.traffic.refused), len(r.embeddings)) == (1, 1, 1)
    assert load_json(render_json(r)) == r
