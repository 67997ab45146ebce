"""The demo's judge: its fake's preference, the config it adds, and the quality row the demo
prints (one `python -m proxy demo --quick`, a few seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import config as config_mod
from proxy.demo.config_file import demo_config
from proxy.demo.judge import JUDGE_MODEL, prefer
from proxy.judge.prompt import user_message

ROOT = Path(__file__).resolve().parents[2]
TALK = "=== THE CONVERSATION ===\n[user]\nExplain why the sky is blue"


def test_the_demo_judge_prefers_the_answer_on_the_question_else_the_first_shown() -> None:
    on = 'Here is a short answer about "Explain why the sky is blue".'
    reworded = 'Here is a brief answer about "Explain why the sky is blue".'
    off = "Sorry, I can only talk about the weather today."
    assert prefer(user_message(TALK, off, on)) == "B"
    assert prefer(user_message(TALK, on, off)) == "A"
    assert prefer(user_message(TALK, reworded, on)) == "A"
    assert prefer(user_message(TALK, on, reworded)) == "A"


def test_the_demo_config_names_a_judge_only_when_given_one(tmp_path: Path) -> None:
    urls = ("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1", str(tmp_path / "s.db"))
    with_judge = config_mod.parse(demo_config(*urls, "http://127.0.0.1:3/v1").encode(), "c")
    assert with_judge.judge is not None and with_judge.judge.model == JUDGE_MODEL
    assert JUDGE_MODEL in with_judge.report.pricing["judge"]
    assert config_mod.parse(demo_config(*urls).encode(), "c").judge is None


@pytest.mark.timeout(180)
def test_the_demo_judges_its_pairs_and_the_report_shows_the_quality_row(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--quick", "--dir", str(tmp_path / "d")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"Judging \(python -m proxy judge\): \d+ pairs, each in both orders", out)
    assert re.search(r"shadow: 0 won, \d+ tied, 0 lost", out), out
    assert re.search(r"\[\w+\]\s+quality\s", out), out
    assert "QUALITY, JUDGED" in out
