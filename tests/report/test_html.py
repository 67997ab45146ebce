"""The HTML report, rendered by a real browser: every chart draws, nothing throws, no network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from plotly.offline import get_plotlyjs

from proxy.report.build import ReportFilter, build_report
from proxy.report.html import diff_words, write_html
from proxy.report.thresholds import ReportSettings
from tests.conftest import base_config
from tests.report.browser import chromium
from tests.report.test_build import SETTINGS, T0, basic_recording, ex, resp, write

MESSAGES: list[Any] = [{"role": "user", "content": "Describe a lighthouse"}]


async def recorded_db(old: Any, new: Any, make_sidecar: Any, sdk: Any, tmp_path: Path) -> str:
    db = str(tmp_path / "rec.db")
    cfg = base_config(
        old,
        new,
        split={"old": 80, "new": 20},
        shadow={"upstream": "new", "sample": 1.0, "noise_sample": 0.5},
        record={"enabled": True, "path": db},
    )
    sc = await make_sidecar(cfg)
    client = sdk(sc)
    for i in range(12):
        if i % 3 == 0:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            async for _ in stream:
                pass
        else:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await sc.stop()
    return db


# Each figure's div: "drawn" once Plotly has put its SVG layers in it.
CHARTS = """JSON.parse(document.getElementById('figures').textContent).map(f => {
  const div = document.getElementById(f.id);
  return [f.id, div === null ? "missing" : div.querySelector(".main-svg") ? "drawn" : "empty"];
})"""


async def test_html_report_renders_every_chart_in_chromium(
    old, new, make_sidecar, sdk, tmp_path
) -> None:
    db = await recorded_db(old, new, make_sidecar, sdk, tmp_path)
    report = build_report(db, ReportFilter(), ReportSettings())
    out = tmp_path / "report.html"
    write_html(report, str(out))
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=", html)  # self-contained: nothing fetched
    figures = orjson.loads(re.search(r'id="figures">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert len(figures) >= 2
    async with chromium(tmp_path) as browser:
        page = await browser.open(out.as_uri())
        await page.wait_for(f"({CHARTS}).every(([, state]) => state === 'drawn')")
        charts = dict(await page.evaluate(CHARTS))
        text = await page.evaluate("document.body.innerText")
    assert page.errors == []
    assert page.requests == [out.as_uri()]
    assert charts == {f["id"]: "drawn" for f in figures}
    assert text.startswith("Migration report")
    for heading in ("Verdict", "Charts", "Traffic", "Latency", "Compatibility"):
        assert f"\n{heading}" in text, heading


def test_write_html_is_self_contained_with_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    db = basic_recording(tmp_path / "basic.db")
    write_html(build_report(db, ReportFilter(), SETTINGS), str(out))
    page = out.read_text(encoding="utf-8")
    assert get_plotlyjs() in page
    assert not re.search(r"<script[^>]*\ssrc\s*=", page)
    specs = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page)
    assert specs is not None
    figures = orjson.loads(specs.group(1))
    assert [f["id"] for f in figures] == [
        "fig-total_sketch",
        "fig-ttft_sketch",
        "fig-errors",
        "fig-tokens",
    ]
    names = {t["name"] for t in figures[0]["data"]}
    assert names == {"old (primary)", "new (shadow)", "new (primary)", "old (noise)"}
    markers = [a["text"] for a in figures[2]["layout"]["annotations"]]
    assert markers == ["r2", "r3 rollback"]
    assert '<div class="chart" id="fig-errors">' in page


def test_html_escapes_what_the_recording_holds(tmp_path: Path) -> None:
    evil = '</script><img src=x onerror="alert(1)">'
    x = ex("<b>x</b>", T0, route=evil, model=evil)
    db = write(
        tmp_path / "evil.db",
        [x],
        [
            resp(x, text="fine " + evil, body=True),
            resp(x, "shadow", evil, status=500, error_kind="http_5xx", text=evil, body=True),
        ],
    )
    out = tmp_path / "evil.html"
    write_html(build_report(db, ReportFilter(), SETTINGS), str(out))
    page = out.read_text(encoding="utf-8")
    assert evil not in page
    assert "&lt;/script&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<b>x</b>" not in page


def test_diff_words_marks_changed_words_and_escapes_them() -> None:
    assert diff_words("a <b> c", "a <i> c") == (
        "a <del>&lt;b&gt;</del> c",
        "a <ins>&lt;i&gt;</ins> c",
    )


def test_html_shows_each_checks_interval_status_and_the_shape_paths(tmp_path: Path) -> None:
    tool = b'{"choices":[{"index":0,"message":{"tool_calls":[{"function":{"name":"f"}}]}}]}'
    text = b'{"choices":[{"index":0,"message":{"content":"hi"}}]}'
    x = ex("s0", T0)
    db = write(
        tmp_path / "s.db",
        [x],
        [resp(x, shape="a", body=tool), resp(x, "shadow", "new", shape="b", body=text)],
    )
    out = tmp_path / "s.html"
    write_html(build_report(db, ReportFilter(), SETTINGS), str(out))
    page = out.read_text(encoding="utf-8")
    assert '<span class="status inconclusive">INCONCLUSIVE</span>' in page
    assert "<th>95% interval</th>" in page
    assert "Wilson" in page and "more pairs would likely settle it" in page
    assert "<code>choices[].message.tool_calls: only in the primary</code>" in page
