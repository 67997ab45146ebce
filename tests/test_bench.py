"""scripts/bench.py end to end in --quick mode: it runs, stops what it started, and writes
a complete result file. Figures are not asserted: they depend on the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402  (scripts/ is not a package)

CONFIGS = (
    "direct",
    "sidecar",
    "sidecar+log",
    "sidecar+metrics",
    "record",
    "record+metrics",
    "record+shadow",
    "split",
    "bare",
)


@pytest.mark.timeout(180)
def test_quick_bench_measures_every_configuration_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--no-install", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(out.read_bytes())

    rows = result["summary"]["requests"]["16"]
    assert set(rows) == set(CONFIGS)
    for name, row in rows.items():
        assert row["requests"] > 0, name
        assert row["errors"] == 0, (name, row["error_samples"])
        assert row["upstream_cpu_us"] is not None, name
        assert (row["sidecar_cpu_us"] is None) == (name == "direct"), name
        assert (row["cpu_ratio"] is None) == (name == "direct"), name
    assert rows["record+shadow"]["shadow_sent"] > 0
    assert rows["record+shadow"]["shadow_cpu_us"] is not None
    assert rows["record"]["records_written"] > 0
    assert rows["split"]["served"]["a"] > 0 and rows["split"]["served"]["b"] > 0

    for kind in ("streams", "bursts", "single"):  # paced, back to back, one at a time
        streams = result["summary"][kind]
        assert set(streams) == {"direct", "sidecar", "record", "bare"}, kind
        for name, row in streams.items():
            assert row["verified"] > 0, (kind, name)
            assert row["errors"] == 0, (kind, name, row["error_samples"])
            assert row["ttfc_p50_ms"] is not None, (kind, name)
            assert row["upstream_cpu_us"] is not None, (kind, name)
            assert (row.get("sidecar_cpu_us_per_chunk") is None) == (name == "direct")

    # Recording switched off and on again by reload, in the record sidecar's own process.
    toggle = result["summary"]["toggle"]
    assert toggle["off"]["records_written"] == 0  # not one exchange recorded while off
    assert toggle["on"]["records_written"] > 1
    for row in (toggle["off"], toggle["on"]):
        assert row["requests"] > 0 and row["errors"] == 0 and row["sidecar_cpu_us"] is not None
    names = [t["name"] for t in result["targets"]]
    assert any(n.startswith("recording on vs off, one process") for n in names)

    rate = result["summary"]["fixed_rate"]
    assert set(rate) == {"direct", "sidecar", "record", "record+shadow", "bare"}
    assert all(row["errors"] == 0 for row in rate.values())

    many = result["open_streams"]
    assert many["verified"] == many["streams"] == 100
    assert many["errors"] == 0
    assert many["peak_rss_mb"] > 0

    assert result["targets"] and all(isinstance(t["passed"], bool) for t in result["targets"])
    assert all(p["peak_rss_mb"] for p in result["processes"].values())
    assert "Targets (informational)" in proc.stdout


@pytest.mark.timeout(120)
def test_fresh_proxies_replace_every_measured_proxy_and_keep_the_fakes(tmp_path: Path) -> None:
    """What a full run does between rounds (--quick has one round, so it never does)."""
    with (
        bench.Fleet(tmp_path) as fleet,
        bench.Generator(bench.find_wrk(install=False), tmp_path) as gen,
    ):
        b = bench.Bench(bench.Plan.quick(), fleet, gen, tmp_path)
        b.start()
        b.check()
        before = {name: proc.pid for name, proc in fleet.procs.items()}
        b.fresh_proxies()
        after = {name: proc.pid for name, proc in fleet.procs.items()}
        assert after.keys() == before.keys()
        measured = {s.name for s in bench.SETUPS if s.sidecar}
        assert measured <= set(b.proxies)
        for name, pid in after.items():
            if name in measured:
                assert pid != before[name], name  # a new process, already checked to answer
            else:  # the fakes, and the open-streams sidecar that runs once at the end
                assert pid == before[name], name
        assert set(b.peaks) == measured  # the old processes' peak RSS is kept
        assert all(peak > 0 for peak in b.peaks.values())
        b.check()
        processes = b.processes()
        assert all(processes[name]["peak_rss_mb"] >= b.peaks[name] - 0.1 for name in measured)
