"""The guard: automatic rollback of a failing canary, decided on the evidence (Flagger-style,
local to this sidecar).

Over a sliding window of the calls each non-primary upstream served, once there are at least
`min_requests`, it trips when the 95% interval of the error rate lies wholly above
`error_rate`, or when the share of calls slower than `ttft_p90_ms` to their first token lies
wholly above 10% (the 90th percentile is then beyond the line). One unlucky burst does not
trip it, and nothing does before `min_requests`. A tripped upstream gets no new calls (its
share goes to the route's primary) and no shadow copies, until the config file changes or
`POST /_proxy/guard/reset`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import structlog

from proxy.config import Guard as GuardConfig
from proxy.record.meter import Meter
from proxy.report.stats import wilson

log = structlog.get_logger("proxy.guard")

# What counts against an upstream: its own failures, not a 4xx the request caused, nor the
# app leaving.
_FAILED: Final = frozenset({"http_5xx", "rate_limit", "connection", "timeout", "broken_stream"})


@dataclass(frozen=True, slots=True)
class Trip:
    upstream: str
    rule: str  # "error_rate" or "ttft_p90"
    figures: str  # what the evidence was, in words
    since: float  # unix seconds
    revision: str  # the config revision it tripped under


class Guard:
    """Windows of served calls per upstream, and the upstreams tripped."""

    def __init__(self) -> None:
        self._calls: dict[str, deque[tuple[float, bool, float | None]]] = {}
        self.tripped: dict[str, Trip] = {}

    def out(self) -> frozenset[str]:
        return frozenset(self.tripped)

    def reset(self, why: str) -> None:
        if self.tripped:
            log.warning("guard reset: tripped upstreams take traffic again", why=why,
                        upstreams=sorted(self.tripped))  # fmt: skip
        self.tripped.clear()
        self._calls.clear()

    def observe(
        self, cfg: GuardConfig, name: str, meter: Meter, now: float, revision: str
    ) -> Trip | None:
        """Count one call `name` served; the new trip, if this call tripped it."""
        if name in self.tripped:
            return None
        calls = self._calls.setdefault(name, deque())
        first = meter.ttft_ms if meter.ttft_ms is not None else meter.total_ms
        calls.append((now, meter.error_kind in _FAILED, first))
        while calls and calls[0][0] < now - cfg.window:
            calls.popleft()
        if len(calls) < cfg.min_requests:
            return None
        trip = _judged(cfg, name, calls, now, revision)
        if trip is not None:
            self.tripped[name] = trip
            del self._calls[name]
            log.warning("guard tripped: no new calls go there", upstream=name, rule=trip.rule,
                        figures=trip.figures, revision=revision)  # fmt: skip
        return trip


def _judged(
    cfg: GuardConfig,
    name: str,
    calls: deque[tuple[float, bool, float | None]],
    now: float,
    revision: str,
) -> Trip | None:
    n = len(calls)
    if cfg.error_rate is not None:
        failed = sum(1 for _, bad, _ in calls if bad)
        low = wilson(failed, n).low
        if low > cfg.error_rate:
            figures = (
                f"{failed} of {n} calls failed in {cfg.window:g} s ({failed / n:.1%}, 95% "
                f"interval from {low:.1%}; the line is {cfg.error_rate:.1%})"
            )
            return Trip(name, "error_rate", figures, now, revision)
    if cfg.ttft_p90_ms is not None:
        timed = [t for _, _, t in calls if t is not None]
        slow = sum(1 for t in timed if t > cfg.ttft_p90_ms)
        if timed and wilson(slow, len(timed)).low > 0.10:
            figures = (
                f"{slow} of {len(timed)} calls took over {cfg.ttft_p90_ms:g} ms to their first "
                f"token in {cfg.window:g} s: the 90th percentile is beyond it"
            )
            return Trip(name, "ttft_p90", figures, now, revision)
    return None
