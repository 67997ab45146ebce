"""End to end: `python -m proxy demo --quick`, run as a newcomer runs it, in a subprocess.

The demo runs once for the module (about ten seconds); each test reads one promise off its
output, its database and the processes it leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The demo's own budget is a minute on 2 cores; a loaded CI machine gets twice that.
pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True, slots=True)
class DemoRun:
    dir: Path
    code: int
    out: str
    err: str

    def explain(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--quick", "--dir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return DemoRun(work, proc.returncode, proc.stdout, proc.stderr)


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def _report_text(run: DemoRun) -> str:
    """The report the demo printed: after the line saying all processes stopped."""
    _, sep, report = run.out.partition("all stopped: pids")
    assert sep, run.explain()
    return report


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    # A zombie has exited; only its parent's bookkeeping is left.
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in status.read_text()
    return True


def test_demo_exits_zero_and_prints_where_its_files_are(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    assert f"Work dir (kept): {demo.dir}" in demo.out
    assert f"HTML report: {demo.dir / 'report.html'}" in demo.out


def test_demo_writes_a_self_contained_html_report(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    html = (demo.dir / "report.html").read_text()
    assert "<html" in html.lower()
    assert len(html) > 1000


def test_demo_canary_splits_traffic_and_shadows_every_old_request_to_new(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    canary = demo.out.split("Phase 1, canary", 1)[1].split("Rollback:", 1)[0]
    served = re.search(r"served by old (\d+), new (\d+)", canary)
    assert served, demo.explain()
    assert int(served.group(1)) > int(served.group(2))  # 90/10, old serves most
    sent = re.search(r"shadow and noise copies sent: (\d+)", canary)
    assert sent and int(sent.group(1)) > 0, demo.explain()


def test_demo_rollback_is_applied_and_every_later_request_goes_to_old(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    assert re.search(r"showed revision \S+ \(rollback, split old 100%\) [\d.]+ s after", demo.out)
    after = demo.out.split("Phase 2, rolled back", 1)[1].split("Stopping:", 1)[0]
    assert re.search(r"served by old \d+, new 0;", after), demo.explain()
    assert "shadow and noise copies sent: 0" in after
    assert "every request after the flip went to old" in after


def test_demo_report_shows_both_upstreams_the_rollback_and_shadow_pairs(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    report = _report_text(demo)
    assert re.search(r"^\s*old\s+primary\b", report, re.MULTILINE), report
    assert re.search(r"^\s*new\s+shadow\b", report, re.MULTILINE), report
    assert re.search(r"over \d+ shadow pairs", report), report
    revisions = _query(demo.dir / "sidecar.db", "SELECT revision, rollback FROM revisions")
    assert sorted(rollback for _, rollback in revisions) == [0, 1]
    lines = report.splitlines()
    for revision, rollback in revisions:
        marked = [("rollback" in ln) for ln in lines if str(revision) in ln]
        assert bool(rollback) in marked, f"revision {revision}, rollback {rollback}:\n{report}"


def test_demo_records_primary_and_shadow_rows_with_full_bodies(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    db = demo.dir / "sidecar.db"
    ((exchanges, bodies),) = _query(db, "SELECT count(*), count(request_body) FROM exchanges")
    assert exchanges == 80
    assert bodies == exchanges
    roles = dict(_query(db, "SELECT role, count(*) FROM responses GROUP BY role"))
    assert roles["primary"] == exchanges
    assert isinstance(roles.get("shadow"), int) and roles["shadow"] > 0
    ((paired,),) = _query(
        db,
        "SELECT count(*) FROM responses p JOIN responses s ON s.exchange_id = p.exchange_id "
        "WHERE p.role = 'primary' AND p.upstream = 'old' "
        "AND s.role = 'shadow' AND s.upstream = 'new' AND s.response_body IS NOT NULL",
    )
    assert isinstance(paired, int) and paired > 0
    rolled_back_on_new = _query(
        db,
        "SELECT count(*) FROM exchanges e JOIN revisions r ON r.revision = e.revision "
        "JOIN responses p ON p.exchange_id = e.id AND p.role = 'primary' "
        "WHERE r.rollback = 1 AND p.upstream != 'old'",
    )
    assert rolled_back_on_new == [(0,)]


def test_demo_leaves_no_process_running_and_no_port_open(demo: DemoRun) -> None:
    assert demo.code == 0, demo.explain()
    pids = [int(p) for p in re.findall(r"\bpid (\d+)", demo.out)]
    assert len(pids) == 3, demo.explain()
    assert [pid for pid in pids if _running(pid)] == []
    ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/v1", demo.out)]
    assert len(set(ports)) == 3, demo.explain()
    for port in set(ports):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
