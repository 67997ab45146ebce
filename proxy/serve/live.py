"""The dashboard's figures: the last minutes of traffic, and the JSON view `GET /_proxy/live`
serves from them with the config's state.

Nothing here runs per call. `metrics.Metrics` counts every call once, into counters since
start; every `SLOT_S` seconds (at the first call after a slot's start) the `Window` takes a
mark of those counters. A slot's figures are the difference of two marks, the window's the
difference between now and its first mark: rates, error rates, and percentiles from the
latency buckets (5% wide, so within 5%). The live comparison of shadow copies with their
primary is worked out when the page asks.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from proxy.report.stats import wilson

if TYPE_CHECKING:
    from proxy.serve.app import Sidecar
    from proxy.serve.metrics import Metrics, Series

SLOT_S: Final = 5.0
SLOTS: Final = 60  # five minutes


class Counts(NamedTuple):
    """One (upstream, role)'s counters at a moment, or their difference over a span."""

    calls: int
    failed: int
    total: tuple[int, ...]  # calls per latency bucket
    ttft: tuple[int, ...]

    def minus(self, earlier: Counts | None) -> Counts:
        if earlier is None:
            return self
        return Counts(
            self.calls - earlier.calls,
            self.failed - earlier.failed,
            tuple(a - b for a, b in zip(self.total, earlier.total, strict=True)),
            tuple(a - b for a, b in zip(self.ttft, earlier.ttft, strict=True)),
        )


_NONE: Final = Counts(0, 0, (), ())


class Mark(NamedTuple):
    at: int  # the slot it opens
    counts: dict[tuple[str, str], Counts]  # (upstream, role)
    routed: dict[tuple[str, str], int]  # (route, upstream): calls served as primary


def snapshot(series: dict[tuple[str, str], Series]) -> Mark:
    """The counters now, as a mark of no slot (`at` -1)."""
    counts: dict[tuple[str, str], Counts] = {}
    routed: dict[tuple[str, str], int] = {}
    for key, s in series.items():
        counts[key] = Counts(*s.calls_and_failures(), tuple(s.total.counts), tuple(s.ttft.counts))
        if key[1] == "primary":
            for (route, _, _), n in s.calls.items():
                rk = (route, key[0])
                routed[rk] = routed.get(rk, 0) + n
    return Mark(-1, counts, routed)


class Window:
    """Marks of the counters at the start of each slot that had calls, for `SLOTS` slots."""

    def __init__(self) -> None:
        self.marks: list[Mark] = []  # oldest first
        self.ends = 0.0  # when the slot of the last mark ends: the next call past it marks

    def mark(self, now: float, series: dict[tuple[str, str], Series]) -> None:
        no = int(now / SLOT_S)
        self.ends = (no + 1) * SLOT_S
        self.marks = [m for m in self.marks if m.at > no - SLOTS]
        self.marks.append(snapshot(series)._replace(at=no))

    def view(self, metrics: Metrics) -> dict[str, Any]:
        """The figures of the window, as the page draws them."""
        metrics.flush()
        now = snapshot(metrics.series)
        now_no = int(metrics.clock() / SLOT_S)
        first = now_no - SLOTS + 1
        inside = [m for m in self.marks if m.at >= first]
        # No call came between the window's start and its first mark: the counters then were
        # what that mark holds. No mark inside: no call in the window at all.
        base = inside[0] if inside else now
        bounds = next(iter(metrics.series.values())).total.bounds if metrics.series else ()
        rows = []
        rates: dict[str, list[float]] = {}
        for key in sorted(now.counts):
            c = now.counts[key].minus(base.counts.get(key))
            if c.calls:
                rows.append(_row(*key, c, bounds, _seconds(inside, now_no)))
            if key[1] in ("primary", "failover"):
                per = rates.setdefault(key[0], [0.0] * SLOTS)
                for i, n in enumerate(_per_slot(inside, now, key, first)):
                    per[i] += n / SLOT_S
        routed: dict[str, dict[str, int]] = {}
        for (route, up), n in now.routed.items():
            if served := n - base.routed.get((route, up), 0):
                routed.setdefault(route, {})[up] = served
        merged = {k: v.minus(base.counts.get(k)) for k, v in now.counts.items()}
        return {
            "slot_s": SLOT_S,
            "window_s": SLOTS * SLOT_S,
            "upstreams": rows,
            "rates": {"slot_s": SLOT_S, "per_upstream": rates},
            "routed": routed,
            "merged": (merged, bounds),
        }


def _per_slot(inside: list[Mark], now: Mark, key: tuple[str, str], first: int) -> list[int]:
    """Calls of `key` in each slot of the window: the difference of consecutive marks."""
    out = [0] * SLOTS
    for i, m in enumerate(inside):
        nxt = inside[i + 1].counts if i + 1 < len(inside) else now.counts
        after, before = nxt.get(key), m.counts.get(key)
        if after is not None:
            out[m.at - first] = after.calls - (before.calls if before is not None else 0)
    return out


def _seconds(inside: list[Mark], now_no: int) -> float:
    """The span rates are over: since the window's first call, at least a slot (a fresh
    sidecar's rates are over its life so far, not five minutes)."""
    age = (now_no - inside[0].at) * SLOT_S if inside else 0.0
    return min(SLOTS * SLOT_S, max(SLOT_S, age + SLOT_S))


def percentile(counts: tuple[int, ...], bounds: tuple[float, ...], q: float) -> float | None:
    """Nearest rank over bucket counts: the upper bound of the bucket it falls in."""
    n = sum(counts)
    if not n:
        return None
    rank, seen = max(1, -(-n * q // 1)), 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return round(bounds[min(i, len(bounds) - 1)], 1)
    return None


def _row(
    upstream: str, role: str, c: Counts, bounds: tuple[float, ...], seconds: float
) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "role": role,
        "calls": c.calls,
        "per_s": round(c.calls / seconds, 2),
        "failed": c.failed,
        "error_rate": round(c.failed / c.calls, 4) if c.calls else None,
        "p50_ms": percentile(c.total, bounds, 0.5),
        "p95_ms": percentile(c.total, bounds, 0.95),
        "p99_ms": percentile(c.total, bounds, 0.99),
        "ttft_p50_ms": percentile(c.ttft, bounds, 0.5),
        "ttft_p95_ms": percentile(c.ttft, bounds, 0.95),
    }


def compare(
    pairs: Iterable[tuple[str, str]],
    merged: dict[tuple[str, str], Counts],
    bounds: tuple[float, ...],
) -> list[dict[str, Any]]:
    """Per shadowed upstream, its copies beside the primary's calls over the same window.

    "more failures" when the copies' 95% interval of the failure rate lies wholly above the
    primary's, "fewer" the other way round; otherwise the window cannot tell them apart. The
    report's verdict, on the recording, is the one to act on.
    """
    out = []
    for shadow, primary in sorted(set(pairs)):
        copies = merged.get((shadow, "shadow"), _NONE)
        served = merged.get((primary, "primary"), _NONE)
        c_lo, c_hi = wilson(copies.failed, copies.calls)
        p_lo, p_hi = wilson(served.failed, served.calls)
        if not copies.calls or not served.calls:
            failures = "no calls yet"
        elif c_lo > p_hi:
            failures = "more failures"
        elif c_hi < p_lo:
            failures = "fewer failures"
        else:
            failures = "no difference seen"
        p50_c, p50_p = percentile(copies.total, bounds, 0.5), percentile(served.total, bounds, 0.5)
        out.append(
            {
                "shadow": shadow,
                "primary": primary,
                "copies": copies.calls,
                "calls": served.calls,
                "copy_error_rate": round(copies.failed / copies.calls, 4) if copies.calls else None,
                "primary_error_rate": round(served.failed / served.calls, 4)
                if served.calls
                else None,
                "copy_p50_ms": p50_c,
                "primary_p50_ms": p50_p,
                "copy_p95_ms": percentile(copies.total, bounds, 0.95),
                "primary_p95_ms": percentile(served.total, bounds, 0.95),
                "latency_ratio": round(p50_c / p50_p, 2) if p50_c and p50_p else None,
                "failures": failures,
            }
        )
    return out


def rollback_command(path: str) -> str:
    """One line that turns the switch on in `path`, whether or not it has a `rollback:` line;
    the sidecar sees the file change and reloads."""
    p = shlex.quote(path)
    return (
        f"grep -q '^rollback:' {p} && sed -i 's/^rollback:.*/rollback: true/' {p}"
        f" || echo 'rollback: true' >> {p}"
    )


def live_view(sidecar: Sidecar, metrics: Metrics | None, state: dict[str, Any]) -> dict[str, Any]:
    """`GET /_proxy/live`: the config's state (`state`: as `/_proxy/health` has it), and the
    window's figures when metrics are on."""
    rt = sidecar.live.current
    out: dict[str, Any] = {
        "now": time.time(),
        "config": state,
        "rollback_command": rollback_command(rt.path),
        "quotas": sidecar.shadower.quotas.view(),
        "shadow": {**sidecar.counters.as_dict()["shadow"], "in_flight": sidecar.shadower.in_flight},
        "traffic": None,
    }
    if metrics is None:
        return out
    figures = metrics.window.view(metrics)
    merged, bounds = figures.pop("merged")
    pairs = [(r.shadow.upstream, r.primary) for r in rt.table.routes if r.shadow is not None]
    figures["compare"] = compare(pairs, merged, bounds)
    figures["routes"] = [
        {
            "route": r.name,
            "configured": r.split.shares(),
            "served": _shares(figures["routed"].get(r.name, {})),
            "calls": sum(figures["routed"].get(r.name, {}).values()),
        }
        for r in rt.table.routes
    ]
    del figures["routed"]
    out["traffic"] = figures
    return out


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {up: round(n / total, 4) for up, n in sorted(counts.items())} if total else {}
