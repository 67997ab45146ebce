"""The report as terminal text and as JSON, over the crafted `basic` recording."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy.report.build import ReportFilter, build_report, load_json
from proxy.report.text import render_json, render_text
from tests.report.test_build import SETTINGS, T0, basic_recording


@pytest.fixture
def basic(tmp_path: Path) -> str:
    return basic_recording(tmp_path / "basic.db")


def test_render_text_shows_the_verdict_and_tables_within_100_columns(basic: str) -> None:
    text = render_text(build_report(basic, ReportFilter(), SETTINGS))
    for line in (
        "VERDICT: INCONCLUSIVE",
        "  new: INCONCLUSIVE over 10 shadow pairs",
        "    [INCONCLUSIVE] errors          +10.00 pts   (warn from 1 pts, fail from 5 pts)",
        "                   95% interval -18.94 to +40.42 pts (Newcombe, paired); about 119 more",
        "                   note: fewer pairs than min_pairs (10 < 30)",
        "    old            15  93.8%",
        "    r3 (rollback)  2023-11-14 22:14:40Z         2  old:100        old:100.0%",
        "    old       primary  30 / 90 / 100     60 / 90 / 90  300 / 900 / 1,000",
        "    same status and shape       80.0% of 10  100.0% of 4",
        "    old       primary  client_disconnect          1  6.67%",
        "  status: a9 at 2023-11-14 22:13:29Z, chat gpt-4o-mini",
    ):
        assert line in text, line
    for section in (
        "TRAFFIC",
        "RELIABILITY",
        "LATENCY",
        "TOKENS AND COST",
        "COMPATIBILITY",
        "EXAMPLES",
    ):
        assert f"\n{section}" in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("Recording:")) <= 100


def test_render_json_round_trips(basic: str) -> None:
    r = build_report(basic, ReportFilter(since=T0), SETTINGS)
    data = render_json(r)
    assert orjson.loads(data)["verdict"] == "inconclusive"
    assert load_json(data) == r
