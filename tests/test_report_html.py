"""The HTML report, rendered by a real browser: every chart draws, nothing throws, no network."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.report import ReportFilter, build_report
from proxy.report_html import write_html
from proxy.thresholds import ReportSettings

from .conftest import base_config

MESSAGES: list[Any] = [{"role": "user", "content": "Describe a lighthouse"}]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test installs it)"
)
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
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000",
        "--enable-logging=stderr", "--v=0", "--dump-dom", out.as_uri(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    dom_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), timeout=90)
    dom, err = dom_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 0, err[-2000:]
    assert "Uncaught" not in err, err[-2000:]
    for fig in figures:
        # Plotly replaces each target div's content with its SVG layers once the chart draws.
        m = re.search(rf'<div[^>]*id="{re.escape(fig["id"])}"[^>]*>(.*?)</div>', dom, re.S)
        assert m is not None, f"chart {fig['id']} missing from the rendered page"
        start = dom.index(f'id="{fig["id"]}"')
        assert "main-svg" in dom[start : start + 200_000], f"chart {fig['id']} did not draw"
