"""The command line as a user meets it: help, check, report into a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.report.test_build import basic_recording

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        **kw,
    )  # type: ignore[call-overload]


def test_help_lists_the_subcommands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("serve", "check", "report", "judge", "fake", "demo"):
        assert cmd in out.stdout


def test_report_into_a_reader_that_left_exits_quietly(tmp_path: Path) -> None:
    db = basic_recording(tmp_path / "basic.db")
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "proxy", "report", "--db", db],
            stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_report_on_a_missing_db_is_a_clear_error(tmp_path: Path) -> None:
    out = run("report", "--db", str(tmp_path / "nope.db"))
    assert out.returncode == 2
    assert "nope.db" in out.stderr and "Traceback" not in out.stderr


def test_report_rejects_a_bad_time(tmp_path: Path) -> None:
    out = run("report", "--db", str(tmp_path / "x.db"), "--since", "yesterdayish")
    assert out.returncode == 2
    assert "yesterdayish" in out.stderr


def test_report_finds_the_recording_through_the_config(tmp_path: Path) -> None:
    db = basic_recording(tmp_path / "basic.db")
    cfg = tmp_path / "config.yaml"
    # The service's secrets are not set in the shell the report runs in: it needs none of them.
    cfg.write_text(
        "upstreams: {a: {base_url: 'http://127.0.0.1:1/v1', api_key: '${SIDECAR_TEST_UNSET}'}}\n"
        f"primary: a\nrecord: {{path: '{db}'}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_TEST_UNSET"}
    out = run("report", "--config", str(cfg), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert db in out.stdout  # the report names the recording it read
    cfg.write_text(f"record: {{path: '{db}', bodies: bogus}}\nreport: {{nope: 1}}\n")
    out = run("report", "--config", str(cfg))
    assert out.returncode == 2
    assert "record.bodies" in out.stderr and "report.nope: unknown key" in out.stderr
    out = run("report")
    assert out.returncode == 2
    assert "--db" in out.stderr and "record.path" in out.stderr


def test_serve_without_a_config_points_at_the_example(tmp_path: Path) -> None:
    (tmp_path / "config.example.yaml").write_text("primary: a\n")
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 2
    assert "config.yaml: cannot read" in out.stderr
    assert "cp config.example.yaml config.yaml" in out.stderr


def test_report_html_goes_into_new_directories_or_says_why_not(tmp_path: Path) -> None:
    db = basic_recording(tmp_path / "basic.db")
    out = run("report", "--db", db, "--html", str(tmp_path / "a" / "b" / "r.html"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a" / "b" / "r.html").read_text().startswith("<!doctype html>")
    (tmp_path / "file").write_text("")
    out = run("report", "--db", db, "--html", str(tmp_path / "file" / "r.html"))
    assert out.returncode == 2
    assert "file is a file, not a directory" in out.stderr and "Traceback" not in out.stderr
