"""The dashboard's figures: the last minutes of traffic in 5-second slots, and the JSON view
`GET /_proxy/live` serves from them with the config's state.

The observer (`Window`) only counts into the current slot; percentiles, rates and the live
comparison of shadow copies with their primary are worked out when the page asks.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from proxy.report.stats import wilson

if TYPE_CHECKING:
    from proxy.errors import ErrorAnswer
    from proxy.record.meter import Meter
    from proxy.serve.app import Sidecar
    from proxy.serve.call import Arrival, Call
    from proxy.serve.plan import Attempt

SLOT_S: Final = 5.0
SLOTS: Final = 60  # five minutes
# Latencies kept per slot and series, for the percentiles: the first ones of the slot. At
# 1,000 calls a second that is 1 in 20, evenly spread enough over a minute of slots.
SAMPLES: Final = 256
# The upstream's own failures, as the guard counts them: not a 4xx the request caused, nor
# the app leaving.
FAILED: Final = frozenset({"http_5xx", "rate_limit", "connection", "timeout", "broken_stream"})


class Slot:
    __slots__ = ("calls", "failed", "total_ms", "ttft_ms")

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.total_ms: list[float] = []
        self.ttft_ms: list[float] = []


class Window:
    """Calls, failures and latency samples per (upstream, role) and the served split per
    route, in slots of `SLOT_S` seconds; slots older than `SLOTS` are let go."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.slots: dict[int, dict[tuple[str, str], Slot]] = {}
        self.routed: dict[int, dict[tuple[str, str], int]] = {}  # (route, upstream) → calls
        self._no = -1
        self._cur: dict[tuple[str, str], Slot] = {}
        self._routed: dict[tuple[str, str], int] = {}

    def served(self, call: Call, attempt: Attempt, meter: Meter) -> None:
        self._add(attempt.upstream.name, attempt.role, meter)
        if attempt.role == "primary":
            key = (call.route.name, attempt.upstream.name)
            self._routed[key] = self._routed.get(key, 0) + 1

    def copied(self, call_id: str, attempt: Attempt, meter: Meter) -> None:
        self._add(attempt.upstream.name, attempt.role, meter)

    def refused(self, arrival: Arrival, error: ErrorAnswer) -> None:
        pass  # counted in /_proxy/stats and /metrics; no upstream to show it under

    def _add(self, upstream: str, role: str, meter: Meter) -> None:
        no = int(self.clock() / SLOT_S)
        if no != self._no:
            self._turn(no)
        slot = self._cur.get((upstream, role))
        if slot is None:
            slot = self._cur[(upstream, role)] = Slot()
        slot.calls += 1
        if meter.error_kind in FAILED:
            slot.failed += 1
        if len(slot.total_ms) < SAMPLES:
            if meter.total_ms is not None:
                slot.total_ms.append(meter.total_ms)
            if meter.ttft_ms is not None:
                slot.ttft_ms.append(meter.ttft_ms)

    def _turn(self, no: int) -> None:
        self._no = no
        self._cur = self.slots.setdefault(no, {})
        self._routed = self.routed.setdefault(no, {})
        for old in [n for n in self.slots if n <= no - SLOTS]:
            del self.slots[old]
            self.routed.pop(old, None)

    def view(self) -> dict[str, Any]:
        """The figures of the window, as the page draws them."""
        now_no = int(self.clock() / SLOT_S)
        first = now_no - SLOTS + 1
        span = list(range(first, now_no + 1))
        merged: dict[tuple[str, str], Slot] = {}
        per_slot: dict[str, list[float]] = {}
        for i, no in enumerate(span):
            for key, slot in self.slots.get(no, {}).items():
                m = merged.setdefault(key, Slot())
                m.calls += slot.calls
                m.failed += slot.failed
                m.total_ms += slot.total_ms
                m.ttft_ms += slot.ttft_ms
                if key[1] in ("primary", "failover"):
                    rates = per_slot.setdefault(key[0], [0.0] * len(span))
                    rates[i] += slot.calls / SLOT_S
        seconds = min(SLOTS * SLOT_S, max(SLOT_S, self._age(first) + SLOT_S))
        rows = [_row(up, role, m, seconds) for (up, role), m in sorted(merged.items())]
        routed: dict[str, dict[str, int]] = {}
        for no in span:
            for (route, up), n in self.routed.get(no, {}).items():
                routed.setdefault(route, {})[up] = routed.setdefault(route, {}).get(up, 0) + n
        return {
            "slot_s": SLOT_S,
            "window_s": SLOTS * SLOT_S,
            "upstreams": rows,
            "rates": {"slot_s": SLOT_S, "per_upstream": per_slot},
            "routed": routed,
            "merged": merged,
        }

    def _age(self, first: int) -> float:
        """Seconds since the oldest slot in the window that has calls (a fresh sidecar's
        rates are over its life so far, not five minutes)."""
        have = [n for n in self.slots if n >= first and self.slots[n]]
        return (self._no - min(have)) * SLOT_S if have else 0.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)


def _row(upstream: str, role: str, m: Slot, seconds: float) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "role": role,
        "calls": m.calls,
        "per_s": round(m.calls / seconds, 2),
        "failed": m.failed,
        "error_rate": round(m.failed / m.calls, 4) if m.calls else None,
        "p50_ms": percentile(m.total_ms, 0.5),
        "p95_ms": percentile(m.total_ms, 0.95),
        "p99_ms": percentile(m.total_ms, 0.99),
        "ttft_p50_ms": percentile(m.ttft_ms, 0.5),
        "ttft_p95_ms": percentile(m.ttft_ms, 0.95),
    }


def compare(
    pairs: Iterable[tuple[str, str]], merged: dict[tuple[str, str], Slot]
) -> list[dict[str, Any]]:
    """Per shadowed upstream, its copies beside the primary's calls over the same window.

    "more failures" when the copies' 95% interval of the failure rate lies wholly above the
    primary's, "fewer" the other way round; otherwise the window cannot tell them apart. The
    report's verdict, on the recording, is the one to act on.
    """
    out = []
    for shadow, primary in sorted(set(pairs)):
        copies = merged.get((shadow, "shadow"), Slot())
        served = merged.get((primary, "primary"), Slot())
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
        p50_c, p50_p = percentile(copies.total_ms, 0.5), percentile(served.total_ms, 0.5)
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
                "copy_p95_ms": percentile(copies.total_ms, 0.95),
                "primary_p95_ms": percentile(served.total_ms, 0.95),
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


def live_view(sidecar: Sidecar, window: Window | None, state: dict[str, Any]) -> dict[str, Any]:
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
    if window is None:
        return out
    figures = window.view()
    merged = figures.pop("merged")
    pairs = [(r.shadow.upstream, r.primary) for r in rt.table.routes if r.shadow is not None]
    figures["compare"] = compare(pairs, merged)
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
